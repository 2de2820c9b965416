"""The paper's Table 1: GaussianImage beside its baselines (SIREN, WIRE, Instant-NGP, 3D-GS), each
fitted to the same images, in the paper's columns: PSNR, MS-SSIM, fit seconds, render FPS, peak
memory and parameters.

Usage (from the repo root):
  python experiments/table1.py --dataset=../shared/data/kodak     # GPU: every method's settings
  # CPU: centre crops, few steps per method, Gaussian counts scaled by area:
  python experiments/table1.py --dataset=../shared/data/kodak --max_images=3 --crop=128 \\
      --scale_by_area --gs3d_gaussians=10000

Methods (``--methods``): ``gaussianimage`` (ours, :func:`gi_jax.fit` with ``--num_gaussians``,
Cholesky, the settings of ``experiments/fit.py``), and the baselines of :mod:`gi_jax.baselines`
with the settings their module docstrings give and source (``--gs3d_gaussians`` 3D Gaussians for
3D-GS). ``--steps`` is one count for every method, ``method:count`` entries for some, or both
(``--steps=300,gs3d:100``); by default every method runs 50,000 steps on a GPU (GaussianImage's
count; the baselines' is not printed, see the modules) and a few on a CPU (``CPU_STEPS``).

Columns, as measured here: PSNR and MS-SSIM of the render as an 8-bit PNG holds it (MS-SSIM is
null on images under 161 pixels a side); fit seconds without compilation; render FPS from the
median of jitted renders; peak memory is the device's reported peak where it reports one
(``device_peak_bytes``, a process-wide high-water mark, so with several methods in one process
only the first is its own) and, on every device, ``peak_bytes``: XLA's planned memory of one
compiled training call (arguments, outputs, temporaries), the column the summary shows;
parameters are real numbers (8 per 2D Gaussian, 59 per 3D one).

Writes ``<out_dir>/records.json`` (one record per image and method, resumable and shared safely by
runs at once: records already there are skipped), ``summary.json`` (means per method) and
``summary.png`` (PSNR against fit time and against render FPS), and prints the table.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags
import jax
import numpy as np
import optax

from gi_jax import baselines, errors, io, optim
from gi_jax.baselines import training
from gi_jax.fitting import fit, render_loss
from gi_jax.memory import peak_bytes_in_use
from gi_jax.storage import atomic_path
from gi_jax.timing import median_seconds
from harness import (INTEGER, LIST, NUMBER, OBJECT, OPTIONAL_NUMBER, STRING, ResultsFile,
                     centre_crop, check_out_dir, format_table, fps_seconds, image_metrics,
                     measure_render_fps, other_code_note, paper_or_cpu_settings, pyplot,
                     run_failed, save_figure, scaled_count, select_images)

OURS = "gaussianimage"
METHODS = (OURS, *baselines.METHODS)
LABELS = {OURS: "GaussianImage", "siren": "SIREN", "wire": "WIRE", "instant_ngp": "Instant-NGP",
          "gs3d": "3D-GS"}
GPU_STEPS = 50_000
# A CPU's quick budget per method (about a minute each on a 128×128 crop): an INR's step costs
# far more than ours, and 3D-GS's dense render more still.
CPU_STEPS = {OURS: 1000, "siren": 50, "wire": 50, "instant_ngp": 500, "gs3d": 100}
NOMINAL_GAUSSIANS = 70_000
RECORD_FIELDS = dict(image=STRING, method=STRING, steps=INTEGER, psnr=NUMBER,
                     ms_ssim=OPTIONAL_NUMBER, fit_seconds=NUMBER, render_fps=NUMBER,
                     peak_bytes=OPTIONAL_NUMBER, parameters=INTEGER, settings=OBJECT,
                     history=LIST)
FILES = ("records.json", "summary.json", "summary.png")

_DATASET = flags.DEFINE_string("dataset", None, "Folder of images (default: the bundled sample).")
_IMAGES = flags.DEFINE_list("images", None, "Use only these file names from --dataset.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", None, "Use only the first N images (by name).",
                                    lower_bound=1)
_CROP = flags.DEFINE_integer("crop", 0, "Fit a centred crop of this many pixels square (0: whole).",
                              lower_bound=0)
_METHODS = flags.DEFINE_list("methods", list(METHODS), f"Methods, from {', '.join(METHODS)}.")
_STEPS = flags.DEFINE_list(
    "steps", None, "Steps: a count for every method and/or method:count entries (default: "
    f"{GPU_STEPS} each on a GPU, else {CPU_STEPS}).")
_NUM_GAUSSIANS = flags.DEFINE_integer(
    "num_gaussians", NOMINAL_GAUSSIANS, "GaussianImage's Gaussians (nominal, for 768×512 with "
    "--scale_by_area).", lower_bound=1)
_GS3D_GAUSSIANS = flags.DEFINE_integer(
    "gs3d_gaussians", None, "3D-GS's Gaussians (nominal as --num_gaussians; default: the same).",
    lower_bound=1)
_SCALE_BY_AREA = flags.DEFINE_bool(
    "scale_by_area", False, "Scale the Gaussian counts by (image pixels)/(768·512), for crops.")
_INIT = flags.DEFINE_enum("init", None, ["random", "gradient"],
                          "GaussianImage's initialisation (default: random on GPU, else gradient).")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", None, "GaussianImage's learning rate (default: 0.001 on GPU, else 0.03).")
_LR_SCHEDULE = flags.DEFINE_enum("lr_schedule", None, list(optim.SCHEDULES),
                                 "GaussianImage's schedule (default: paper on GPU, else cosine).")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed of every method.")
_BACKEND = flags.DEFINE_string("backend", "auto", "GaussianImage's renderer: auto, reference or "
                               "pallas.")
_OUT_DIR = flags.DEFINE_string("out_dir", "results/table1", "Where to write results.")


def parse_methods(values: list[str]) -> list[str]:
  """The methods asked for, in the order given, each once.

  Raises:
    errors.InvalidInputError: none, or an unknown name.
  """
  unknown = [m for m in values if m not in METHODS]
  if not values or unknown:
    raise errors.InvalidInputError(f"--methods must be from {', '.join(METHODS)}, got {values}")
  return list(dict.fromkeys(values))


def parse_steps(values: list[str] | None, methods: list[str], on_gpu: bool) -> dict[str, int]:
  """Steps per method from ``--steps`` (see the module docstring).

  Raises:
    errors.InvalidInputError: an entry that is not ``N`` or ``method:N`` with N >= 1, an unknown
      method, or two counts for one method.
  """
  steps = {m: GPU_STEPS if on_gpu else CPU_STEPS[m] for m in methods}
  bad = errors.InvalidInputError(
      f"--steps must be a count >= 1 and/or method:count entries (methods {', '.join(METHODS)}),"
      f" got {values}")
  every, named = None, {}
  for value in values or []:
    name, _, count = value.rpartition(":")
    try:
      count = int(count)
    except ValueError:
      raise bad from None
    if count < 1 or (name and name not in METHODS) or (not name and every is not None):
      raise bad
    if name:
      if name in named:
        raise bad
      named[name] = count
    else:
      every = count
  return {m: named.get(m, every if every is not None else steps[m]) for m in methods}


def method_settings(method: str, num_gaussians: int | None, gi_settings) -> dict:
  """What a record's ``settings`` hold: what the method runs with beyond its module's defaults."""
  if method == OURS:
    return dict(num_gaussians=num_gaussians, init=gi_settings.init,
                learning_rate=gi_settings.learning_rate, lr_schedule=gi_settings.lr_schedule,
                parameterization="cholesky")
  if method == "gs3d":
    return dict(num_gaussians=num_gaussians)
  return {}


def ours_step_bytes(result, target, backend: str, settings) -> int | None:
  """XLA's planned bytes of one of our training steps (bins afresh, at the fit's capacity)."""
  height, width = result.height, result.width
  loss_fn = render_loss(height, width, backend)(result.capacity)
  optimizer, _ = optim.scheduled_adan(settings.learning_rate, settings.lr_schedule, result.steps)

  def step(params, opt_state, target):
    grads = jax.grad(lambda p: loss_fn(p, target)[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params = result.gaussians
  compiled = jax.jit(step).lower(params, optimizer.init(params), target).compile()
  return training.memory_bytes(compiled)


def run_ours(target: np.ndarray, steps: int, num_gaussians: int, settings) -> dict:
  backend = _BACKEND.value
  height, width = target.shape[:2]
  result = fit(target, num_gaussians, steps, seed=_SEED.value, backend=backend,
               learning_rate=settings.learning_rate, init=settings.init,
               lr_schedule=settings.lr_schedule, steps_per_call=max(1, steps // 50),
               progress=False)
  rendered = np.asarray(result.render(backend))
  return dict(
      image_metrics(rendered, target), fit_seconds=result.fit_seconds,
      compile_seconds=result.compile_seconds,
      render_fps=measure_render_fps(result.gaussians, height, width, backend),
      peak_bytes=ours_step_bytes(result, target, backend, settings),
      parameters=8 * num_gaussians,
      history=[dict(step=r["step"], psnr=r["psnr"], seconds=r["seconds"])
               for r in result.history])


def run_baseline(method: str, target: np.ndarray, steps: int, settings: dict) -> dict:
  module = baselines.METHODS[method]
  height, width = target.shape[:2]
  result = module.fit(target, steps, seed=_SEED.value, **settings)
  render = jax.jit(lambda params: module.render(params, height, width))
  rendered = np.asarray(render(result.params))
  seconds = median_seconds(lambda: render(result.params), repeats=10, min_seconds=fps_seconds())
  return dict(
      image_metrics(rendered, target), fit_seconds=result.fit_seconds,
      compile_seconds=result.compile_seconds, render_fps=1.0 / seconds,
      peak_bytes=result.step_bytes, parameters=result.num_parameters,
      history=[dict(step=r["step"], psnr=r["psnr"], seconds=r["seconds"])
               for r in result.history])


def _mean(values):
  values = list(values)
  if not values or any(v is None for v in values):
    return None
  return float(np.mean(values))


def summarize(records: list[dict], methods: list[str]) -> list[dict]:
  """One row per method (in ``methods``' order): means over its images of the paper's columns,
  the largest ``peak_bytes``."""
  rows = []
  for method in methods:
    group = [r for r in records if r["method"] == method]
    if not group:
      continue
    peaks = [r["peak_bytes"] for r in group if r.get("peak_bytes") is not None]
    rows.append(dict(
        method=method, label=LABELS[method], images=len(group),
        steps=sorted({r["steps"] for r in group}), psnr=_mean(r["psnr"] for r in group),
        ms_ssim=_mean(r["ms_ssim"] for r in group),
        fit_seconds=_mean(r["fit_seconds"] for r in group),
        render_fps=_mean(r["render_fps"] for r in group),
        peak_bytes=max(peaks) if peaks else None,
        parameters=_mean(r["parameters"] for r in group)))
  return rows


COLUMNS = [("label", "method", "{}"), ("images", "images", "{}"), ("steps", "steps", "{}"),
           ("psnr", "PSNR dB", "{:.2f}"), ("ms_ssim", "MS-SSIM", "{:.4f}"),
           ("fit_seconds", "fit s", "{:.1f}"), ("render_fps", "FPS", "{:.1f}"),
           ("peak_mib", "peak MiB", "{:.1f}"), ("parameters", "params", "{:,.0f}")]


def table_text(rows: list[dict]) -> str:
  """The summary as a plain-text table in the paper's columns."""
  shown = [dict(r, steps=",".join(map(str, r["steps"])),
                peak_mib=None if r["peak_bytes"] is None else r["peak_bytes"] / 2**20)
           for r in rows]
  return format_table(shown, COLUMNS)


def plot(path: str, rows: list[dict], title: str) -> None:
  """PSNR against fit seconds and against render FPS, one labelled point per method."""
  plt = pyplot()
  figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for axis, key, label in ((axes[0], "fit_seconds", "fit time per image (s)"),
                           (axes[1], "render_fps", "render FPS")):
    for index, row in enumerate(rows):
      if row[key] is None or row["psnr"] is None:
        continue
      axis.scatter([row[key]], [row["psnr"]], color=f"C{index}")
      axis.annotate(row["label"], (row[key], row["psnr"]), textcoords="offset points",
                    xytext=(5, 3), fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel(label)
    axis.set_ylabel("PSNR (dB), mean over images")
    axis.grid(True, alpha=0.3)
  figure.suptitle(title, fontsize=10)
  figure.tight_layout()
  save_figure(figure, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  on_gpu = jax.default_backend() == "gpu"
  device = str(jax.devices()[0].device_kind)
  try:
    methods = parse_methods(_METHODS.value)
    steps = parse_steps(_STEPS.value, methods, on_gpu)
    gi_settings = paper_or_cpu_settings([_NUM_GAUSSIANS.value], steps.get(OURS, 1), _INIT.value,
                                        _LEARNING_RATE.value, _LR_SCHEDULE.value)
    optim.make_schedule(gi_settings.lr_schedule, gi_settings.learning_rate, 1)
    paths = select_images(_DATASET.value, _IMAGES.value, _MAX_IMAGES.value)
    check_out_dir(_OUT_DIR.value, *FILES)
    results = ResultsFile(os.path.join(_OUT_DIR.value, FILES[0]), RECORD_FIELDS)
    targets = {path: centre_crop(io.load_image(path), _CROP.value) for path in paths}
    small = [os.path.basename(p) for p, t in targets.items() if min(t.shape[:2]) < 11]
    if "gs3d" in methods and small:
      raise errors.InvalidInputError(f"3D-GS's SSIM loss needs images of at least 11×11: "
                                     f"{', '.join(small)} are smaller")
  except errors.GIError as e:
    raise run_failed(e) from None
  print(f"{len(paths)} image(s), crop {_CROP.value or 'none'}, steps {steps}, device {device}; "
        f"GaussianImage: {gi_settings.label}", flush=True)

  run_keys = []
  try:
    for path, target in targets.items():
      height, width = target.shape[:2]
      for method in methods:
        count = None  # the INRs have no Gaussians
        if method in (OURS, "gs3d"):
          nominal = _NUM_GAUSSIANS.value
          if method == "gs3d" and _GS3D_GAUSSIANS.value:
            nominal = _GS3D_GAUSSIANS.value
          count = scaled_count(nominal, height, width, _SCALE_BY_AREA.value)
        settings = method_settings(method, count, gi_settings)
        key = dict(image=os.path.basename(path), crop=_CROP.value, height=height, width=width,
                   method=method, steps=steps[method], seed=_SEED.value, settings=settings)
        run_keys.append(key)
        done = results.find(**key)
        if done is not None:
          print(f"{key['image']} {method}: done already, skipped"
                f"{other_code_note([done])}", flush=True)
          continue
        t0 = time.perf_counter()
        if method == OURS:
          measured = run_ours(target, steps[method], count, gi_settings)
        else:
          measured = run_baseline(method, target, steps[method], settings)
        record = dict(key, **measured, device_peak_bytes=peak_bytes_in_use(), device=device)
        print(f"{key['image']} {width}×{height} {method} steps={steps[method]}: PSNR "
              f"{record['psnr']:.2f} dB, fit {record['fit_seconds']:.1f} s, "
              f"{record['render_fps']:.1f} FPS, {record['parameters']:,} parameters (wall "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
        results.add(record)
  except errors.GIError as e:
    raise run_failed(e) from None

  records = [results.find(**key) for key in run_keys]
  rows = summarize(records, methods)
  print()
  print(table_text(rows))
  summary_path = os.path.join(_OUT_DIR.value, FILES[1])
  with atomic_path(summary_path) as tmp:
    with open(tmp, "w") as f:
      json.dump({"rows": rows, "device": device, "crop": _CROP.value,
                 "images": [os.path.basename(p) for p in paths], "steps": steps}, f, indent=1)
  title = (f"{len(paths)} image(s), crop {_CROP.value or 'none'}, steps {steps}, {device}")
  plot(os.path.join(_OUT_DIR.value, FILES[2]), rows, title)
  print(f"\nwrote {results.path}, {summary_path} and {FILES[2]} in {_OUT_DIR.value}")


if __name__ == "__main__":
  app.run(main)
