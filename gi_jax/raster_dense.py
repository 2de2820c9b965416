"""Dense O(pixels × Gaussians) rasterizer: the test oracle.

It evaluates every Gaussian at every pixel and keeps a contribution where α >= 1/255 and the
pixel's tile is in the Gaussian's box (which holds its whole α >= 1/255 ellipse, so the box only
excludes Gaussians with ``det Σ <= 0``), so it defines the exact image every tiled backend must
produce, with plain autodiff for the exact gradient. Use it on small images only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gi_jax.binning import TILE, Projection
from gi_jax.raster_reference import gaussian_alpha


def rasterize_dense(projection: Projection, height: int, width: int,
                    pixel_chunk: int = 4096) -> jax.Array:
  """[H, W, 3] unclipped sum over all Gaussians, differentiable by ordinary autodiff.

  Args:
    projection: from :func:`gi_jax.binning.project`.
    height: image height.
    width: image width.
    pixel_chunk: pixels evaluated at once (bounds memory to pixel_chunk × N).
  """
  ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  px = xs.reshape(-1)
  py = ys.reshape(-1)
  num_pixels = px.shape[0]
  padded = -(-num_pixels // pixel_chunk) * pixel_chunk
  px = jnp.pad(px, (0, padded - num_pixels)).reshape(-1, pixel_chunk)
  py = jnp.pad(py, (0, padded - num_pixels)).reshape(-1, pixel_chunk)
  dtype = projection.means.dtype

  def chunk(args):
    cx, cy = args
    tx, ty = (cx // TILE)[:, None], (cy // TILE)[:, None]
    inside = ((tx >= projection.tile_min[None, :, 0]) & (tx < projection.tile_max[None, :, 0]) &
              (ty >= projection.tile_min[None, :, 1]) & (ty < projection.tile_max[None, :, 1]))
    alpha, _, _ = gaussian_alpha(projection.means[None], projection.conics[None],
                                 cx.astype(dtype)[:, None], cy.astype(dtype)[:, None])
    alpha = jnp.where(inside, alpha, 0.0)
    return alpha @ projection.colors

  out = jax.lax.map(chunk, (px, py)).reshape(padded, -1)[:num_pixels]
  return out.reshape(height, width, -1)
