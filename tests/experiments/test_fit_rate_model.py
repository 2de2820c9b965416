"""experiments/fit_rate_model.py as a process of its own, on the records codec.rate's model was
fitted to (tests/fixtures/rate_model_files.json, as a compress.py records file)."""

import json
import os

from tests.experiments.runner import REPO, run_experiment, run_process


def _records_file(tmp_path):
  with open(os.path.join(REPO, "tests", "fixtures", "rate_model_files.json")) as f:
    files = json.load(f)["files"]
  path = tmp_path / "records.json"
  path.write_text(json.dumps({"records": [dict(r, codec="ours") for r in files]}))
  return path, len(files)


def test_fit_rate_model_runs_as_a_command(tmp_path):
  path, count = _records_file(tmp_path)
  done = run_process("fit_rate_model.py", f"--records={path}", cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.startswith(f"{count} files: fixed_bits=")
  assert "the model off by" in done.stdout and "corrected by one N" in done.stdout


def test_fit_rate_model_needs_its_records(tmp_path):
  done = run_experiment("fit_rate_model.py")
  assert done.returncode == 1 and "--records" in done.stderr
