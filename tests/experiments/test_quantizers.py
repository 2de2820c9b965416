"""experiments/quantizers.py: quantizer variants sharing one fit per image (in this process; its
one run as a process of its own is test_quantizers_runs_as_a_command).
"""

import json

import pytest

from gi_jax import codec, io
from gi_jax.io import sample_image_path
from harness import codec_record_key
from tests.experiments.runner import run_experiment, run_process

H = W = 32


@pytest.fixture(scope="module")
def target():
  image = io.load_image(sample_image_path())
  return image[200:200 + H, 300:300 + W]


def test_quantizers_runs_as_a_command(tmp_path, target):
  dataset = tmp_path / "images"
  dataset.mkdir()
  io.save_image(str(dataset / "a.png"), target)
  # The count and variants of the test below: their compiled programs are shared through the
  # compilation cache (the step counts are not part of them).
  done = run_process("quantizers.py", f"--dataset={dataset}", "--num_gaussians=30", "--steps=1",
                     "--finetune_steps=1", "--variant=base:",
                     "--variant=k4:codebook_size=4,commitment_weight=0.5",
                     f"--out_dir={tmp_path / 'q'}", cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-2000:]
  records = json.loads((tmp_path / "q" / "quantizers.json").read_text())["records"]
  assert sorted(r["variant"] for r in records) == ["base", "k4"] and "BD-rate" in done.stdout


def test_quantizers_experiment_shares_one_fit_per_image(tmp_path, target):
  dataset = tmp_path / "images"
  dataset.mkdir()
  io.save_image(str(dataset / "a.png"), target)
  out = tmp_path / "q"
  cmd = [f"--dataset={dataset}",
         "--num_gaussians=30,60", "--steps=10", "--finetune_steps=5", "--variant=base:",
         "--variant=k4:codebook_size=4,commitment_weight=0.5", f"--out_dir={out}"]
  done = run_experiment("quantizers.py", *cmd)
  assert done.returncode == 0, done.stderr[-2000:]
  records = json.loads((out / "quantizers.json").read_text())["records"]
  assert sorted((r["num_gaussians"], r["variant"]) for r in records) == [
      (30, "base"), (30, "k4"), (60, "base"), (60, "k4")]
  k4 = [r for r in records if r["variant"] == "k4"]
  assert all(r["overrides"] == {"codebook_size": 4, "commitment_weight": 0.5} for r in k4)
  # Keyed by the codec settings as compress.py keys them (learning rates and schedules included).
  assert all(r["codec"] == codec_record_key(codec.OURS) for r in records)
  # One fit per count, shared by the variants.
  for n in (30, 60):
    assert len({r["fit_psnr"] for r in records if r["num_gaussians"] == n}) == 1
  assert "BD-rate" in done.stdout
  # Unknown fields are one usage error, and nothing is added to the results.
  bad = run_experiment("quantizers.py", *cmd, "--variant=x:codebook=4")
  assert bad.returncode != 0 and "FIELD one of" in bad.stderr
  bad = run_experiment("quantizers.py", *cmd, "--variant=x:cov_bits=5.5")
  assert bad.returncode != 0 and "cov_bits='5.5' is not an integer" in bad.stderr
  assert json.loads((out / "quantizers.json").read_text())["records"] == records
  # Records keep their whole quantizer settings; those from before (no "quantizers") had float16
  # codewords, so this run's settings (fixed point) encode afresh instead of resuming them.
  assert all(r["quantizers"]["codeword_fraction_bits"] == 10 for r in records)
  for r in records:
    del r["quantizers"]
  (out / "quantizers.json").write_text(json.dumps({"records": records}))
  again = run_experiment("quantizers.py", *cmd)
  assert again.returncode == 0, again.stderr[-2000:]
  records = json.loads((out / "quantizers.json").read_text())["records"]
  assert sorted(r["quantizers"]["codeword_fraction_bits"] for r in records) == [0] * 4 + [10] * 4
