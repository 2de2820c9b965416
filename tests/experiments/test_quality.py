"""experiments/quality.py as a process of its own: a tiny run writes its records and summary.
(Its checks before work run in this process: test_output_checks.py.)"""

import json

from tests.experiments.runner import LazyExperiment, run_process

quality = LazyExperiment("quality.py")


def test_quality_runs_as_a_command(tmp_path, dataset):
  out = tmp_path / "out"
  done = run_process("quality.py", f"--dataset={dataset}", "--num_gaussians=10", "--steps=2",
                     "--modes=random", f"--out_dir={out}", cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-2000:]
  (record,) = json.loads((out / "quality.json").read_text())["records"]
  assert (record["image"], record["num_gaussians"], record["mode"]) == ("kodim23.png", 10, "random")
  assert (out / "quality_summary.json").is_file()


def test_the_cpu_settings_mode_and_a_table_without_a_baseline():
  # "gradient_cosine": the settings before the best recipe, to compare it with at equal time.
  assert quality.fit_options("gradient_cosine", 10) == dict(init="gradient", learning_rate=3e-2,
                                                            lr_schedule="cosine")
  assert "gradient_cosine" in quality.MODES
  # Compared without "random" or "paper" there is no baseline, so no columns of reaching it.
  assert not [c for c in quality.columns(None) if c[0].startswith("reach")]
  assert [c[0] for c in quality.columns("random")][-1] == "reached"
