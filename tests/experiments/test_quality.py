"""experiments/quality.py as a process of its own: a tiny run writes its records and summary.
(Its checks before work run in this process: test_output_checks.py.)"""

import json

from tests.experiments.runner import run_process


def test_quality_runs_as_a_command(tmp_path, dataset):
  out = tmp_path / "out"
  done = run_process("quality.py", f"--dataset={dataset}", "--num_gaussians=10", "--steps=2",
                     "--modes=random", f"--out_dir={out}", cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-2000:]
  (record,) = json.loads((out / "quality.json").read_text())["records"]
  assert (record["image"], record["num_gaussians"], record["mode"]) == ("kodim23.png", 10, "random")
  assert (out / "quality_summary.json").is_file()
