"""experiments/bench.py runs end to end on a tiny configuration (speed is never asserted)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_writes_a_row_per_configuration(tmp_path):
  # A configuration that fails (here an unknown backend; on a GPU, say, a kernel that does not
  # compile) is reported and makes the exit status non-zero; the others are still measured.
  out = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "bench.py"), "--configs=64x48:200",
       "--backends=nonsense,auto", "--repeats=1", "--batch=2", f"--out={out}"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr
  assert "unknown backend 'nonsense'" in proc.stderr
  assert proc.stderr.rstrip().endswith("failed: 64x48:200 on nonsense (default, unroll 1)")
  with open(out) as f:
    (row,) = json.load(f)
  assert (row["width"], row["height"], row["num_gaussians"]) == (64, 48, 200)
  assert 0 < row["listed"] <= row["intersections"] <= row["capacity"]
  for key in ("bin_ms", "render_ms", "render_reuse_ms", "fwd_bwd_ms", "fwd_bwd_reuse_ms",
              "fit_step_ms", "fit_step_reuse_ms", "batch_step_ms"):
    assert row[key] > 0, key


def test_structure_meets_the_gpu_path_targets(tmp_path):
  # Lowered for CUDA on this machine: one sort per binning, none in the backward, none at all in
  # a step that reuses its binning, and fewer scatters and prefix scans there too.
  out = tmp_path / "structure.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "bench.py"), "--structure",
       "--configs=64x48:200", f"--out={out}"],
      cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr
  with open(out) as f:
    rows = {row["program"]: row for row in json.load(f)}
  fresh = rows["render value+grad, fresh binning"]
  reused = rows["render value+grad, reused binning"]
  assert fresh["sorts"] == 1 and reused["sorts"] == 0
  assert fresh["triton_kernels"] == reused["triton_kernels"] == 3
  step = rows["fit step, reused binning"]
  assert step["sorts"] == step["while_loops"] == 0 and step["scatters"] <= 1
  assert step["cumulative"] <= 1 and step["ops"] < rows["fit step, binning every step"]["ops"]
