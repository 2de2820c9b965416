"""Figures of the experiments (matplotlib, gi_jax's ``plots`` extra; not in the package).

:func:`fit_figure` is the picture a fit ends with: the target, the render, the error map and the
Gaussians drawn as ellipses, side by side, with PSNR against step and against fit time.
"""

from __future__ import annotations

import numpy as np

from gi_jax.gaussians import Gaussians
from gi_jax.interchange import ply_fields
from gi_jax.storage import atomic_path

# More ellipses than this turn into a smear at figure size: draw a random subset, said in the title.
MAX_ELLIPSES = 3000


def pyplot():
  """matplotlib's ``pyplot``, drawing into files (the Agg backend).

  Imported here, on first use: matplotlib is the ``plots`` extra, needed only by runs that draw a
  figure, and it is slow to import.

  Returns:
    The ``matplotlib.pyplot`` module.

  Raises:
    ImportError: matplotlib is not installed; the message says how to install it.
  """
  try:
    import matplotlib
  except ImportError:
    raise ImportError("the figures need matplotlib, gi_jax's 'plots' extra: pip install -e "
                      "'.[plots]' (scripts/setup.sh installs it)") from None
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  return plt


def save_figure(figure, path: str, dpi: int = 100) -> None:
  """Writes ``figure`` to ``path`` as PNG atomically, and closes it (it holds memory until then)."""
  with atomic_path(path) as tmp:
    figure.savefig(tmp, format="png", dpi=dpi)
  pyplot().close(figure)


def shown(image: np.ndarray) -> tuple[np.ndarray, dict, str]:
  """What ``imshow`` draws of an image [H, W, C] in [0, 1], its ``imshow`` arguments and a note for
  the title: 1 or 2 channels (grey, grey + alpha) as grey, 3 as RGB, more by their first three."""
  channels = image.shape[-1]
  if channels < 3:
    return (image[..., 0], dict(cmap="gray", vmin=0, vmax=1),
            "" if channels == 1 else ", channel 0 of 2")
  return image[..., :3], {}, "" if channels == 3 else f", channels 0–2 of {channels}"


def fit_figure(path: str, target: np.ndarray, rendered: np.ndarray, gaussians: Gaussians,
               history: list[dict], title: str, max_ellipses: int = MAX_ELLIPSES,
               seed: int = 0) -> None:
  """Writes one PNG: target, render, error map, ellipses; PSNR against step and against time.

  Args:
    path: the PNG to write (atomically).
    target: [H, W, C] the image fitted, in [0, 1] (any C: see :func:`shown`).
    rendered: [H, W, C] the fit's render, in [0, 1].
    gaussians: the fitted set (one image's).
    history: the fit's history records (``step``, ``psnr``, ``seconds``; see
      :class:`gi_jax.FitResult`); empty draws empty curves.
    title: the figure's title (image, N, steps).
    max_ellipses: draw at most this many Gaussians (a random subset beyond, said in the panel's
      title).
    seed: of that subset.
  """
  plt = pyplot()
  from matplotlib.collections import EllipseCollection
  height, width = target.shape[:2]
  target = np.clip(np.asarray(target, np.float32), 0, 1)
  rendered = np.clip(np.asarray(rendered, np.float32), 0, 1)
  error = np.abs(rendered - target).mean(axis=-1)
  mse = float(np.mean((rendered - target) ** 2))
  psnr = 10 * np.log10(1 / mse) if mse > 0 else float("inf")

  figure, axes = plt.subplots(2, 3, figsize=(13, 8))
  (a_target, a_render, a_error), (a_ellipses, a_step, a_time) = axes
  picture, drawing, note = shown(target)
  a_target.imshow(picture, **drawing)
  a_target.set_title(f"target {width}×{height}{note}")
  a_render.imshow(shown(rendered)[0], **drawing)
  a_render.set_title(f"render, PSNR {psnr:.2f} dB")
  error_map = a_error.imshow(error, cmap="inferno")
  a_error.set_title(f"|render − target|, mean over {target.shape[-1]} channels")
  figure.colorbar(error_map, ax=a_error, fraction=0.046, pad=0.04)

  columns = ply_fields(gaussians, height, width)
  n = gaussians.num_gaussians
  picked = np.arange(n)
  if n > max_ellipses:
    picked = np.sort(np.random.default_rng(seed).choice(n, max_ellipses, replace=False))
  # Grey sets fill red, green and blue with their grey (interchange.ply_fields).
  colors = np.stack([columns[c][picked] for c in ("red", "green", "blue")], 1)
  # A Gaussian's colour is its share of a sum, often far below 1 (a dark smear if drawn as is):
  # each is drawn at full brightness, keeping its hue.
  colors = np.clip(colors, 0, None)
  colors = colors / np.maximum(colors.max(axis=1, keepdims=True), 1e-6)
  # 1σ ellipses: widths and heights are diameters along the principal axes.
  ellipses = EllipseCollection(
      2 * columns["scale_0"][picked], 2 * columns["scale_1"][picked],
      np.degrees(columns["rot"][picked]), units="xy",
      offsets=np.stack([columns["x"][picked], columns["y"][picked]], 1),
      offset_transform=a_ellipses.transData, facecolors=colors, edgecolors="none", alpha=0.6)
  a_ellipses.add_collection(ellipses)
  a_ellipses.set_facecolor("black")
  a_ellipses.set_xlim(0, width)
  a_ellipses.set_ylim(height, 0)
  subset = f"\n{len(picked):,} of {n:,} drawn (random subset)" if len(picked) < n else ""
  a_ellipses.set_title(f"Gaussians: 1σ ellipses, colours at full brightness{subset}", fontsize=9)
  for axis in (a_target, a_render, a_error, a_ellipses):
    axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])

  steps = [r["step"] for r in history]
  curve = [r["psnr"] for r in history]
  seconds = [r["seconds"] for r in history]
  a_step.plot(steps, curve, "o-", markersize=3)
  a_step.set_xlabel("step")
  a_time.plot(seconds, curve, "o-", markersize=3)
  a_time.set_xlabel("fit time (s, compile excluded)")
  for axis in (a_step, a_time):
    axis.set_ylabel("training PSNR (dB)")
    axis.grid(True, alpha=0.3)
  figure.suptitle(title)
  figure.tight_layout()
  save_figure(figure, path, dpi=80)
