"""experiments/fit.py on tiny images: its results.json matches the files it wrote, bad input,
dataset runs (resumed after an interruption, --batch_size), two runs into one folder at once and
runs killed at random points. In this process, except its one run as a process of its own
(test_cli_json_matches_written_files' first) and the tests that need processes: runs at once,
kill -9."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import app, flags
from PIL import Image

import gi_jax
from gi_jax import io, memory, metrics, storage
from gi_jax.io import sample_image_path
from tests.experiments.runner import EXPERIMENTS, experiment_module, run_experiment, run_process

SCRIPT = os.path.join(EXPERIMENTS, "fit.py")


def run_cli(*args, cwd=None):
  """fit.py in this process, with no persistent compilation cache: it would change JAX's config
  for the rest of this process (later flags override, so a test may still give one)."""
  del cwd  # the tests give absolute paths
  return run_experiment("fit.py", "--compilation_cache=", *args)


@pytest.fixture
def tiny_image(tmp_path):
  image = Image.open(sample_image_path()).convert("RGB").crop((300, 200, 340, 232))
  path = tmp_path / "tiny.png"
  image.save(path)
  return path


def test_cli_json_matches_written_files(tmp_path, tiny_image):
  out = tmp_path / "out"
  # fit.py's one run as a process of its own: the command as a user runs it.
  proc = run_process("fit.py", f"--image={tiny_image}", "--num_gaussians=80", "--steps=40",
                     f"--out_dir={out}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "psnr" in proc.stdout  # the summary table
  with open(out / "results.json") as f:
    records = json.load(f)["records"]
  assert len(records) == 1
  record = records[0]
  for key in ("image", "height", "width", "num_gaussians", "steps", "psnr", "ms_ssim",
              "fit_seconds", "compile_seconds", "render_fps"):
    assert key in record, key
  assert (record["image"], record["height"], record["width"]) == ("tiny.png", 32, 40)
  assert (record["num_gaussians"], record["steps"]) == (80, 40)
  assert record["ms_ssim"] is None  # 32×40 is below MS-SSIM's five scales
  target = io.load_image(tiny_image)
  written = io.load_image(out / record["render"])
  assert float(metrics.psnr(written, target)) == pytest.approx(record["psnr"], abs=1e-4)
  gaussians, height, width = storage.load_gaussians(out / record["gaussians"])
  assert (height, width, gaussians.num_gaussians) == (32, 40, 80)
  rerendered = io.quantize_8bit(np.asarray(gi_jax.render(gaussians, height, width)))
  np.testing.assert_allclose(rerendered, written, atol=1.5 / 255)
  # A second run finds the record and skips the fit.
  again = run_cli(f"--image={tiny_image}", "--num_gaussians=80", "--steps=40", f"--out_dir={out}",
                  cwd=tmp_path)
  assert again.returncode == 0 and "skipped" in again.stdout
  # Another setting is another record, in files of its own: the first run's stay as they were.
  straight = run_cli(f"--image={tiny_image}", "--num_gaussians=80", "--steps=40",
                     "--clip_gradient=straight_through", f"--out_dir={out}", cwd=tmp_path)
  assert straight.returncode == 0 and "skipped" not in straight.stdout, straight.stderr
  with open(out / "results.json") as f:
    first, second = json.load(f)["records"]
  assert (first["clip_gradient"], second["clip_gradient"]) == ("exact", "straight_through")
  assert len({first["render"], second["render"], first["gaussians"], second["gaussians"]}) == 4
  np.testing.assert_array_equal(io.load_image(out / first["render"]), written)


@pytest.mark.parametrize("args,message", [
    (["--image=/no/such/file.png"], "no such file"),
    (["--num_gaussians=0"], "num_gaussians"),
    (["--num_gaussians=ten"], "num_gaussians"),
    (["--steps=-3"], "steps"),
    (["--clip_gradient=sometimes"], "clip_gradient"),
])
def test_cli_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, tiny_image, args, message):
  out = tmp_path / "out"
  # Later flags override earlier ones, so args replace these defaults.
  proc = run_cli(f"--image={tiny_image}", "--steps=1", *args, f"--out_dir={out}", cwd=tmp_path)
  assert proc.returncode != 0
  assert message in (proc.stderr + proc.stdout).lower()
  assert "Traceback" not in proc.stderr
  assert not out.exists() or not os.listdir(out)


def test_cli_corrupt_image(tmp_path):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  proc = run_cli(f"--image={bad}", "--steps=1", f"--out_dir={tmp_path / 'out'}", cwd=tmp_path)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  # The message alone, not buried under the flags' help.
  assert "fit.py: error:" in proc.stderr and "bad.png" in proc.stderr
  assert "--num_gaussians" not in proc.stderr


def _dataset(folder, images, size):
  folder.mkdir()
  sample = Image.open(sample_image_path()).convert("RGB")
  for i, name in enumerate(images):
    sample.crop((40 * i, 100, 40 * i + size, 100 + size)).save(folder / name)
  return folder


def test_two_runs_into_one_out_dir_keep_every_record(tmp_path):
  # Started together, each reads results.json before the other writes: each write must merge.
  first = _dataset(tmp_path / "A", ["a1.png", "a2.png", "a3.png"], 16)
  second = _dataset(tmp_path / "B", ["b1.png", "b2.png", "b3.png"], 16)
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  runs = [subprocess.Popen([sys.executable, SCRIPT, f"--dataset={d}", "--num_gaussians=20",
                            "--steps=5", "--batch_size=3", f"--out_dir={out}",
                            "--compilation_cache=", "--fps_seconds=0"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for d in (first, second)]
  outputs = [run.communicate(timeout=600) for run in runs]
  assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
  with open(out / "results.json") as f:
    records = json.load(f)["records"]
  assert sorted(r["image"] for r in records) == [f"{d}{i}.png" for d in "ab" for i in (1, 2, 3)]
  for record in records:
    assert (out / record["render"]).is_file() and (out / record["gaussians"]).is_file()


def test_unwritable_out_dir_is_one_clear_error_before_the_fit(tmp_path, tiny_image):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  proc = run_cli(f"--image={tiny_image}", "--num_gaussians=20", "--steps=5",
                 f"--out_dir={blocker / 'out'}", cwd=tmp_path)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "fit.py: error:" in proc.stderr and "cannot write there" in proc.stderr
  assert "tiny.png (40×32)" not in proc.stdout  # checked before the fit started
  assert blocker.read_text() == ""


@pytest.mark.parametrize("text", ['{"records": [1]}', '{"records": null}',
                                  '{"records": [{"image": "tiny.png", "num_gaussians": 20}]}'])
def test_results_file_of_the_wrong_shape_is_one_clear_error(tmp_path, tiny_image, text):
  out = tmp_path / "out"
  out.mkdir()
  (out / "results.json").write_text(text)
  proc = run_cli(f"--image={tiny_image}", "--num_gaussians=20", "--steps=5", f"--out_dir={out}",
                 cwd=tmp_path)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "unreadable results file" in proc.stderr
  assert "tiny.png (40×32)" not in proc.stdout
  assert (out / "results.json").read_text() == text


# What a record measures rather than computes: it differs between any two runs.
TIMINGS = ("fit_seconds", "compile_seconds", "wall_seconds", "seconds_per_image", "render_fps",
           "peak_bytes")


def _records_in(folder) -> int:
  path = folder / "results.json"  # replaced atomically: never read half-written
  return len(json.loads(path.read_text())["records"]) if path.exists() else 0


@pytest.mark.slow
def test_dataset_run_killed_at_random_points_resumes_to_an_uninterrupted_runs_results(tmp_path):
  # kill -9 at seeded random points (once a random number of records is there, after a random
  # delay: in start-up, a fit, or writing an image's files or record), then re-run until a run
  # finishes: every record (less its timings) and file as an uninterrupted run's, to the bit.
  dataset = _dataset(tmp_path / "images", [f"i{i}.png" for i in range(4)], 16)
  args = [f"--dataset={dataset}", "--num_gaussians=20", "--steps=5", "--fps_seconds=0"]
  reference = tmp_path / "reference"
  done = run_cli(*args, f"--out_dir={reference}")  # in this process: the uninterrupted run
  assert done.returncode == 0, done.stderr[-2000:]
  out = tmp_path / "out"
  rng = random.Random(53)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  kill_points = [(k, rng.uniform(0.0, 1.0)) for k in sorted(rng.sample(range(4), 3))]
  killed = []  # the records there at each kill
  for records_before, delay in kill_points + [(None, None)]:
    run = subprocess.Popen([sys.executable, SCRIPT, *args, f"--out_dir={out}"], cwd=tmp_path,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if records_before is not None:
      while run.poll() is None and _records_in(out) < records_before:
        time.sleep(0.02)
      time.sleep(delay)
      if run.poll() is None:
        run.send_signal(signal.SIGKILL)
        run.communicate()
        killed.append(_records_in(out))
        continue
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-2000:]
  print(f"kill points (records, delay s) {kill_points}; records there when killed: {killed}")
  assert killed, "no run was killed"
  records = [json.loads((folder / "results.json").read_text())["records"]
             for folder in (reference, out)]
  untimed = lambda rs: sorted(({k: v for k, v in r.items() if k not in TIMINGS} for r in rs),
                              key=lambda r: r["image"])  # noqa: E731
  assert untimed(records[1]) == untimed(records[0]) and len(records[0]) == 4
  for record in records[0]:
    assert (out / record["render"]).read_bytes() == (reference / record["render"]).read_bytes()
    with (np.load(out / record["gaussians"]) as got,
          np.load(reference / record["gaussians"]) as want):
      assert sorted(got.files) == sorted(want.files)
      for name in want.files:
        np.testing.assert_array_equal(got[name], want[name])
  visible = lambda folder: sorted(f for f in os.listdir(folder) if not f.startswith("."))  # noqa
  assert visible(out) == visible(reference)


# -- dataset runs, in this process (4 devices, shared compile caches): main's exceptions as raised

@pytest.fixture(scope="module")
def sample():
  return np.asarray(Image.open(sample_image_path()).convert("RGB"), np.float32) / 255.0


@pytest.fixture(scope="module")
def cli():
  def run(*args):
    module = experiment_module("fit.py")  # each run: another test may have loaded another CLI
    flags.FLAGS.unparse_flags()
    # No persistent compilation cache: it would change JAX's config for the rest of this process.
    flags.FLAGS(["fit.py", "--compilation_cache=", *args])
    module.main(["fit.py"])
  return run


@pytest.fixture
def dataset(sample, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  for name, (y, x) in zip("abc", [(200, 300), (100, 500), (300, 100)]):
    crop = np.round(sample[y:y + 24, x:x + 32] * 255).astype(np.uint8)
    Image.fromarray(crop).save(folder / f"{name}.png")
  return folder


def test_cli_dataset_resumes_after_interruption(cli, dataset, tmp_path, monkeypatch, capsys):
  out = tmp_path / "out"
  args = (f"--dataset={dataset}", "--num_gaussians=10", "--steps=3", "--batch_size=2",
          f"--out_dir={out}")
  calls = []
  fit_batch_real = gi_jax.dataset.fit_batch

  def killed_in_second_batch(*a, **k):
    calls.append(len(a[0]))
    if len(calls) == 2:
      raise KeyboardInterrupt  # as a kill would: the first batch is written, the second is not
    return fit_batch_real(*a, **k)

  monkeypatch.setattr(gi_jax.dataset, "fit_batch", killed_in_second_batch)
  with pytest.raises(KeyboardInterrupt):
    cli(*args)
  assert calls == [2, 1]
  with open(out / "results.json") as f:
    records = json.load(f)["records"]
  assert [r["image"] for r in records] == ["a.png", "b.png"]
  assert [(r["batch_size"], r["devices"]) for r in records] == [(2, 2), (2, 2)]
  written = sorted(name for r in records for name in (r["gaussians"], r["render"], r["figure"]))
  assert [name.split("_")[:2] for name in written] == [["a", "n10"]] * 3 + [["b", "n10"]] * 3
  # complete files only, no temporaries (the lock file stays: removing it would race)
  assert sorted(os.listdir(out)) == written + ["results.json", "results.json.lock"]
  monkeypatch.setattr(gi_jax.dataset, "fit_batch", fit_batch_real)
  capsys.readouterr()

  cli(*args)  # resumes: fits only c.png
  stdout = capsys.readouterr().out
  assert "2 of 3 images done already, skipped" in stdout and "fitting 1 images" in stdout
  with open(out / "results.json") as f:
    records = json.load(f)["records"]
  assert [r["image"] for r in records] == ["a.png", "b.png", "c.png"]
  assert all(r["height"] == 24 and r["width"] == 32 and r["psnr"] > 0 for r in records)
  assert (out / records[2]["render"]).exists() and (out / records[2]["figure"]).exists()
  assert not (out / "summary.png").exists()  # one count: no sweep to plot
  with open(out / "summary.json") as f:
    (row,) = json.load(f)["rows"]
  assert (row["num_gaussians"], row["images"], row["parameters"]) == (10, 3, 80)
  assert {"psnr", "ms_ssim", "fit_seconds", "render_fps", "peak_bytes"} <= set(row)

  cli(*args)  # nothing left to do
  stdout = capsys.readouterr().out
  assert "3 of 3 images done already, skipped" in stdout and "fitting" not in stdout


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_cli_rejects_bad_batch_size(cli, dataset, tmp_path, value):
  with pytest.raises(app.UsageError, match="--batch_size"):
    cli(f"--dataset={dataset}", f"--batch_size={value}", f"--out_dir={tmp_path / 'out'}")
  assert not (tmp_path / "out").exists()


def test_cli_batch_size_needs_dataset(cli, tmp_path):
  with pytest.raises(app.UsageError, match="--dataset"):
    cli("--batch_size=4", f"--out_dir={tmp_path / 'out'}")


def test_cli_batch_that_cannot_fit_is_a_clear_error(cli, dataset, tmp_path, monkeypatch):
  monkeypatch.setattr(memory, "_free_bytes_per_device", lambda devices: 1000)
  with pytest.raises(SystemExit, match="error: .*not even one image"):
    cli(f"--dataset={dataset}", "--num_gaussians=10", "--steps=3", "--batch_size=auto",
        f"--out_dir={tmp_path / 'out'}")
  assert not (tmp_path / "out").exists()


def test_cli_fits_the_channels_asked_for(cli, sample, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  crop = np.round(sample[200:224, 300:332] * 255).astype(np.uint8)
  Image.fromarray(crop).convert("L").save(folder / "gray.png")
  rgba = np.concatenate([crop, np.full(crop.shape[:2] + (1,), 128, np.uint8)], -1)
  Image.fromarray(rgba).save(folder / "rgba.png")
  out = tmp_path / "out"
  cli(f"--dataset={folder}", "--channels=0", "--num_gaussians=10", "--steps=3",
      "--batch_size=2", f"--out_dir={out}")
  with open(out / "results.json") as f:
    records = {r["image"]: r for r in json.load(f)["records"]}
  for name, c in (("gray.png", 1), ("rgba.png", 4)):
    record = records[name]
    assert record["channels"] is None and record["parameters"] == (5 + c) * 10
    assert io.load_image(out / record["render"], channels=None).shape == (24, 32, c)
    assert storage.load_gaussians(out / record["gaussians"])[0].num_channels == c
    assert (out / record["figure"]).exists()
  # One file, three ways: each is its own record; RGB keeps the key it always had.
  for flag in ("1", "3"):
    cli(f"--image={folder / 'rgba.png'}", f"--channels={flag}", "--num_gaussians=10",
        "--steps=3", f"--out_dir={out}")
  with open(out / "results.json") as f:
    records = [r for r in json.load(f)["records"] if r["image"] == "rgba.png"]
  assert [r.get("channels", 3) for r in records] == [None, 1, 3]
  assert [io.load_image(out / r["render"], channels=None).shape[-1] for r in records] == [4, 1, 3]
