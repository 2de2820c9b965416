"""Fit Gaussians to one image or a folder of images and write renders, Gaussians and metrics.

Usage (from the repo root):
  python experiments/fit.py                                   # the bundled sample, defaults
  python experiments/fit.py --image=photo.png --num_gaussians=20000 --steps=5000
  python experiments/fit.py --dataset=../shared/data/kodak --num_gaussians=10000,70000

Defaults are the paper's settings (70,000 Gaussians, 50,000 steps) on a GPU and quick CPU settings
(10,000 Gaussians, 1,000 steps) elsewhere; the run prints which. Per image and Gaussian count it
writes ``<name>_n<N>.png`` (the render, 8-bit), ``<name>_n<N>.npz`` (the Gaussians) and a record in
``results.json``; files are written atomically, and a re-run skips records already there.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from gi_jax import errors  # noqa: E402
from gi_jax.experiment import fit_and_record, find_images, paper_or_cpu_settings  # noqa: E402
from gi_jax.experiment import print_table, ResultsFile, sample_image_path  # noqa: E402

_IMAGE = flags.DEFINE_string("image", None, "Image to fit (default: the bundled sample).")
_DATASET = flags.DEFINE_string("dataset", None, "Folder of images to fit, each on its own.")
_NUM_GAUSSIANS = flags.DEFINE_list(
    "num_gaussians", None, "Gaussian count(s), comma-separated (default: 70000 on GPU, else 10000).")
_STEPS = flags.DEFINE_integer("steps", None, "Optimisation steps (default: 50000 on GPU, else 1000).")
_PARAMETERIZATION = flags.DEFINE_enum("parameterization", "cholesky", ["cholesky", "rs"],
                                      "Covariance parameterisation.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed.")
_BACKEND = flags.DEFINE_string("backend", "auto", "Renderer: auto, reference or pallas.")
_OUT_DIR = flags.DEFINE_string("out_dir", "results/fit", "Where to write results.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Base learning rate (Adan).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _IMAGE.value and _DATASET.value:
    raise app.UsageError("give --image or --dataset, not both")
  try:
    counts = [int(n) for n in _NUM_GAUSSIANS.value] if _NUM_GAUSSIANS.value else None
  except ValueError:
    raise app.UsageError(f"--num_gaussians must be integers, got {_NUM_GAUSSIANS.value}")
  try:
    counts, steps, label = paper_or_cpu_settings(counts, _STEPS.value)
    print(f"settings: {label}", flush=True)
    if _DATASET.value:
      paths = find_images(_DATASET.value)
    else:
      paths = [_IMAGE.value or sample_image_path()]
    results = ResultsFile(os.path.join(_OUT_DIR.value, "results.json"))
    for path in paths:
      for n in counts:
        fit_and_record(results, path, n, steps, out_dir=_OUT_DIR.value,
                       parameterization=_PARAMETERIZATION.value, seed=_SEED.value,
                       backend=_BACKEND.value, learning_rate=_LEARNING_RATE.value)
  except errors.GIError as e:
    raise app.UsageError(str(e))
  print_table(results.records)
  print(f"wrote {results.path}")


if __name__ == "__main__":
  app.run(main)
