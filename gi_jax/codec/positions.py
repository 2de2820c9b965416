"""Position quantizers: float16 (the paper's), or a grid with wide Gaussians on a coarser one.

Positions are ``means_raw`` rounded to float16 (:func:`~gi_jax.codec.ste.half_ste`), or snapped to
the centres of a uniform grid of cells on the normalised position ``(tanh(means_raw) + 1)/2``
(:func:`grid_ste`); with bits-back ordering a grid position costs about ``log2(cells/N) + 1.44``
bits against float16's ~28. With ``wide_sigma > 0`` the Gaussians whose smaller standard deviation
is at least that many pixels (:func:`wide_gaussians`, from their quantized covariance, which the
decoder reads first) sit on the even cells only, a grid twice as coarse: such a Gaussian barely
changes when it moves by a fraction of a pixel, and each of its coordinates then costs a bit less.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gi_jax.codec.ste import straight_through, to_half
from gi_jax.gaussians import CHOLESKY_OFFSET, SCALE_OFFSET

# Grid position codes are 16-bit symbols.
MAX_POSITION_CELLS = 1 << 16
MAX_WIDE_SIGMA = 255 / 8  # a file stores it in eighths of a pixel, in one byte


def check_wide_sigma(wide_sigma, grid: bool, error: type[Exception]) -> None:
  """Raises ``error`` unless ``wide_sigma`` is 0, or a multiple of 1/8 in (0, MAX_WIDE_SIGMA] on a
  position grid."""
  if wide_sigma == 0:
    return
  if isinstance(wide_sigma, bool) or not (
      isinstance(wide_sigma, (int, float, np.integer, np.floating)) and
          0 < wide_sigma <= MAX_WIDE_SIGMA and float(wide_sigma) * 8 == round(wide_sigma * 8)):
    raise error(f"wide_sigma must be 0 or a multiple of 1/8 in (0, {MAX_WIDE_SIGMA}] pixels, got "
                f"{wide_sigma!r}")
  if not grid:
    raise error("wide_sigma > 0 needs grid positions (position_step > 0)")


def wide_gaussians(cov_codes, cov_scale, cov_offset, parameterization: str, wide_sigma: float,
                   xp=jnp):
  """[N] bool: which Gaussians have a smaller standard deviation of at least ``wide_sigma`` pixels.

  Read from the quantized covariance (``code·scale + offset``, the decoder's values), so a
  decoder knows it before the positions. With ``xp=np`` it runs in float64 on the host: the
  file's rule, which encoder and decoder evaluate identically (``jnp``: float32, which can differ
  from it only at the threshold's edge; the encoder then follows the file's rule).
  """
  dtype = xp.float64 if xp is np else xp.float32
  channels = (xp.asarray(cov_codes).astype(dtype) * xp.asarray(cov_scale).astype(dtype) +
              xp.asarray(cov_offset).astype(dtype))
  if parameterization == "rs":
    sigma = xp.minimum(xp.abs(channels[..., 0] + SCALE_OFFSET),
                       xp.abs(channels[..., 1] + SCALE_OFFSET))
    return sigma >= wide_sigma
  # Cholesky: the smaller singular value of L = [[l11, 0], [l21, l22]], from
  # σ² = 2·det² / (tr + sqrt(tr² − 4·det²)) with tr = |L|², det = l11·l22 (no cancellation).
  l11, l21, l22 = (channels[..., i] + CHOLESKY_OFFSET[i] for i in range(3))
  trace = l11 * l11 + l21 * l21 + l22 * l22
  det = l11 * l22
  root = xp.sqrt(xp.maximum(trace * trace - 4 * det * det, 0))
  sigma_sq = 2 * det * det / xp.maximum(trace + root, xp.finfo(dtype).tiny)
  return sigma_sq >= wide_sigma * wide_sigma


def grid_codes(means_raw: jax.Array, cells: tuple[int, int]) -> jax.Array:
  """[..., 2] int32 grid cell of each position (x, y), in ``[0, cells)`` (no gradient).

  The image is split into ``cells`` equal cells per axis, on the normalised position
  ``(tanh(means_raw) + 1)/2`` in (0, 1).
  """
  at, m = _cell_coordinate(means_raw, cells)
  return jnp.clip(jnp.floor(at), 0, m - 1).astype(jnp.int32)


def _cell_coordinate(means_raw: jax.Array, cells: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """``(u·cells, cells)``: the position in cell widths (cell c spans [c, c + 1)) on the normalised
  position ``u = (tanh(means_raw) + 1)/2``, and the cells as an array."""
  m = jnp.asarray(cells, means_raw.dtype)
  return 0.5 * (jnp.tanh(means_raw) + 1.0) * m, m


def grid_means_raw(codes: jax.Array, cells: tuple[int, int]) -> jax.Array:
  """``means_raw`` of each cell's centre (the decoder's formula; never at the image border)."""
  m = jnp.asarray(cells, jnp.float32)
  u = (codes.astype(jnp.float32) + 0.5) / m
  return jnp.arctanh(2.0 * u - 1.0)


def grid_ste(means_raw: jax.Array, cells: tuple[int, int]) -> jax.Array:
  """Positions snapped to their grid cell's centre, with an identity derivative."""
  values = position_symbols(jax.lax.stop_gradient(means_raw), cells)[1]
  return straight_through(means_raw, values)


def even_grid_codes(means_raw: jax.Array, cells: tuple[int, int]) -> jax.Array:
  """Like :func:`grid_codes`, but the nearest even cell (a grid twice as coarse)."""
  at, m = _cell_coordinate(means_raw, cells)
  even = 2.0 * jnp.round((at - 0.5) / 2.0)  # cell c's centre sits at u·m − 0.5 = c
  return jnp.clip(even, 0, 2.0 * jnp.floor((m - 1) / 2.0)).astype(jnp.int32)


def position_symbols(means_raw: jax.Array, cells: tuple[int, int] | None,
                     wide: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(codes, values)``: the [..., 2] uint16 position symbols (float16 bit patterns, or with
  ``cells`` grid cells) and the ``means_raw`` the decoder reads from them (no gradient).

  ``wide`` ([...] bool, grid positions only): these Gaussians take the nearest even cell.
  """
  if cells is None:
    values = to_half(means_raw)
    return jax.lax.bitcast_convert_type(values.astype(jnp.float16), jnp.uint16), values
  codes = grid_codes(means_raw, cells)
  if wide is not None:
    codes = jnp.where(wide[..., None], even_grid_codes(means_raw, cells), codes)
  return codes.astype(jnp.uint16), grid_means_raw(codes, cells).astype(means_raw.dtype)
