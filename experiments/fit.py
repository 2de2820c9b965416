"""Fit Gaussians to one image or a folder of images and write renders, Gaussians and metrics.

Usage (from the repo root):
  python experiments/fit.py                                   # the bundled sample, defaults
  python experiments/fit.py --image=photo.png --num_gaussians=20000 --steps=5000
  python experiments/fit.py --dataset=../shared/data/kodak --num_gaussians=10000,30000,70000 \
      --batch_size=auto

Images are fitted as RGB unless ``--channels`` says otherwise: 1 (grayscale), 4 (RGBA, the alpha
fitted as a fourth channel, not composited), or 0 for what each file has; renders are written with
the channels fitted.

Fits follow a recipe (gi_jax/recipes.py): ``--recipe=best`` (the default: gradient init, learning
rate 0.03 held, then decayed by a cosine, per-group learning-rate factors, Adan's betas (0.9, 0.99,
0.99)) or ``--recipe=paper`` (the paper's protocol: random init, learning rate 0.001 halved every
20,000 steps); ``--init``, ``--learning_rate``, ``--lr_schedule`` and ``--clip_gradient`` override
its fields one by one.
Counts and steps default to the paper's (70,000 Gaussians, 50,000 steps) on a GPU and to quick
CPU settings (10,000 Gaussians, 1,000 steps) elsewhere; the run prints which. Per
image and Gaussian count it writes ``<name>_n<N>_<hash>.png`` (the render, 8-bit) and ``.npz``
(the Gaussians), the hash covering every setting so that runs with different settings never
overwrite each other's files, and a record naming them in ``results.json``; files are written
atomically, and a re-run skips records already there.

With ``--coordinator_address``, ``--num_processes`` and ``--process_id`` (or ``--distributed``) the
run spans processes and hosts, the same command in each (see experiments/multihost.py); process 0
writes every file. With ``--dataset`` the images are fitted in batches of ``--batch_size`` same-size images
(``auto``: the largest batch that fits in free device memory), sharded over the devices, each image
written as soon as its batch finishes: an interrupted run loses at most the batch in flight and
resumes where it stopped. Batched results equal one-at-a-time fits. Each fit gets a figure,
``<name>_n<N>_<hash>_figure.png``: target, render, error map and the Gaussians as ellipses, with
PSNR against step and against fit time (``--nofigures`` leaves it out). Every run ends with a
summary per Gaussian count in the columns of the paper's Table 1 (PSNR, MS-SSIM, fit seconds,
render FPS, peak memory, parameters), written to ``summary.json``, and, when it ran more than one
count, a figure of PSNR against N and against fit time, ``summary.png``.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags

from gi_jax import errors, io, optim, recipes
from gi_jax.fitting import BinReuse
from gi_jax.render import CLIP_GRADIENTS
import multihost
from harness import (FIT_RECORD_FIELDS, ResultsFile, check_out_dir, fit_and_record,
                     fit_dataset_and_record, find_images, paper_or_cpu_settings, positive_integers,
                     print_summary, print_table, record_key, run_failed, summarize, write_summary)

_IMAGE = flags.DEFINE_string("image", None, "Image to fit (default: the bundled sample).")
_DATASET = flags.DEFINE_string("dataset", None, "Folder of images to fit, each on its own.")
_NUM_GAUSSIANS = flags.DEFINE_list(
    "num_gaussians", None,
    "Gaussian count(s), comma-separated (default: 70000 on GPU, else 10000).")
_STEPS = flags.DEFINE_integer("steps", None,
                              "Optimisation steps (default: 50000 on GPU, else 1000).")
_PARAMETERIZATION = flags.DEFINE_enum("parameterization", "cholesky", ["cholesky", "rs"],
                                      "Covariance parameterisation.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed.")
_CHANNELS = flags.DEFINE_enum(
    "channels", "3", ["0", "1", "3", "4"],
    "Colour channels fitted: 3 (RGB; grayscale repeated, transparency composited on white), 1 "
    "(grayscale), 4 (RGBA, alpha fitted as a channel), or 0 for what each file has.")
_RECIPE = flags.DEFINE_enum(
    "recipe", "best", sorted(recipes.RECIPES),
    "Fitting recipe (gi_jax.recipes): best (gradient init, 0.03 held then cosine, per-group "
    "learning-rate factors, Adan's betas 0.9, 0.99, 0.99) or paper (the paper's protocol, "
    "exactly); the flags below override its fields one by one.")
_INIT = flags.DEFINE_enum("init", None, ["random", "gradient"],
                          "Initialisation: the paper's random one, or content-adaptive "
                          "(default: the recipe's).")
_BACKEND = flags.DEFINE_string("backend", "auto", "Renderer: auto, reference or pallas.")
_OUT_DIR = flags.DEFINE_string("out_dir", "results/fit", "Where to write results.")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", None, "Base learning rate (Adan; default: the recipe's).")
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule", None, list(optim.SCHEDULES),
    "Learning-rate schedule: the paper's (halved every 20,000 steps) or cosine decay to 1% over "
    "the run (default: the recipe's).")
_BATCH_SIZE = flags.DEFINE_string(
    "batch_size", "1", "With --dataset: images fitted at once (same-size images are grouped), or "
    "'auto' for the largest batch that fits in free device memory.")
_CLIP_GRADIENT = flags.DEFINE_enum(
    "clip_gradient", None, list(CLIP_GRADIENTS),
    "The loss's gradient through the render's clip to [0, 1]: the clip's own (the paper's) or "
    "straight-through, which also pulls back pixels the sum pushed past 1 (see README; default: "
    "the recipe's).")
_BIN_MARGIN = flags.DEFINE_float(
    "bin_margin", BinReuse().margin,
    "Reuse each tile binning across steps while every Gaussian stays within this many pixels of "
    "the box it was binned with (the same result, fewer sorts); negative: bin every step.")
_UNROLL = flags.DEFINE_integer("unroll", 1, "Fit steps per device-loop iteration (with a negative "
                               "--bin_margin only).", lower_bound=1)
_FIGURES = flags.DEFINE_bool(
    "figures", True, "Draw each fit's figure (target, render, error map, Gaussians as ellipses, "
    "PSNR against step and time).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Folder for JAX's persistent compilation cache, so each batch shape "
    "compiles once across batches and runs (default: the cache JAX is already given, e.g. by "
    "JAX_COMPILATION_CACHE_DIR, else <out_dir>/.xla_cache; '' leaves JAX's setting as it is).")


def parse_batch_size(value: str) -> int | str:
  """``"auto"`` or an integer >= 1, else a UsageError."""
  if value == "auto":
    return value
  try:
    size = int(value)
  except ValueError:
    size = 0
  if size < 1:
    raise app.UsageError(f"--batch_size must be an integer >= 1 or 'auto', got {value!r}")
  return size


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _IMAGE.value and _DATASET.value:
    raise app.UsageError("give --image or --dataset, not both")
  batch_size = parse_batch_size(_BATCH_SIZE.value)
  if batch_size != 1 and not _DATASET.value:
    raise app.UsageError("--batch_size applies to --dataset runs only")
  try:
    if multihost.initialize() and batch_size == "auto":
      # Each process would measure its own free memory; every process must run the same batches.
      raise errors.InvalidInputError("a run over several processes needs --batch_size as a number")
    counts = positive_integers(_NUM_GAUSSIANS.value) if _NUM_GAUSSIANS.value else None
    recipe = recipes.resolve(_RECIPE.value, init=_INIT.value, learning_rate=_LEARNING_RATE.value,
                             lr_schedule=_LR_SCHEDULE.value, clip_gradient=_CLIP_GRADIENT.value)
    run_settings = paper_or_cpu_settings(counts, _STEPS.value, recipe=recipe)
    counts, steps, init = run_settings.counts, run_settings.steps, run_settings.init
    print(f"settings: {run_settings.label}; {recipe.describe()}", flush=True)
    check_out_dir(_OUT_DIR.value, "results.json", "summary.json")
    results = ResultsFile(os.path.join(_OUT_DIR.value, "results.json"), FIT_RECORD_FIELDS)
    cache = _COMPILATION_CACHE.value
    if cache is None and not jax.config.jax_compilation_cache_dir:
      cache = os.path.join(_OUT_DIR.value, ".xla_cache")
    if cache:
      jax.config.update("jax_compilation_cache_dir", cache)
    settings = dict(parameterization=_PARAMETERIZATION.value, seed=_SEED.value,
                    backend=_BACKEND.value, learning_rate=run_settings.learning_rate, init=init,
                    lr_schedule=run_settings.lr_schedule, clip_gradient=recipe.clip_gradient,
                    bin_reuse=BinReuse(_BIN_MARGIN.value) if _BIN_MARGIN.value >= 0 else None,
                    unroll=_UNROLL.value, recipe=recipe, channels=int(_CHANNELS.value) or None)
    if _DATASET.value:
      paths = find_images(_DATASET.value)
      fit_dataset_and_record(results, paths, counts, steps, out_dir=_OUT_DIR.value,
                             batch_size=batch_size, figure=_FIGURES.value, **settings)
    else:
      paths = [_IMAGE.value or io.sample_image_path()]
      for path in paths:
        for n in counts:
          fit_and_record(results, path, n, steps, out_dir=_OUT_DIR.value, figure=_FIGURES.value,
                         **settings)
  except errors.GIError as e:
    raise run_failed(e) from None
  if not multihost.is_writer():
    return  # process 0 holds the records and writes the summary
  print_table(results.records)
  speed_only = ("backend", "bin_reuse", "unroll")   # how fast, not what: not in the records' key
  key_settings = {k: v for k, v in settings.items() if k not in speed_only}
  run = [results.find(**record_key(p, n, steps, **key_settings)) for n in counts for p in paths]
  rows = summarize([r for r in run if r is not None])
  print(f"\nsummary of this run ({len(paths)} image{'s' * (len(paths) != 1)}, steps={steps}; "
        "the paper's Table 1 columns):")
  print_summary(rows)
  # A sweep's plot: with one count it would be a lone dot.
  json_path, png_path = write_summary(_OUT_DIR.value, rows, plot=len(counts) > 1)
  print(f"wrote {results.path}, {json_path}" + (f" and {png_path}" if png_path else ""))


if __name__ == "__main__":
  app.run(main)
