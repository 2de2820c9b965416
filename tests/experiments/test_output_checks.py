"""experiments/compress.py, quantizers.py and quality.py check their output before any work: an
unwritable --out_dir, a records file of the wrong shape (in this process; their runs are in
test_compress.py, test_quantizers.py and test_quality.py)."""

import os

import pytest

from tests.experiments.runner import run_experiment

# Tiny runs: were a check to come after the work, the work would still end soon.
CLIS = {
    "compress.py": ["--num_gaussians=10", "--steps=1", "--finetune_steps=1", "--noclassic",
                    "--decode_repeats=1"],
    "quantizers.py": ["--num_gaussians=10", "--steps=1", "--finetune_steps=1", "--variant=base:"],
    "quality.py": ["--num_gaussians=10", "--steps=2", "--modes=random"],
}
RECORDS = {"compress.py": "records.json", "quantizers.py": "quantizers.json",
           "quality.py": "quality.json"}


@pytest.mark.parametrize("script", sorted(CLIS))
def test_unwritable_out_dir_is_one_clear_error_before_any_work(tmp_path, dataset, script):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  done = run_experiment(script, f"--dataset={dataset}", *CLIS[script],
                        f"--out_dir={blocker / 'out'}")
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert f"{script}: error:" in done.stderr and "cannot write there" in done.stderr
  assert blocker.read_text() == ""


@pytest.mark.parametrize("script", sorted(CLIS))
@pytest.mark.parametrize("text", ['{"records": [1]}', '{"records": [{"image": "kodim23.png"}]}'])
def test_records_file_of_the_wrong_shape_is_one_clear_error(tmp_path, dataset, script, text):
  out = tmp_path / "out"
  out.mkdir()
  (out / RECORDS[script]).write_text(text)
  done = run_experiment(script, f"--dataset={dataset}", *CLIS[script], f"--out_dir={out}")
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert f"{script}: error:" in done.stderr and "unreadable results file" in done.stderr
  assert sorted(os.listdir(out)) == [RECORDS[script]]  # nothing written: no work done
  assert (out / RECORDS[script]).read_text() == text
