"""experiments/bench.py runs end to end on a tiny configuration (speed is never asserted): as a
process of its own once (each configuration is measured in a process of its own anyway), the
rest in this process."""

import json

from tests.experiments.runner import LazyExperiment, run_experiment, run_process

bench = LazyExperiment("bench.py")


def test_bench_writes_a_row_per_configuration(tmp_path):
  # A configuration that fails (here an unknown backend; on a GPU, say, a kernel that does not
  # compile) is reported and makes the exit status non-zero; the others are still measured.
  out = tmp_path / "bench.json"
  proc = run_process("bench.py", "--configs=64x48:200", "--backends=nonsense,auto", "--repeats=1",
                     "--batch=2", f"--out={out}", cwd=tmp_path)
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
  proc = run_experiment("bench.py", "--structure", "--configs=64x48:200", f"--out={out}")
  assert proc.returncode == 0, proc.stderr
  with open(out) as f:
    rows = {row["program"]: row for row in json.load(f)}
  fresh = rows["render value+grad, fresh binning"]
  reused = rows["render value+grad, reused binning"]
  assert fresh["sorts"] == 1 and reused["sorts"] == 0
  assert fresh["triton_kernels"] == reused["triton_kernels"] == 4  # lists, fwd, bwd, reduction
  step = rows["fit step, reused binning"]
  assert step["sorts"] == step["while_loops"] == 0 and step["scatters"] <= 1
  assert step["cumulative"] <= 1 and step["ops"] < rows["fit step, binning every step"]["ops"]
  # Its pieces, counted apart, are each a part of it.
  pieces = [row for name, row in rows.items() if name.startswith("piece: ")]
  assert len(pieces) == 4 and all(0 < row["ops"] < step["ops"] for row in pieces)
  # Kernels are counted only where JAX's CUDA plugin is installed (tests/experiments/
  # test_kernel_count.py); without it the columns are there, empty.
  for row in rows.values():
    assert "kernels" in row and "loop_kernels" in row and "planned_mib" in row


def test_bench_checks_its_output_before_measuring(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  done = run_experiment("bench.py", "--configs=64x48:200", "--repeats=1",
                        f"--out={blocker / 'bench.json'}")
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert "bench.py: error:" in done.stderr and "cannot write there" in done.stderr
  assert "measuring" not in done.stderr


def test_kernel_settings_time_the_renders_with_those_kernels():
  # In this process (run_isolated would start one per setting): what one setting's row holds.
  row = bench.measure(dict(width=64, height=48, num_gaussians=200, backend="pallas", batch=0,
                           steps_per_call=0, repeats=1, margin=None, unroll=1,
                           xla_variant="default", kernel_settings="16x2/8x4/2"))
  assert row["backend"] == "pallas 16x2/8x4/2"
  for key in ("render_ms", "render_reuse_ms", "fwd_bwd_ms", "fwd_bwd_reuse_ms"):
    assert row[key] > 0, key
  assert "fit_step_ms" not in row and "bin_ms" not in row


def test_bad_kernel_settings_stop_before_measuring(tmp_path):
  done = run_experiment("bench.py", "--configs=64x48:200", "--kernel_settings=32x4/24x8",
                        f"--out={tmp_path / 'bench.json'}")
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert "backward_chunk must be a power of two, got 24" in done.stderr
  assert "measuring" not in done.stderr
