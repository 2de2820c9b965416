"""First check on a GPU: the compiled Pallas kernels against the reference at Kodak size.

Renders the paper's random initialisation of the bundled sample (768×512) with N Gaussians by both
backends and compares the image and the gradient of the MSE; and checks the Pallas backend's tile
lists kernel against the packed lists (same pairs, same bits rendered and differentiated). Prints
one line per check; exits 1 when the Pallas backend fails or disagrees, so scripts/gpu_plan.sh's
log says so first.

Two compiled programs do not agree to the 1e-5 of the kernel tests at this size, and need not:
- positions come through tanh at a 768-pixel scale, where float32 resolves about 6e-5 pixels, so
  two compilations that round the projection differently (our reading of the H200 run: 3.1% of
  pixels past 1e-5 at N = 5,000; not isolated further) differ by 1e-5 to 1e-4 at a few % of
  pixels (the float32 pipeline against a float64 one on the CPU: 2.2%, none past 1e-4);
- a Gaussian whose α at some pixel lies within that rounding of the 1/255 cut is kept by one and
  skipped by the other: that pixel differs by α·colour, under 1/255 (on the CPU against float64:
  2 pixels, 3.79e-3 at worst; on an H200, Pallas against the reference: the same 3.79e-3).
A broken kernel is off by far more, at many pixels: that is what this check catches.

  PYTHONPATH=. python3 scripts/gpu_smoke.py 5000 70000
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

import gi_jax
from gi_jax import io
from gi_jax.fitting import mse_loss
from gi_jax.raster_reference import ALPHA_MIN

WIDTH, HEIGHT = 768, 512
ROUNDING_TOL = 1e-4           # per pixel, position rounding (see above)
FLIPPED_SHARE = 1e-4          # pixels allowed past ROUNDING_TOL: α-cut flips,
FLIP_TOL = 2 * ALPHA_MIN      # each by at most this
GRAD_TOL = 2e-2               # relative, per parameter group, flips included


def relative(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


def check(num: int, target: jax.Array) -> bool:
  gaussians = gi_jax.init_gaussians(jax.random.key(num), num, HEIGHT, WIDTH)

  def loss(g, backend):
    image = gi_jax.render(g, HEIGHT, WIDTH, backend=backend)
    return mse_loss(image, target), image

  step = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (loss_r, image_r), grads_r = step(gaussians, "reference")
  (loss_p, image_p), grads_p = step(gaussians, "pallas")
  diff = jnp.max(jnp.abs(image_p - image_r), axis=-1)
  worst, flipped = float(jnp.max(diff)), float(jnp.mean(diff > ROUNDING_TOL))
  grad = max(relative(p, r) for p, r in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_r)))
  ok = (worst <= FLIP_TOL and flipped <= FLIPPED_SHARE and grad <= GRAD_TOL
        and bool(jnp.isfinite(loss_p)))
  print(f"N={num}: image max |pallas - reference| {worst:.2e}; pixels past {ROUNDING_TOL:g}: "
        f"{flipped:.1e}, past 1e-5: {float(jnp.mean(diff > 1e-5)):.1e}; gradients relative "
        f"{grad:.2e}; loss {float(loss_p):.7f} vs {float(loss_r):.7f}: "
        f"{'ok' if ok else 'MISMATCH'}", flush=True)
  return ok


def check_lists(num: int) -> bool:
  """The Pallas tile lists' kernel against binning.tile_lists: the same pairs per tile, and the
  same bits rendered, and differentiated, from either by the compiled rasterizer."""
  import dataclasses

  import numpy as np

  from gi_jax import binning
  from gi_jax.pallas import rasterize_for_backend, tile_lists_for_backend

  gaussians = gi_jax.init_gaussians(jax.random.key(num), num, HEIGHT, WIDTH)
  binned = gi_jax.bin_gaussians(gaussians, HEIGHT, WIDTH, margin=4.0)
  moved = dataclasses.replace(gaussians, means_raw=gaussians.means_raw + 1e-3)
  proj = binning.project(moved, binning.TileGrid(HEIGHT, WIDTH))
  packed = binning.tile_lists(binned, proj)
  segmented = jax.jit(tile_lists_for_backend)(binned, proj)

  def per_tile(bins):
    starts, ends, ids = (np.asarray(a) for a in (bins.tile_starts, bins.ends, bins.gaussian_ids))
    return [ids[a:b].tolist() for a, b in zip(starts, ends)]
  # The backward reads each Gaussian's slots, which the lists' kernel writes: compare gradients.
  cotangent = jnp.asarray(np.random.default_rng(num).normal(size=(HEIGHT, WIDTH, 3)), jnp.float32)

  @jax.jit
  def image_and_grads(bins):
    image, pullback = jax.vjp(
        lambda m, k, c: rasterize_for_backend(m, k, c, bins, HEIGHT, WIDTH),
        proj.means, proj.conics, proj.colors)
    return image, pullback(cotangent)
  same_lists = per_tile(packed) == per_tile(segmented)
  same_bits = all(bool(jnp.all(a == b)) for a, b in zip(
      jax.tree.leaves(image_and_grads(packed)), jax.tree.leaves(image_and_grads(segmented))))
  ok = same_lists and same_bits and int(packed.count) == int(segmented.count)
  print(f"N={num}: Pallas tile lists vs packed: lists {'equal' if same_lists else 'DIFFER'}, "
        f"images and gradients {'the same bits' if same_bits else 'DIFFER'}: "
        f"{'ok' if ok else 'MISMATCH'}", flush=True)
  return ok


def main(counts: list[int]) -> int:
  print(f"devices: {jax.devices()}", flush=True)
  image = io.load_image(io.sample_image_path())
  target = jax.image.resize(jnp.asarray(image, jnp.float32), (HEIGHT, WIDTH, 3), "linear")
  ok = True
  for num in counts:
    for name, run in (("pallas", lambda: check(num, target)), ("lists", lambda: check_lists(num))):
      try:
        ok &= run()
      except Exception as e:  # noqa: BLE001 -- report any failure of the kernels, then go on
        print(f"N={num}: {name} failed: {type(e).__name__}: {str(e)[:2000]}", flush=True)
        ok = False
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main([int(a) for a in sys.argv[1:]] or [5000]))
