"""Fit quality beyond the paper: random initialisation vs content-adaptive fitting (#7), and
named recipes at equal wall time (#55).

For each image and Gaussian count, fits with the paper's random initialisation ("random") and with
gradient initialisation plus error-guided densification ("adaptive"); "gradient" (initialisation
alone), "gradient_cosine" (gradient initialisation with Adan at 0.03 on a cosine: the CPU settings
that came before the best recipe) and "alpha" (random initialisation rendered by α-blending: the
paper's ablation) are available too. ``--recipes=paper,best`` compares named recipes
(gi_jax/recipes.py) instead, each a fit of its own (``mode`` is the recipe's name; given alone, it
replaces the default modes). Records PSNR, MS-SSIM, fit time, how many steps and seconds each
other fit took to reach the baseline's final PSNR (the "random" fit's, else the "paper" recipe's),
and each fit's training PSNR at the time the fastest fit of its image and count finished ("PSNR at
equal time"); all from the fit histories, which hold the training PSNR and fit seconds every
``--steps_per_call`` steps.

Usage (from the repo root):
  python experiments/quality.py                                   # bundled sample, CPU settings
  python experiments/quality.py --dataset=../shared/data/kodak --steps=50000   # the paper's scale
  # CPU: centre crops, Gaussian counts scaled by area (same Gaussians per pixel as on 768×512):
  python experiments/quality.py --dataset=../shared/data/kodak --max_images=3 --crop=128 \\
      --num_gaussians=10000,70000 --scale_by_area --steps=1000
  # the recipes at equal wall time (PSNR against fit seconds in quality.png and the summary):
  python experiments/quality.py --dataset=../shared/data/kodak --crop=256 --scale_by_area \\
      --num_gaussians=10000 --steps=2000 --recipes=paper,best

Writes ``<out_dir>/quality.json`` (one record per image, count and mode, resumable: records already
there are skipped), prints a table of means over images, and draws ``<out_dir>/quality.png`` (PSNR
against N, mean PSNR against step, and mean PSNR against fit seconds; ``quality_summary.json``
holds the table's rows, the records and those curves). With experiments/multihost.py's flags the
run spans processes, the same command in each; process 0 writes.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags
import jax
import numpy as np

from gi_jax import errors, io, recipes
from gi_jax.densify import DensifySchedule
from gi_jax.fitting import fit
from gi_jax.storage import atomic_path
import multihost
from harness import (LIST, NUMBER, OPTIONAL_NUMBER, STRING, ResultsFile, centre_crop, check_out_dir,
                     format_table, image_metrics, positive_integers, pyplot, report_other_code,
                     run_failed, save_figure, scaled_count, select_images)

MODES = ("random", "gradient", "gradient_cosine", "adaptive", "alpha")
# What a record of quality.json must hold: what the summary and the figure read.
RECORD_FIELDS = dict(mode=STRING, psnr=NUMBER, ms_ssim=OPTIONAL_NUMBER, fit_seconds=NUMBER,
                     final_train_psnr=NUMBER, history=LIST)

_DATASET = flags.DEFINE_string("dataset", None, "Folder of images (default: the bundled sample).")
_IMAGES = flags.DEFINE_list("images", None, "Use only these file names from --dataset.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", None, "Use only the first N images (by name).",
                                    lower_bound=1)
_CROP = flags.DEFINE_integer("crop", 0, "Fit a centred crop of this many pixels square (0: whole).",
                              lower_bound=0)
_NUM_GAUSSIANS = flags.DEFINE_list("num_gaussians", ["1000", "5000", "10000", "30000", "70000"],
                                   "Gaussian counts (nominal, for 768×512 with --scale_by_area).")
_SCALE_BY_AREA = flags.DEFINE_bool(
    "scale_by_area", False, "Scale each count by (image pixels)/(768·512), for crops.")
_STEPS = flags.DEFINE_integer("steps", None, "Steps per fit (default: 50000 on GPU, else 1000).")
_STEPS_FOR = flags.DEFINE_list(
    "steps_for", [], "Other step counts for some modes or recipes, as mode:steps (e.g. "
    "paper:5000: the best recipe's --steps judged against 5,000 of the paper's, at equal time).")
_MODES = flags.DEFINE_list("modes", ["random", "adaptive"], f"Fits to compare, from {MODES}.")
_RECIPES = flags.DEFINE_list(
    "recipes", [], f"Named recipes to compare too, from {sorted(recipes.RECIPES)} (without "
    "--modes, instead of the default modes).")
_STEPS_PER_CALL = flags.DEFINE_integer(
    "steps_per_call", None, "History interval: steps per device call (default: steps/50).",
    lower_bound=1)
_DENSIFY_EVERY = flags.DEFINE_integer("densify_every", None,
                                      "Steps between densification events (default: steps/50).",
                                      lower_bound=1)
_DENSIFY_STOP = flags.DEFINE_float("densify_stop", 0.5, "No densification after this fraction.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed.")
_BACKEND = flags.DEFINE_string("backend", "auto", "Renderer: auto, reference or pallas.")
_OUT_DIR = flags.DEFINE_string("out_dir", "results/quality", "Where to write results.")


def fit_options(mode: str, steps: int) -> dict:
  """``fit`` keyword arguments of a mode (or of a named recipe)."""
  if mode in recipes.RECIPES:
    return dict(recipe=mode)
  if mode == "random":
    return dict(init="random")
  if mode == "gradient":
    return dict(init="gradient")
  if mode == "gradient_cosine":
    return dict(init="gradient", learning_rate=3e-2, lr_schedule="cosine")
  if mode == "alpha":
    return dict(init="random", blend="alpha")
  every = _DENSIFY_EVERY.value or max(1, steps // 50)
  return dict(init="gradient", densify=DensifySchedule(every=every, start=every,
                                                       stop_fraction=_DENSIFY_STOP.value))


def reach(history: list[dict], psnr: float) -> tuple[int | None, float | None]:
  """Steps and seconds at the first history record with PSNR >= ``psnr`` (None if never)."""
  for record in history:
    if record["psnr"] >= psnr:
      return record["step"], record["seconds"]
  return None, None


def run_one(target: np.ndarray, num_gaussians: int, steps: int, mode: str) -> dict:
  steps_per_call = _STEPS_PER_CALL.value or max(1, steps // 50)
  result = fit(target, num_gaussians, steps, seed=_SEED.value, backend=_BACKEND.value,
               steps_per_call=steps_per_call, progress=False, **fit_options(mode, steps))
  rendered = np.asarray(result.render(_BACKEND.value))
  return dict(image_metrics(rendered, target), fit_seconds=result.fit_seconds,
              compile_seconds=result.compile_seconds, final_train_psnr=result.history[-1]["psnr"],
              history=[dict(step=r["step"], psnr=r["psnr"], seconds=r["seconds"])
                       for r in result.history])


def baseline_of(modes: list[str]) -> str | None:
  """The fit the others are timed against: "random" (the paper's init), else the paper's recipe."""
  return next((m for m in ("random", "paper") if m in modes), None)


def add_reach(records: list[dict], baseline: str | None = "random") -> None:
  """Adds ``reach_*`` to each record but the baseline's: when it reached its baseline twin's final
  PSNR (``random_fit_seconds``: the twin's fit time)."""
  if baseline is None:
    return
  for record in records:
    if record["mode"] == baseline:
      continue
    twin = next((r for r in records if r["mode"] == baseline and all(
        r[k] == record[k] for k in ("image", "crop", "num_gaussians", "seed"))), None)
    if twin is None:
      continue
    step, seconds = reach(record["history"], twin["final_train_psnr"])
    record.update(reach_steps=step, reach_seconds=seconds,
                  reach_fraction=None if step is None else step / record["steps"],
                  random_fit_seconds=twin["fit_seconds"])


def psnr_at(history: list[dict], seconds: float) -> float | None:
  """Training PSNR of the last history record at or before ``seconds`` of fit time."""
  done = [r["psnr"] for r in history if r["seconds"] <= seconds]
  return done[-1] if done else None


def add_equal_time(records: list[dict]) -> None:
  """Adds ``common_seconds`` (the shortest fit time among the fits of the record's image, count
  and seed) and ``psnr_at_common_seconds`` (its training PSNR then) to each record: every fit
  judged at the same wall time."""
  twins = lambda a, b: all(a[k] == b[k] for k in ("image", "crop", "num_gaussians", "seed"))
  for record in records:
    common = min(r["fit_seconds"] for r in records if twins(r, record))
    record.update(common_seconds=common, psnr_at_common_seconds=psnr_at(record["history"], common))


def _mean(values):
  """Mean of the values that are not None (e.g. over the images that reached a PSNR)."""
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def mode_order(mode: str) -> int:
  """Where a mode (or recipe) sorts in tables and legends."""
  order = list(MODES) + sorted(recipes.RECIPES)
  return order.index(mode) if mode in order else len(order)


def summarize(records: list[dict], baseline: str | None = "random") -> list[dict]:
  """Means over images per (nominal count, mode)."""
  rows = []
  keys = sorted({(r["nominal_gaussians"], r["num_gaussians"], r["mode"]) for r in records},
                key=lambda k: (k[0], mode_order(k[2])))
  for nominal, n, mode in keys:
    group = [r for r in records if (r["nominal_gaussians"], r["num_gaussians"], r["mode"]) ==
             (nominal, n, mode)]
    reached = [r for r in group if r.get("reach_steps") is not None]
    rows.append(dict(
        nominal_gaussians=nominal, num_gaussians=n, mode=mode, images=len(group),
        psnr=_mean(r["psnr"] for r in group), ms_ssim=_mean(r["ms_ssim"] for r in group),
        fit_seconds=_mean(r["fit_seconds"] for r in group),
        common_seconds=_mean(r.get("common_seconds") for r in group),
        psnr_at_common_seconds=_mean(r.get("psnr_at_common_seconds") for r in group),
        reach_fraction=_mean(r.get("reach_fraction") for r in group),
        reach_seconds=_mean(r.get("reach_seconds") for r in group),
        reached=f"{len(reached)}/{len(group)}" if baseline and mode != baseline else None))
  return rows


def columns(baseline: str | None = "random") -> list[tuple[str, str, str]]:
  """The summary table's columns (the reach columns name the baseline; none without one)."""
  shared = [("nominal_gaussians", "N (768×512)", "{}"), ("num_gaussians", "N", "{}"),
            ("mode", "mode", "{}"), ("images", "images", "{}"), ("psnr", "PSNR", "{:.2f}"),
            ("ms_ssim", "MS-SSIM", "{:.4f}"), ("fit_seconds", "fit s", "{:.1f}"),
            ("psnr_at_common_seconds", "train PSNR at equal time", "{:.2f}"),
            ("common_seconds", "equal time s", "{:.1f}")]
  if baseline is None:
    return shared
  return shared + [("reach_fraction", f"steps to {baseline}'s PSNR", "{:.1%}"),
                   ("reach_seconds", f"s to {baseline}'s PSNR", "{:.1f}"),
                   ("reached", "reached", "{}")]


def curves(records: list[dict]) -> list[dict]:
  """Mean training PSNR against mean fit seconds per (nominal count, mode), over the history
  records every image of the group has."""
  out = []
  groups = sorted({(r["nominal_gaussians"], r["mode"]) for r in records},
                  key=lambda k: (k[0], mode_order(k[1])))
  for nominal, mode in groups:
    group = [r for r in records if (r["nominal_gaussians"], r["mode"]) == (nominal, mode)]
    length = min(len(r["history"]) for r in group)
    mean = lambda field, i: float(np.mean([r["history"][i][field] for r in group]))
    out.append(dict(nominal_gaussians=nominal, mode=mode, images=len(group),
                    step=[group[0]["history"][i]["step"] for i in range(length)],
                    seconds=[mean("seconds", i) for i in range(length)],
                    psnr=[mean("psnr", i) for i in range(length)]))
  return out


def plot(path: str, records: list[dict], rows: list[dict], title: str) -> None:
  """PSNR against N per mode, and mean training PSNR against step and against fit seconds per
  (N, mode)."""
  plt = pyplot()
  figure, (left, right, timed) = plt.subplots(1, 3, figsize=(16, 4.2))
  modes = sorted({r["mode"] for r in records}, key=mode_order)
  for mode in modes:
    mine = [r for r in rows if r["mode"] == mode]
    if mine:
      left.plot([r["nominal_gaussians"] for r in mine], [r["psnr"] for r in mine], "o-",
                label=mode)
  left.set_xscale("log")
  left.set_xlabel("Gaussians (nominal, 768×512)")
  left.set_ylabel("PSNR (dB), mean over images")
  styles = {"random": "--", "gradient": ":", "gradient_cosine": ":", "adaptive": "-",
            "alpha": "-.", "paper": "--", "best": "-"}
  nominals = sorted({r["nominal_gaussians"] for r in records})
  for curve in curves(records):
    index = nominals.index(curve["nominal_gaussians"])
    timed.plot(curve["seconds"], curve["psnr"], styles.get(curve["mode"], "-"),
               color=f"C{index % 10}", label=f"N={curve['nominal_gaussians']} {curve['mode']}")
  timed.set_xlabel("fit seconds (mean over images)")
  timed.set_ylabel("training PSNR (dB), mean over images")
  for index, nominal in enumerate(nominals):
    for mode in modes:
      group = [r for r in records if r["nominal_gaussians"] == nominal and r["mode"] == mode]
      if not group:
        continue
      length = min(len(r["history"]) for r in group)
      steps = [group[0]["history"][i]["step"] for i in range(length)]
      psnr = [np.mean([r["history"][i]["psnr"] for r in group]) for i in range(length)]
      right.plot(steps, psnr, styles.get(mode, "-"), color=f"C{index % 10}",
                 label=f"N={nominal} {mode}")
  right.set_xlabel("step")
  right.set_ylabel("training PSNR (dB), mean over images")
  for axis in (left, right, timed):
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
  figure.suptitle(title, fontsize=10)
  figure.tight_layout()
  save_figure(figure, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for mode in _MODES.value:
    if mode not in MODES:
      raise app.UsageError(f"--modes must be from {MODES}, got {mode!r}")
  for name in _RECIPES.value:
    if name not in recipes.RECIPES:
      raise app.UsageError(f"--recipes must be from {sorted(recipes.RECIPES)}, got {name!r}")
  modes = ([] if _RECIPES.value and not flags.FLAGS["modes"].present else list(_MODES.value))
  modes += [name for name in _RECIPES.value if name not in modes]
  if not modes:
    raise app.UsageError("nothing to compare: give --modes or --recipes")
  try:
    counts = positive_integers(_NUM_GAUSSIANS.value)
    paths = select_images(_DATASET.value, _IMAGES.value, _MAX_IMAGES.value)
  except errors.GIError as e:
    raise app.UsageError(str(e))
  try:
    multihost.initialize()  # before anything asks JAX for its devices
  except errors.GIError as e:
    raise run_failed(e) from None
  on_gpu = jax.default_backend() == "gpu"
  steps = _STEPS.value if _STEPS.value is not None else (50_000 if on_gpu else 1_000)
  if steps < 1:
    raise app.UsageError("--steps must be >= 1")
  steps_of = {mode: steps for mode in modes}
  for item in _STEPS_FOR.value:
    mode, _, count = item.partition(":")
    if mode not in modes or not count.isdigit() or int(count) < 1:
      raise app.UsageError(f"--steps_for takes mode:steps (steps >= 1) for a mode of this run "
                           f"({modes}), got {item!r}")
    steps_of[mode] = int(count)
  device = str(jax.devices()[0].device_kind)
  print(f"{len(paths)} image(s), crop {_CROP.value or 'none'}, steps {steps_of}, "
        f"device {device}", flush=True)

  run_keys = []
  try:
    check_out_dir(_OUT_DIR.value, "quality.json", "quality_summary.json")
    results = ResultsFile(os.path.join(_OUT_DIR.value, "quality.json"), RECORD_FIELDS)
    for path in paths:
      target = centre_crop(io.load_image(path), _CROP.value)
      height, width = target.shape[:2]
      for nominal in counts:
        n = scaled_count(nominal, height, width, _SCALE_BY_AREA.value)
        for mode in modes:
          key = dict(image=os.path.basename(path), crop=_CROP.value, height=height, width=width,
                     nominal_gaussians=nominal, num_gaussians=n, steps=steps_of[mode], mode=mode,
                     seed=_SEED.value)
          if mode in recipes.RECIPES:
            # What the recipe was when it ran: a record of an older "best" is not today's.
            key["recipe"] = recipes.named(mode).describe()
          run_keys.append(key)
          if results.find(**key) is not None:
            continue
          t0 = time.perf_counter()
          record = dict(key, **run_one(target, n, steps_of[mode], mode), device=device,
                        backend=_BACKEND.value)
          print(f"{key['image']} {width}×{height} N={n} {mode}: PSNR {record['psnr']:.2f} dB, "
                f"fit {record['fit_seconds']:.1f} s (wall {time.perf_counter() - t0:.1f} s)",
                flush=True)
          if multihost.is_writer():
            results.add(record)
  except errors.GIError as e:
    raise run_failed(e) from None
  if not multihost.is_writer():
    return  # every process fitted each image; process 0 holds the records and writes

  records = [results.find(**key) for key in run_keys]
  report_other_code(records)
  baseline = baseline_of(modes)
  add_reach(records, baseline)
  add_equal_time(records)
  rows = summarize(records, baseline)
  print()
  print(format_table(rows, columns(baseline)))
  summary_path = os.path.join(_OUT_DIR.value, "quality_summary.json")
  with atomic_path(summary_path) as tmp:
    with open(tmp, "w") as f:
      json.dump({"rows": rows, "curves": curves(records), "records": records}, f, indent=1)
  counted = ", ".join(f"{mode} {count}" for mode, count in steps_of.items())
  title = (f"{len(paths)} image(s), crop {_CROP.value or 'none'}, steps: {counted}, "
           f"{'counts scaled by area, ' if _SCALE_BY_AREA.value else ''}{device}")
  plot(os.path.join(_OUT_DIR.value, "quality.png"), records, rows, title)
  print(f"\nwrote {results.path}, {summary_path} and quality.png in {_OUT_DIR.value}")


if __name__ == "__main__":
  app.run(main)
