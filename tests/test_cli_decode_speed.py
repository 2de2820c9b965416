"""experiments/decode_speed.py, run in this process through its ``main(argv)``: rates per Gaussian
count over files of mixed sizes, and every check (output folder, files) before any timing."""

import ast
import contextlib
import importlib.util
import json
import os

from absl import app, flags
from absl.testing import flagsaver
import jax
import pytest

import gi_jax
from gi_jax import codec
from gi_jax.codec.quantize import init_quantizers, to_quantized

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                      "decode_speed.py")


def _flag_names(path: str) -> set[str]:
  """The names of the absl flags a script defines, read from its source."""
  with open(path) as f:
    tree = ast.parse(f.read())
  return {node.args[0].value for node in ast.walk(tree)
          if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr.startswith("DEFINE_") and node.args
          and isinstance(node.args[0], ast.Constant)}


@contextlib.contextmanager
def _loaded_cli():
  """The CLI loaded with its flags in absl's global set. Another CLI loaded in this process may
  have defined flags of the same names (``--out_dir``): they are set aside, and put back after."""
  names = _flag_names(SCRIPT)
  aside = {name: flags.FLAGS[name] for name in names if name in flags.FLAGS}
  for name in aside:
    delattr(flags.FLAGS, name)
  try:
    spec = importlib.util.spec_from_file_location("decode_speed_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
  finally:
    for name in names:
      if name in flags.FLAGS:
        delattr(flags.FLAGS, name)
    for name, flag in aside.items():
      flags.FLAGS[name] = flag


@pytest.fixture(scope="module")
def cli():
  with _loaded_cli() as module:
    def run(*args):
      with flagsaver.flagsaver():
        flags.FLAGS(["decode_speed.py", *args])
        module.main(["decode_speed.py"])
    run.module = module
    yield run


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
  monkeypatch.setattr(cli.module, "batched_decode_rates",
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
