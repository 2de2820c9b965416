"""Benchmark rendering and fitting on the current device; prints a table and writes JSON.

Usage (from the repo root):
  python experiments/bench.py                                  # 256x256/5000 and 768x512/70000
  python experiments/bench.py --configs=768x512:10000,768x512:70000 --backends=reference,pallas \
      --batch=8 --unroll=1,8 --xla_variants=default,graphs --out=results/bench.json
  python experiments/bench.py --structure --configs=768x512:10000   # any machine, no timing
  bash scripts/kernel_counts.sh --configs=768x512:70000              # and the kernels, no GPU

Per image size, Gaussian count and backend it measures: binning alone, render (forward only, as
FPS) with fresh binning and with a reused binning (``gi_jax.bin_gaussians``), forward+backward of
the loss both ways, a full fit step binning every step and reusing the binning (many steps per
device call as `fit` runs them), the same for a vmapped batch, compile times, and the peak device
memory. ``--unroll`` (of both fit loops, binning every step and reusing a binning) and
``--xla_variants`` repeat the rows per loop unrolling and per set of XLA flags (command buffers
that capture device loops), so one GPU call can A/B them. ``--kernel_settings`` times, instead, the
renders and forward+backward with each given launch shape of the Pallas kernels (G and warps of
forward and backward, stages), for tuning them on a GPU.
Timing: `block_until_ready`, warm-up and compile excluded, median of repeats. Every configuration
runs in a fresh process so its peak memory is its own (with XLA_PYTHON_CLIENT_PREALLOCATE=false).
The Gaussians are the paper's random initialisation for the bundled sample image resized to the
size. Fitted sets can touch far more tiles (kodim23 fitted with 10,000: 66,981 intersections
against 24,679 at initialisation), so fitting runs slower a step than these rows.

``--structure`` measures nothing: it lowers, for the CUDA platform on any machine (an abstract
H100, as ``tests/pallas/test_rasterize.py`` does), the render's value and gradient and one fit step, each
with fresh and with reused binning (the reused step with its coverage test), and the device call
of a fit that reuses its binning (Pallas kernels, compiled, not interpreted), and pieces of that
step (tile lists, projection with its VJP, coverage test, optimizer update), and counts per
program the sorts, scatters, gathers, while loops, conditionals, cumulative ops (prefix scans),
Triton kernels and StableHLO ops: on a GPU each op that survives fusion is a kernel launch.
Where JAX's CUDA plugin is installed (``scripts/kernel_counts.sh`` installs it and runs this), it
also compiles each program for an H100 without one and counts the kernels that survive fusion
(``kernel_count.py``): per pass (``kernels``) and per iteration of a fit's loop of steps
(``loop_kernels``), and reads the device memory XLA plans for it there (``planned_mib``).
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

from absl import app, flags

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
_MARGIN = flags.DEFINE_float("margin", None,
                             "Margin (px) of the reused binning (default: gi_jax.BinReuse's).")
_UNROLL = flags.DEFINE_list("unroll", ["1"], "Fit steps per device-loop iteration to measure.")
_XLA_VARIANTS = flags.DEFINE_list(
    "xla_variants", ["default"],
    "Named XLA flag sets to measure each configuration under (a process each): "
    "default, graphs (command buffers that capture while loops and conditionals), graphs_all "
    "(graphs, also for sequences of a single kernel).")
_KERNEL_SETTINGS = flags.DEFINE_list(
    "kernel_settings", [],
    "Pallas kernel launch shapes to time instead (renders and forward+backward only, a process "
    "each): GxW/GxW[/STAGES], forward then backward G and warps, e.g. 32x4/16x8,64x8/16x8.")
_STRUCTURE = flags.DEFINE_boolean("structure", False,
                                  "Count the ops of the CUDA lowering (and the kernels, with "
                                  "JAX's CUDA plugin) instead of timing.")
_OUT = flags.DEFINE_string("out", "results/bench.json", "Where to write the JSON.")
_ONE = flags.DEFINE_string("one", None, "Internal: measure one JSON-encoded config, print JSON.")

# XLA:GPU runs a device loop's condition on the host between iterations unless a command buffer
# (a CUDA graph) captures the loop; conditionals likewise. These are the candidates to A/B.
XLA_VARIANTS = {
    "default": "",
    "graphs": "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL",
    "graphs_all": "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL "
                  "--xla_gpu_graph_min_graph_size=1",
}


def measure(config: dict) -> dict:
  """Measures one (size, count, backend, XLA flags) configuration in this process; with
  ``kernel_settings``, only the renders and forward+backward, with those Pallas kernels."""
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np
  from PIL import Image

  import gi_jax
  from gi_jax import binning, fitting, memory
  from gi_jax.io import sample_image_path
  from gi_jax.render import register_backend, render_with_count, resolve_backend
  from gi_jax.timing import compile_seconds, median_seconds

  width, height, num = config["width"], config["height"], config["num_gaussians"]
  backend = resolve_backend(config["backend"])
  if config.get("kernel_settings"):
    from gi_jax import pallas
    from gi_jax.pallas.rasterize import KernelSettings
    settings = KernelSettings.parse(config["kernel_settings"])
    backend = f"pallas {settings}"
    register_backend(backend, functools.partial(pallas.rasterize, settings=settings,
                                                interpret=jax.default_backend() != "gpu"),
                     tile_lists=pallas.tile_lists_for_backend)
  on_gpu = jax.default_backend() == "gpu"
  repeats = config["repeats"] or (50 if on_gpu else 3)
  steps_per_call = config["steps_per_call"] or (100 if on_gpu else 5)
  reuse = fitting.BinReuse() if config["margin"] is None else fitting.BinReuse(config["margin"])
  image = Image.open(sample_image_path()).convert("RGB").resize((width, height), Image.LANCZOS)
  target = jnp.asarray(np.asarray(image, np.float32) / 255.0)
  gaussians = gi_jax.init_gaussians(jax.random.key(0), num, height, width)
  grid = binning.TileGrid(height, width)
  capacity = fitting.initial_capacity(gaussians, height, width)
  reuse_capacity = fitting.initial_capacity(gaussians, height, width, reuse.margin)
  bins = binning.bin_intersections(binning.project(gaussians, grid), grid, capacity)
  binned = gi_jax.bin_gaussians(gaussians, height, width, margin=reuse.margin,
                                capacity=reuse_capacity)
  # The boxes' pairs (what the buffer holds), and those the rasterizer evaluates.
  row = dict(config, backend=backend, device=jax.devices()[0].device_kind, capacity=capacity,
             intersections=int(bins.count), listed=int(bins.tile_starts[-1]),
             margin=reuse.margin, reuse_pairs=int(binned.count))

  def timed(name, fn, *args):
    seconds, compiled = compile_seconds(jax.jit(fn), *args)
    row[f"compile_{name}_s"] = seconds
    row[f"{name}_ms"] = 1e3 * median_seconds(lambda: compiled(*args), repeats=repeats)

  if not config.get("kernel_settings"):
    timed("bin", lambda g: binning.bin_intersections(binning.project(g, grid), grid, capacity),
          gaussians)
  timed("render", lambda g: render_with_count(g, height, width, backend, capacity=capacity)[0],
        gaussians)
  timed("render_reuse",
        lambda g, b: render_with_count(g, height, width, backend, binning=b)[0], gaussians, binned)
  loss_fn = fitting.render_loss(height, width, backend)(capacity)
  reuse_loss = fitting.render_loss(height, width, backend)(reuse_capacity)
  timed("fwd_bwd", jax.value_and_grad(lambda g: loss_fn(g, target)[0]), gaussians)
  timed("fwd_bwd_reuse", jax.value_and_grad(lambda g, b: reuse_loss(g, target, b)[0]), gaussians,
        binned)
  row["render_fps"] = 1e3 / row["render_ms"]
  row["render_reuse_fps"] = 1e3 / row["render_reuse_ms"]
  if config.get("kernel_settings"):
    return row
  optimizer = fitting.default_optimizer()
  rebinner = fitting.Rebinner(height, width, reuse)
  unroll = config["unroll"]
  state = fitting.init_state(gaussians, optimizer)
  plain = fitting.make_run_steps(fitting.make_train_step(loss_fn, optimizer), unroll=unroll)
  timed("fit_call", plain, state, target, jnp.int32(steps_per_call))
  reused = fitting.make_run_steps(fitting.make_train_step(reuse_loss, optimizer), rebinner,
                                  reuse_capacity, unroll)
  timed("fit_reuse_call", reused, state, target, jnp.int32(steps_per_call))
  row["fit_step_ms"] = row.pop("fit_call_ms") / steps_per_call
  row["fit_step_reuse_ms"] = row.pop("fit_reuse_call_ms") / steps_per_call
  row["bin_share"] = row["bin_ms"] / row["render_ms"]
  if config["batch"]:
    b = config["batch"]
    batch = jax.vmap(lambda k: gi_jax.init_gaussians(k, num, height, width))(
        jax.random.split(jax.random.key(1), b))
    targets = jnp.broadcast_to(target, (b,) + target.shape)
    state_b = fitting.init_state(batch, optimizer, (b,))
    batch_capacity = fitting.initial_capacity(batch, height, width, reuse.margin)
    batch_loss = fitting.render_loss(height, width, backend)(batch_capacity)
    run_b = fitting.make_run_steps(fitting.make_train_step(batch_loss, optimizer), rebinner,
                                   batch_capacity, unroll)
    timed("batch_call", run_b, state_b, targets, jnp.int32(steps_per_call))
    row["batch_step_ms"] = row.pop("batch_call_ms") / steps_per_call
    row["batch_images_per_s_per_step"] = 1e3 * b / row["batch_step_ms"]
  peak = memory.peak_bytes_in_use()
  row["peak_mib"] = peak / 2**20 if peak is not None else None
  return row


def run_isolated(config: dict) -> dict:
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  extra = XLA_VARIANTS[config["xla_variant"]]
  if extra:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {extra}".strip()
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
    ("backend", "{}"), ("xla_variant", "{}"), ("unroll", "{}"), ("width", "{}"),
    ("height", "{}"), ("num_gaussians", "{}"), ("intersections", "{}"), ("listed", "{}"),
    ("bin_ms", "{:.3f}"), ("render_ms", "{:.3f}"), ("render_fps", "{:.0f}"),
    ("render_reuse_fps", "{:.0f}"), ("bin_share", "{:.0%}"), ("fwd_bwd_ms", "{:.3f}"),
    ("fwd_bwd_reuse_ms", "{:.3f}"), ("fit_step_ms", "{:.3f}"), ("fit_step_reuse_ms", "{:.3f}"),
    ("batch_step_ms", "{:.3f}"), ("compile_fit_reuse_call_s", "{:.1f}"), ("peak_mib", "{:.0f}"))]


# -- structure: what the CUDA lowering holds ---------------------------------------------------

STRUCTURE_COLUMNS = [(k, k, fmt) for k, fmt in (
    ("program", "{}"), ("width", "{}"), ("height", "{}"), ("num_gaussians", "{}"),
    ("sorts", "{}"), ("scatters", "{}"), ("gathers", "{}"), ("while_loops", "{}"),
    ("conditionals", "{}"), ("cumulative", "{}"), ("triton_kernels", "{}"), ("ops", "{}"),
    ("kernels", "{}"), ("loop_kernels", "{}"), ("planned_mib", "{:.1f}"))]

_OP = re.compile(r"\b((?:stablehlo|chlo)\.[a-z_]+)\b")


def count_ops(text: str) -> dict:
  """Counts of the op kinds that matter on a GPU in a lowered module's text.

  ``ops`` counts every StableHLO and CHLO operation, the bodies of sort comparators and scatter
  updates included, but not literals (``constant``) and region terminators (``return``), which
  compute nothing.
  """
  ops = collections.Counter(m.group(1) for m in _OP.finditer(text)
                            if not text[max(m.start() - 1, 0)] in "#!")
  for literal in ("stablehlo.constant", "stablehlo.return"):
    ops.pop(literal, None)
  return dict(
      sorts=ops["stablehlo.sort"], scatters=ops["stablehlo.scatter"],
      gathers=ops["stablehlo.gather"] + ops["stablehlo.dynamic_slice"],
      while_loops=ops["stablehlo.while"], conditionals=ops["stablehlo.case"] + ops["stablehlo.if"],
      cumulative=ops["stablehlo.reduce_window"] + ops["chlo.scan"],
      triton_kernels=text.count("__gpu$xla.gpu.triton"), ops=sum(ops.values()))


def structure_programs(width: int, height: int, num: int, margin: float):
  """``name -> (function, args)``: the programs whose CUDA lowering ``--structure`` counts."""
  import functools

  import jax
  import jax.numpy as jnp

  import gi_jax
  from gi_jax import binning, fitting
  from gi_jax.pallas import rasterize, tile_lists
  from gi_jax.render import register_backend

  # The kernels as a GPU runs them (the registered backend interprets them off a GPU).
  register_backend("pallas_compiled", functools.partial(rasterize, interpret=False),
                   tile_lists=functools.partial(tile_lists, interpret=False))
  gaussians = gi_jax.init_gaussians(jax.random.key(0), num, height, width)
  target = jnp.zeros((height, width, 3), jnp.float32)
  reuse = fitting.BinReuse(margin)
  capacity = fitting.initial_capacity(gaussians, height, width, margin)
  binned = jax.eval_shape(lambda g: gi_jax.bin_gaussians(g, height, width, margin=margin,
                                                         capacity=capacity), gaussians)
  loss_fn = fitting.render_loss(height, width, "pallas_compiled")(capacity)
  optimizer = fitting.default_optimizer()
  state = fitting.init_state(gaussians, optimizer)
  step = fitting.make_train_step(loss_fn, optimizer)
  rebinner = fitting.Rebinner(height, width, reuse)

  def checked_step(state, target, binned):
    # What a fit reusing its binning runs per step: the coverage test (its inner loop's
    # condition) and the step.
    return step(state, target, binned), rebinner.stale(binned, state.params, jnp.int32(1))

  value_and_grad = lambda b, t: jax.value_and_grad(lambda g: loss_fn(g, t, b)[0])
  fit_call = fitting.make_run_steps(step, rebinner, capacity)
  plain_capacity = fitting.initial_capacity(gaussians, height, width)
  plain_call = fitting.make_run_steps(fitting.make_train_step(
      fitting.render_loss(height, width, "pallas_compiled")(plain_capacity), optimizer))
  grid = binning.TileGrid(height, width)
  projection = jax.eval_shape(lambda g: binning.project(g, grid), gaussians)
  project = lambda g: binning.project(g, grid)[:3]  # the differentiable part

  def vjp_at_own_value(fn, x):
    value, pullback = jax.vjp(fn, x)
    return value, pullback(value)
  return {
      # The target is an argument, as in a fit (a constant would leave it out of planned_mib).
      "render value+grad, fresh binning": (lambda g, t: value_and_grad(None, t)(g),
                                           (gaussians, target)),
      "render value+grad, reused binning": (lambda g, b, t: value_and_grad(b, t)(g),
                                            (gaussians, binned, target)),
      "fit step, binning every step": (lambda s, t: step(s, t, None), (state, target)),
      "fit step, reused binning": (checked_step, (state, target, binned)),
      "fit call (device loop), binning every step": (
          lambda s, t: plain_call(s, t, jnp.int32(100)), (state, target)),
      "fit call (device loops), reused binning": (lambda s, t: fit_call(s, t, jnp.int32(100)),
                                                  (state, target)),
      # Pieces of the step that reuses its binning, to see where its ops are.
      "piece: tile lists": (functools.partial(tile_lists, interpret=False), (binned, projection)),
      "piece: projection value+VJP": (lambda g: vjp_at_own_value(project, g), (gaussians,)),
      "piece: coverage test": (lambda b, g: rebinner.stale(b, g, jnp.int32(1)),
                               (binned, gaussians)),
      "piece: optimizer update": (lambda s: optimizer.update(s.params, s.opt_state, s.params),
                                  (state,)),
  }


def structure_rows(configs, margin: float) -> list[dict]:
  """Lowers each program for CUDA (abstract H100) and counts its ops; where JAX's CUDA plugin is
  installed, also compiles it for an H100 and counts the kernels it would launch."""
  import jax

  import kernel_count
  try:
    h100 = kernel_count.h100_device()
  except kernel_count.Unavailable as e:
    print(f"kernels not counted: {e}", file=sys.stderr, flush=True)
    h100 = None
  mesh = kernel_count.h100_mesh()
  rows = []
  for width, height, num in configs:
    for name, (fn, args) in structure_programs(width, height, num, margin).items():
      with jax.sharding.use_abstract_mesh(mesh):
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
      kernels = dict(kernels=None, loop_kernels=None, planned_mib=None)
      if h100 is not None:
        compiled = kernel_count.compile_for(h100, fn, args)
        kernels = dict(kernel_count.summary(kernel_count.launches(compiled.as_text())),
                       planned_mib=kernel_count.planned_bytes(compiled) / 2**20)
      rows.append(dict(program=name, width=width, height=height, num_gaussians=num,
                       margin=margin, **count_ops(text), **kernels))
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _ONE.value:
    print(json.dumps(measure(json.loads(_ONE.value))))
    return
  configs = [parse_config(text) for text in _CONFIGS.value]
  unknown = sorted(set(_XLA_VARIANTS.value) - set(XLA_VARIANTS))
  if unknown:
    raise app.UsageError(f"unknown --xla_variants {unknown}; known: {sorted(XLA_VARIANTS)}")
  try:
    unrolls = [int(u) for u in _UNROLL.value]
  except ValueError:
    raise app.UsageError(f"--unroll takes integers, got {_UNROLL.value}") from None
  if any(u < 1 for u in unrolls):
    raise app.UsageError("--unroll values must be >= 1")
  from harness import format_table, run_failed
  from gi_jax import errors
  from gi_jax.fitting import BinReuse
  from gi_jax.pallas.rasterize import KernelSettings
  from gi_jax.storage import check_writable
  try:
    check_writable(_OUT.value)  # before the measurements, which take minutes on a GPU
    kernel_settings = [str(KernelSettings.parse(text)) for text in _KERNEL_SETTINGS.value]
  except errors.GIError as e:
    raise run_failed(e) from None
  margin = BinReuse().margin if _MARGIN.value is None else _MARGIN.value
  if _STRUCTURE.value:
    rows = structure_rows(configs, margin)
    print(format_table(rows, STRUCTURE_COLUMNS))
    _write(rows)
    return
  runs = []
  for width, height, num in configs:
    base = dict(width=width, height=height, num_gaussians=num, batch=_BATCH.value,
                steps_per_call=_STEPS_PER_CALL.value, repeats=_REPEATS.value,
                margin=_MARGIN.value)
    for settings in kernel_settings:
      runs.append((dict(base, backend="pallas", xla_variant="default", unroll=1,
                        kernel_settings=settings),
                   f"{width}x{height}:{num} with Pallas kernels {settings}"))
    for backend in [] if kernel_settings else _BACKENDS.value:
      for variant in _XLA_VARIANTS.value:
        for unroll in unrolls:
          runs.append((dict(base, backend=backend, xla_variant=variant, unroll=unroll),
                       f"{width}x{height}:{num} on {backend} ({variant}, unroll {unroll})"))
  rows, failed = [], []
  for config, label in runs:
    print(f"measuring {label} ...", file=sys.stderr, flush=True)
    # One failing configuration (say a kernel that does not compile on this GPU) is reported and
    # the others still measured; each row is printed as it comes, for runs cut short.
    try:
      rows.append(run_isolated(config))
    except RuntimeError as e:
      print(e, file=sys.stderr, flush=True)
      failed.append(label)
      continue
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  print(format_table(rows, COLUMNS))
  _write(rows)
  if failed:
    sys.exit(f"failed: {', '.join(failed)}")


def _write(rows):
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(rows, f, indent=1)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
