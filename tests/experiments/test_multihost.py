"""Runs over several processes: experiments/fit.py with jax.distributed, two CPU processes on
localhost (gloo collectives), against one process."""

import json
import os
import socket
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import pytest
from PIL import Image

from gi_jax.errors import InvalidInputError
from gi_jax.io import sample_image_path
import multihost

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "experiments", "fit.py")
# How fast, and over how many devices: the only fields two processes may change.
SPEED = ("fit_seconds", "compile_seconds", "wall_seconds", "seconds_per_image", "render_fps",
         "peak_bytes", "devices")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def fit_cli(*args, cwd):
  # One CPU device per process (not the suite's forced device count): two processes, two devices.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.Popen([sys.executable, SCRIPT, *args], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_two_processes_write_the_records_of_one(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  sample = Image.open(sample_image_path()).convert("RGB")
  sample.crop((300, 200, 332, 232)).save(images / "a.png")
  sample.crop((100, 100, 132, 132)).save(images / "b.png")
  common = ["--dataset=images", "--num_gaussians=20", "--steps=10", "--batch_size=2",
            "--compilation_cache=", "--nofigures", "--fps_seconds=0"]
  one = fit_cli(*common, "--out_dir=one", cwd=tmp_path)
  out, err = one.communicate(timeout=600)
  assert one.returncode == 0, err
  port = free_port()
  procs = [fit_cli(*common, "--out_dir=two", f"--coordinator_address=localhost:{port}",
                   "--num_processes=2", f"--process_id={i}", cwd=tmp_path) for i in (1, 0)]
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
  records = [json.loads((tmp_path / d / "results.json").read_text())["records"]
             for d in ("one", "two")]
  assert [r["devices"] for r in records[0]] == [1, 1]
  assert [r["devices"] for r in records[1]] == [2, 2]  # each batch spanned both processes
  untimed = lambda rs: sorted(({k: v for k, v in r.items() if k not in SPEED} for r in rs),
                              key=lambda r: r["image"])  # noqa: E731
  assert untimed(records[1]) == untimed(records[0]) and len(records[0]) == 2
  for record in records[0]:
    for name in (record["render"], record["gaussians"]):
      assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
  assert "summary of this run" in out  # process 0's: the last one waited for


@pytest.fixture
def parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver():
    yield


def test_no_flags_leave_jax_alone(parsed_flags):
  assert multihost.initialize() is False
  assert multihost.is_writer()


@pytest.mark.parametrize("values,message", [
    (dict(coordinator_address="localhost:1"), "go together"),
    (dict(num_processes=2, process_id=0), "go together"),
    (dict(coordinator_address="localhost:1", num_processes=2, process_id=2), "must be below"),
])
def test_incomplete_flags_are_one_clear_error(parsed_flags, values, message):
  for name, value in values.items():
    flags.FLAGS[name].value = value
  with pytest.raises(InvalidInputError, match=message):
    multihost.initialize()


def test_the_cli_refuses_bad_flags_before_work(tmp_path):
  proc = fit_cli("--num_processes=2", "--process_id=5", "--coordinator_address=localhost:1",
                 "--out_dir=out", cwd=tmp_path)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 1 and "fit.py: error:" in err and "must be below" in err
  assert not (tmp_path / "out").exists()
