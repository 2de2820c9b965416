"""experiments/decode_speed.py, run in this process through its ``main(argv)``: rates per Gaussian
count over files of mixed sizes, and every check (output folder, files) before any timing."""

import json

from absl import app, flags
from absl.testing import flagsaver
import jax
import pytest

import gi_jax
from gi_jax import codec
from gi_jax.codec.quantize import init_quantizers, to_quantized
from tests.experiments.runner import experiment_module

@pytest.fixture
def cli():
  def run(*args):
    module = experiment_module("decode_speed.py")
    with flagsaver.flagsaver():
      flags.FLAGS(["decode_speed.py", *args])
      module.main(["decode_speed.py"])
  return run


def _file(seed: int, num_gaussians: int, height: int, width: int) -> bytes:
  """A valid file from random Gaussians (no fitting)."""
  g = gi_jax.init_gaussians(jax.random.key(seed), num_gaussians, height, width)
  config = codec.QuantizerConfig()
  quantizers = init_quantizers(jax.random.key(seed + 1), g, config)
  return codec.encode(to_quantized(g, quantizers, config, (height, width)).to_numpy(), height,
                      width)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Three files with 8 Gaussians (two 16×16, one 24 wide: rendered in a batch of its own) and
  one with 12."""
  folder = tmp_path_factory.mktemp("gimg")
  for name, args in {"a": (0, 8, 16, 16), "b": (2, 8, 16, 16), "c": (4, 8, 16, 24),
                     "d": (6, 12, 16, 16)}.items():
    (folder / f"{name}.gimg").write_bytes(_file(*args))
  return folder


def test_rates_per_gaussian_count(cli, files, tmp_path):
  out = tmp_path / "out"
  cli(f"--files={files}", "--repeats=1", "--batch_size=5", "--workers=1", f"--out_dir={out}")
  report = json.loads((out / "decode_speed.json").read_text())
  assert report["workers"] == 1 and report["repeats"] == 1 and report["device"]
  rows = report["rows"]
  assert [r["num_gaussians"] for r in rows] == [8, 12]
  assert [r["files"] for r in rows] == [3, 1]
  assert rows[0]["sizes"] == ["16x16", "24x16"]
  assert [r["batched_decode_files"] for r in rows] == [5, 5]  # repeated in turn
  for row in rows:
    assert row["batched_decode_workers"] == 1
    assert row["batched_render_images_per_second"] > 0
    assert row["batched_decode_images_per_second"] > 0
  # A pattern picks files, each once however often it is named; no workers: this process.
  cli(f"--files={files / 'd.gimg'},{files / 'd*.gimg'}", "--repeats=1", "--workers=0",
      f"--out_dir={out}")
  (row,) = json.loads((out / "decode_speed.json").read_text())["rows"]
  assert row["num_gaussians"] == 12 and row["batched_decode_files"] == 1
  assert row["batched_decode_workers"] == 0


@pytest.mark.parametrize("case", ["out_dir", "corrupt", "missing", "no_files"])
def test_checks_before_any_work(cli, files, tmp_path, monkeypatch, case):
  monkeypatch.setattr(experiment_module("decode_speed.py"), "batched_decode_rates",
                      lambda *a, **k: pytest.fail("timed before the checks"))
  out = tmp_path / "out"
  specs = str(files)
  if case == "out_dir":
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "out"
    expected = "cannot write there"
  elif case == "corrupt":
    bad = tmp_path / "bad.gimg"
    bad.write_bytes((files / "a.gimg").read_bytes()[:-3])
    specs = f"{files},{bad}"
    expected = str(bad)
  elif case == "missing":
    specs = f"{files},{tmp_path / 'nothing*.gimg'}"
    expected = "nothing"
  if case == "no_files":
    with pytest.raises(app.UsageError, match="--files is required"):
      cli(f"--out_dir={out}")
  else:
    with pytest.raises(SystemExit, match="error: .*") as raised:
      cli(f"--files={specs}", f"--out_dir={out}")
    assert expected in str(raised.value)
  assert not out.exists()
