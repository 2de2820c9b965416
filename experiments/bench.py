"""Benchmark rendering and fitting on the current device; prints a table and writes JSON.

Usage (from the repo root):
  python experiments/bench.py                                  # 256x256/5000 and 768x512/70000
  python experiments/bench.py --configs=768x512:10000,768x512:70000 --backends=reference,pallas \
      --batch=8 --out=results/bench.json

Per image size, Gaussian count and backend it measures: binning alone, render (forward only, as
FPS), forward+backward of the loss, a full fit step (render, loss, Adan; many steps per device call
as `fit` runs them), the same for a vmapped batch, compile times, and the peak device memory.
Timing: `block_until_ready`, warm-up and compile excluded, median of repeats. Every configuration
runs in a fresh process so its peak memory is its own (with XLA_PYTHON_CLIENT_PREALLOCATE=false).
The Gaussians are the paper's random initialisation for the bundled sample image resized to the
size. Fitted sets can touch far more tiles (kodim23 fitted with 10,000: 66,981 intersections
against 24,679 at initialisation), so fitting runs slower a step than these rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_CONFIGS = flags.DEFINE_list("configs", ["256x256:5000", "768x512:70000"],
                             "WIDTHxHEIGHT:NUM_GAUSSIANS entries.")
_BACKENDS = flags.DEFINE_list("backends", ["auto"],
                              "Backends to measure (auto, reference, pallas).")
_BATCH = flags.DEFINE_integer("batch", 0, "Also time a vmapped fit step over this many images.",
                              lower_bound=0)
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 0,
                                       "Fit steps per device call (0: 100 on GPU, 5 on CPU).",
                                       lower_bound=0)
_REPEATS = flags.DEFINE_integer("repeats", 0, "Timed repeats (0: 50 on GPU, 3 on CPU).",
                                lower_bound=0)
_OUT = flags.DEFINE_string("out", "results/bench.json", "Where to write the JSON.")
_ONE = flags.DEFINE_string("one", None, "Internal: measure one JSON-encoded config, print JSON.")


def measure(config: dict) -> dict:
  """Measures one (size, count, backend) configuration in this process."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from PIL import Image

  import gi_jax
  from gi_jax import binning, fitting, memory
  from gi_jax.experiment import sample_image_path
  from gi_jax.render import render_with_count, resolve_backend
  from gi_jax.timing import compile_seconds, median_seconds

  width, height, num = config["width"], config["height"], config["num_gaussians"]
  backend = resolve_backend(config["backend"])
  on_gpu = jax.default_backend() == "gpu"
  repeats = config["repeats"] or (50 if on_gpu else 3)
  steps_per_call = config["steps_per_call"] or (100 if on_gpu else 5)
  image = Image.open(sample_image_path()).convert("RGB").resize((width, height), Image.LANCZOS)
  target = jnp.asarray(np.asarray(image, np.float32) / 255.0)
  gaussians = gi_jax.init_gaussians(jax.random.key(0), num, height, width)
  grid = binning.TileGrid(height, width)
  capacity = fitting.initial_capacity(gaussians, height, width)
  bins = binning.bin_intersections(binning.project(gaussians, grid), grid, capacity)
  # The tile boxes' pairs (what the buffer holds), and those the rasterizer evaluates.
  row = dict(config, backend=backend, device=jax.devices()[0].device_kind, capacity=capacity,
             intersections=int(bins.count), listed=int(bins.tile_starts[-1]))

  def timed(name, fn, *args):
    seconds, compiled = compile_seconds(jax.jit(fn), *args)
    row[f"compile_{name}_s"] = seconds
    row[f"{name}_ms"] = 1e3 * median_seconds(lambda: compiled(*args), repeats=repeats)

  timed("bin", lambda g: binning.bin_intersections(binning.project(g, grid), grid, capacity),
        gaussians)
  timed("render", lambda g: render_with_count(g, height, width, backend, capacity=capacity)[0],
        gaussians)
  loss_fn = fitting.render_loss(height, width, backend)(capacity)
  timed("fwd_bwd", jax.value_and_grad(lambda g: loss_fn(g, target)[0]), gaussians)
  optimizer = fitting.default_optimizer()
  run = fitting.make_run_steps(fitting.make_train_step(loss_fn, optimizer))
  state = fitting.init_state(gaussians, optimizer)
  timed("fit_call", run, state, target, jnp.int32(steps_per_call))
  row["fit_step_ms"] = row.pop("fit_call_ms") / steps_per_call
  row["render_fps"] = 1e3 / row["render_ms"]
  row["bin_share"] = row["bin_ms"] / row["render_ms"]
  if config["batch"]:
    b = config["batch"]
    batch = jax.vmap(lambda k: gi_jax.init_gaussians(k, num, height, width))(
        jax.random.split(jax.random.key(1), b))
    targets = jnp.broadcast_to(target, (b,) + target.shape)
    state_b = fitting.init_state(batch, optimizer, (b,))
    timed("batch_call", run, state_b, targets, jnp.int32(steps_per_call))
    row["batch_step_ms"] = row.pop("batch_call_ms") / steps_per_call
    row["batch_images_per_s_per_step"] = 1e3 * b / row["batch_step_ms"]
  peak = memory.peak_bytes_in_use()
  row["peak_mib"] = peak / 2**20 if peak is not None else None
  return row


def run_isolated(config: dict) -> dict:
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--one={json.dumps(config)}"],
                        env=env, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"benchmark of {config} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_config(text: str) -> tuple[int, int, int]:
  try:
    size, num = text.split(":")
    width, height = size.lower().split("x")
    return int(width), int(height), int(num)
  except ValueError:
    raise app.UsageError(f"config {text!r} is not WIDTHxHEIGHT:NUM_GAUSSIANS") from None


COLUMNS = [(k, k, fmt) for k, fmt in (
    ("backend", "{}"), ("width", "{}"), ("height", "{}"), ("num_gaussians", "{}"),
    ("intersections", "{}"), ("listed", "{}"), ("bin_ms", "{:.2f}"), ("render_ms", "{:.2f}"),
    ("render_fps", "{:.0f}"),
    ("bin_share", "{:.0%}"), ("fwd_bwd_ms", "{:.2f}"), ("fit_step_ms", "{:.2f}"),
    ("batch_step_ms", "{:.2f}"), ("compile_fit_call_s", "{:.1f}"), ("peak_mib", "{:.0f}"))]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _ONE.value:
    print(json.dumps(measure(json.loads(_ONE.value))))
    return
  rows, failed = [], []
  for text in _CONFIGS.value:
    width, height, num = parse_config(text)
    for backend in _BACKENDS.value:
      config = dict(width=width, height=height, num_gaussians=num, backend=backend,
                    batch=_BATCH.value, steps_per_call=_STEPS_PER_CALL.value,
                    repeats=_REPEATS.value)
      print(f"measuring {text} on {backend} ...", file=sys.stderr, flush=True)
      # One failing configuration (say a kernel that does not compile on this GPU) is reported
      # and the others still measured; each row is printed as it comes, for runs cut short.
      try:
        rows.append(run_isolated(config))
      except RuntimeError as e:
        print(e, file=sys.stderr, flush=True)
        failed.append(f"{text} on {backend}")
        continue
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  from gi_jax.experiment import format_table
  print(format_table(rows, COLUMNS))
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(rows, f, indent=1)
  print(f"wrote {_OUT.value}")
  if failed:
    sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
  app.run(main)
