"""experiments/table1.py, called in process (``main`` after the flags are parsed): a tiny run of
every method writes its records, summary and figure and resumes without refitting; bad flags and
an unwritable output folder are one clear error before any work."""

import json
import os

from absl import flags
import pytest

from tests.experiments.runner import experiment_module

FLAGS = flags.FLAGS
# Tiny fits: two steps each, small Gaussian counts.
TINY = ["--steps=2", "--num_gaussians=20", "--gs3d_gaussians=10"]


def run(*args):
  """Parses ``args`` as the command line (every other flag back at its default) and runs main."""
  module = experiment_module("table1.py")  # its flags, before parsing them
  FLAGS.unparse_flags()
  FLAGS(["table1.py", *args])
  try:
    module.main(["table1.py"])
  finally:
    FLAGS.unparse_flags()


@pytest.fixture
def dataset(make_dataset):
  return make_dataset(24)  # smaller than the shared 32² crop: the baselines fit slowly


def test_a_run_writes_records_summary_and_figure_and_resumes(tmp_path, dataset, capsys):
  # Ours and the quickest baseline to compile: every method's fit is tested in test_baselines.py.
  out = tmp_path / "out"
  methods = ["gaussianimage", "siren"]
  run(f"--dataset={dataset}", *TINY, f"--out_dir={out}", f"--methods={','.join(methods)}")
  assert sorted(os.listdir(out)) == ["records.json", "records.json.lock", "summary.json",
                                     "summary.png"]
  records = json.loads((out / "records.json").read_text())["records"]
  assert [r["method"] for r in records] == methods
  by_method = {r["method"]: r for r in records}
  assert by_method["gaussianimage"]["parameters"] == 8 * 20
  assert by_method["gaussianimage"]["settings"]["num_gaussians"] == 20
  assert by_method["siren"]["parameters"] == 198_915
  for record in records:
    assert record["steps"] == 2 and record["fit_seconds"] > 0 and record["render_fps"] > 0
    assert record["ms_ssim"] is None  # 24×24 is too small for MS-SSIM's five scales
    assert record["peak_bytes"] > 0 and len(record["history"]) == 2
  rows = json.loads((out / "summary.json").read_text())["rows"]
  assert [r["method"] for r in rows] == methods
  assert all(r["images"] == 1 and r["psnr"] > 0 for r in rows)
  printed = capsys.readouterr().out
  assert "GaussianImage" in printed and "SIREN" in printed and "done already" not in printed

  # A second run finds every record and fits nothing.
  run(f"--dataset={dataset}", *TINY, f"--out_dir={out}", "--methods=siren,gaussianimage")
  assert capsys.readouterr().out.count("done already, skipped") == 2
  assert len(json.loads((out / "records.json").read_text())["records"]) == len(records)


@pytest.mark.parametrize("args, message", [
    (["--methods=siren,nerf"], "--methods must be from"),
    (["--steps=0"], "--steps must be a count >= 1"),
    (["--steps=siren:10,siren:20"], "--steps must be a count >= 1"),
    (["--steps=gs4d:10"], "--steps must be a count >= 1"),
    (["--learning_rate=-1"], "--learning_rate must be > 0"),
    (["--images=nothere.png"], "not in"),
])
def test_bad_flags_are_one_clear_error_before_work(tmp_path, dataset, args, message):
  out = tmp_path / "out"
  with pytest.raises(SystemExit, match=message):
    run(f"--dataset={dataset}", *TINY, f"--out_dir={out}", *args)
  assert not out.exists()


def test_unwritable_out_dir_and_tiny_images_fail_before_work(tmp_path, dataset):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(SystemExit, match="cannot write there"):
    run(f"--dataset={dataset}", *TINY, f"--out_dir={blocker / 'out'}")
  assert blocker.read_text() == ""
  out = tmp_path / "out"
  with pytest.raises(SystemExit, match="at least 11×11"):
    run(f"--dataset={dataset}", *TINY, "--crop=8", f"--out_dir={out}")
  assert not out.exists()


@pytest.mark.parametrize("text", ['{"records": [1]}', '{"records": [{"image": "kodim23.png"}]}'])
def test_records_file_of_the_wrong_shape_is_one_clear_error(tmp_path, dataset, text):
  out = tmp_path / "out"
  out.mkdir()
  (out / "records.json").write_text(text)
  with pytest.raises(SystemExit, match="unreadable results file"):
    run(f"--dataset={dataset}", *TINY, f"--out_dir={out}")
  assert sorted(os.listdir(out)) == ["records.json"]  # nothing written: no work done
  assert (out / "records.json").read_text() == text
