"""The decoder's render of quantized symbols, shared by fine-tuning, refinement and the decoder.

:func:`render_quantized` is the image :func:`~gi_jax.codec.decode` gives for a set's file, bit
for bit: fine-tuning (:mod:`~gi_jax.codec.qat`) keeps its best step by it, refinement
(:mod:`~gi_jax.codec.refine`) scores its moves by it (:func:`quantized_mse`), and the decoder
(:mod:`~gi_jax.codec.decoder`) renders files with it. It lives here, below all three, so each
imports it without a cycle.

Everything runs in jitted calls: the symbols are dequantized and checked (finite values, an
intersection count within :data:`~gi_jax.codec.format.MAX_INTERSECTIONS`) in one call, the host
reads back one flag and two counts per set to size the render, and a second call renders.

Large images render band by band: a band of tile rows is binned and rasterized at a time into the
output, so the render holds the image, the Gaussians and one band's intersections and pixels,
never all of the image's intersections at once (a small file may claim a huge image). Each tile
lists the same Gaussians in the same order as in a render of the whole image, and its pixels are
computed in that image's coordinates, so the bands give the same image to the bit.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gi_jax import binning, memory
from gi_jax.codec.format import MAX_INTERSECTIONS, canonicalize
from gi_jax.codec.quantize import QuantizedGaussians
from gi_jax.errors import CodecError, InvalidInputError
from gi_jax.fitting import mse_loss
from gi_jax.gaussians import Gaussians
from gi_jax.render import (band_rasterizer, check_image_size, check_overflow, clip_unit, render,
                           resolve_backend)

# Pixels an image may have and still render in one piece; larger ones render in bands of about
# this many pixels. Kodak's 393,216 render in one piece: bands cost a loop and a binning each.
BAND_PIXELS = 1 << 20


def band_tile_rows(height: int, width: int, backend: str, band_rows: int | None = None) -> int:
  """Tile rows rendered at once: the image's own (one piece) unless it renders in bands.

  Args:
    height, width: the image size.
    backend: a resolved backend name; one without a band rasterizer renders in one piece.
    band_rows: tile rows (16 pixel rows each) per band; 0: one piece; None: one piece up to
      :data:`BAND_PIXELS` pixels, else bands of about that many.
  """
  grid = binning.TileGrid(height, width)
  if band_rows is None:
    band_rows = (0 if height * width <= BAND_PIXELS else
                 max(1, BAND_PIXELS // (binning.TILE_PIXELS * grid.tiles_x)))
  band_rows = int(band_rows)
  if band_rows < 0:
    raise InvalidInputError(f"band_rows must be >= 0 (0: one piece), got {band_rows}")
  if not band_rows or band_rasterizer(backend) is None:
    return grid.tiles_y
  return min(band_rows, grid.tiles_y)


def _set_checks(gaussians: Gaussians, grid: binning.TileGrid, band_rows: int):
  """One set's ``(all values finite, the largest band's intersection count, the count in
  float32)``; the float sum cannot wrap round as int32 can for a crafted file."""
  finite = jnp.stack([jnp.isfinite(x).all()
                      for x in (gaussians.means_raw, gaussians.cov_raw, gaussians.colors)]).all()
  proj = binning.project(gaussians, grid)
  touched = proj.tiles_touched
  # Pairs per tile row: each box adds its width to the rows it spans (a difference array).
  first, end = proj.tile_min[:, 1], proj.tile_max[:, 1]
  row_width = jnp.where(end > first, jnp.maximum(proj.tile_max[:, 0] - proj.tile_min[:, 0], 0), 0)
  num_bands = -(-grid.tiles_y // band_rows)
  steps = jnp.zeros((num_bands * band_rows + 1,), jnp.int32)
  steps = steps.at[first].add(row_width).at[end].add(-row_width)
  per_band = jnp.cumsum(steps[:-1]).reshape(num_bands, band_rows).sum(1)
  return finite, per_band.max(), touched.astype(jnp.float32).sum()


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _dequantize_checked(symbols: QuantizedGaussians, height: int, width: int, band_rows: int):
  grid = binning.TileGrid(height, width)

  def one(q):
    gaussians = q.dequantize()
    return gaussians, _set_checks(gaussians, grid, band_rows)
  return jax.vmap(one)(symbols)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _checked(gaussians: Gaussians, height: int, width: int, band_rows: int):
  grid = binning.TileGrid(height, width)
  return jax.vmap(lambda g: _set_checks(g, grid, band_rows))(gaussians)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _render(gaussians, height, width, backend, capacity, band_rows):
  """[B, H, W, C]: the sets rendered in one piece, or in bands of ``band_rows`` tile rows."""
  grid = binning.TileGrid(height, width)
  if band_rows >= grid.tiles_y:
    return render(gaussians, height, width, backend, capacity=capacity)
  rasterize = band_rasterizer(backend)
  sets, channels = gaussians.means_raw.shape[0], gaussians.colors.shape[-1]
  band_height = band_rows * binning.TILE
  # The output images, and one band's work as render() sizes a whole image's.
  memory.check_fits(4 * channels * height * width * sets, f"{sets} decoded {height}×{width} images")
  check_image_size(band_height, width, sets)
  projections = jax.vmap(lambda g: binning.project(g, grid))(gaussians)

  def band(proj, first_tile_row, height):
    band_grid = binning.TileGrid(height, width)
    # The boxes cut to the band, in its tile rows; empty for Gaussians outside it.
    cut = lambda t: jnp.stack([t[:, 0], jnp.clip(t[:, 1] - first_tile_row, 0,
                                                  band_grid.tiles_y)], axis=-1)
    local = proj._replace(tile_min=cut(proj.tile_min), tile_max=cut(proj.tile_max))
    binned = binning.bin_boxes(local.tile_min, local.tile_max, band_grid, capacity)
    bins = binning.tile_lists(binned, local, first_tile_row)
    image = clip_unit(rasterize(proj.means, proj.conics, proj.colors, bins, height, width,
                                first_tile_row))
    return check_overflow(image, bins.count, capacity)   # never silent: NaN, as render()

  def write(image, index, height):
    first_tile_row = index * band_rows
    bands = jax.vmap(lambda p: band(p, first_tile_row, height))(projections)
    return jax.lax.dynamic_update_slice(image, bands, (0, first_tile_row * binning.TILE, 0, 0))

  full = height // band_height
  image = jnp.zeros((sets, height, width, channels), jnp.float32)
  image = jax.lax.fori_loop(0, full, lambda i, image: write(image, i, band_height), image)
  if height > full * band_height:   # the last band, shorter
    image = write(image, full, height - full * band_height)
  return image


def _capacity(checks, name: Callable[[int], str]) -> int:
  """The render capacity of checked sets (the largest band count's bucket).

  Raises:
    CodecError: naming (``name(i)``) the first set with values that are not finite or with more
      intersections than the decoder allows.
  """
  finite, counts, totals = jax.device_get(checks)
  for i in range(len(finite)):
    if not finite[i]:
      raise CodecError(f"corrupt {name(i)}: decoded Gaussians are not finite")
    if totals[i] > MAX_INTERSECTIONS:
      raise CodecError(f"the Gaussians of {name(i)} touch {totals[i]:.0f} tiles in all, above "
                       f"the decoder's limit of {MAX_INTERSECTIONS}")
  return binning.bucket_capacity(int(np.max(counts)))


def layout(tree) -> tuple:
  """What sets must share to be stacked: tree structure (static fields) and leaf shapes."""
  return jax.tree.structure(tree), tuple(np.shape(x) for x in jax.tree.leaves(tree))


def _stack(sets: Sequence, stack: Callable, what: str):
  sets = list(sets)
  if not sets:
    raise InvalidInputError(f"no {what}s to render")
  first = layout(sets[0])
  for i, s in enumerate(sets):
    if layout(s) != first:
      raise InvalidInputError(f"{what} {i} differs from {what} 0 in N or layout; a batch needs "
                              "one of each (decode_batch groups files by them)")
  return jax.tree.map(lambda *xs: stack(xs), *sets)


def batch_name(i: int) -> str:
  return f"set {i} of the batch"


def render_decoded_batch(sets: Sequence[Gaussians], height: int, width: int,
                         backend: str = "auto", *, band_rows: int | None = None) -> jax.Array:
  """Renders B dequantized sets of the same N in one jitted call: ``[B, H, W, C]``.

  ``band_rows`` as for :func:`render_quantized_batch`.

  Raises:
    InvalidInputError: the sets differ in N or parameterisation.
    CodecError: a set has values that are not finite, or too many intersections.
  """
  backend = resolve_backend(backend)
  rows = band_tile_rows(height, width, backend, band_rows)
  stacked = _stack(sets, lambda xs: jnp.stack([jnp.asarray(x) for x in xs]), "set")
  capacity = _capacity(_checked(stacked, height, width, rows), batch_name)
  return _render(stacked, height, width, backend, capacity, rows)


def render_decoded(gaussians: Gaussians, height: int, width: int,
                   backend: str = "auto", *, band_rows: int | None = None) -> jax.Array:
  """Renders one dequantized set as the decoder does: ``[H, W, C]``."""
  return render_decoded_batch([gaussians], height, width, backend, band_rows=band_rows)[0]


def render_quantized_batch(symbols: Sequence[QuantizedGaussians], height: int, width: int,
                           backend: str = "auto", *, capacity: int = 0,
                           band_rows: int | None = None) -> jax.Array:
  """The device part of decoding B files of one size, N and layout: ``[B, H, W, C]``.

  One transfer of the stacked symbols, one jitted call that dequantizes and checks every set, a
  read-back of B flags and counts that sizes the render, and one jitted render.

  Args:
    symbols: :func:`~gi_jax.codec.decode_quantized`'s sets (NumPy arrays).
    height, width: the image size they were decoded with.
    backend: rendering backend.
    capacity: render with at least this many intersection slots. Renders of one size and N that
      pass the same value share one compiled render (:func:`render_capacity`); no pixel
      changes.
    band_rows: tile rows (16 pixel rows) rendered at a time; 0: the whole image at once; None:
      at once up to :data:`BAND_PIXELS` pixels, else in bands of about that many. No pixel
      changes; a backend without a band rasterizer renders at once.

  Raises:
    InvalidInputError: the sets differ in N or layout (quantizer settings), or ``band_rows`` < 0.
    CodecError: a set decodes to values that are not finite, or to too many intersections.
  """
  return render_symbols(symbols, height, width, backend, batch_name, capacity, band_rows)


def dequantize_for_render(symbols, height, width, name: Callable[[int], str], band_rows: int):
  """Stacked, dequantized and checked sets, and the capacity that renders them in bands of
  ``band_rows`` tile rows (from :func:`band_tile_rows`)."""
  gaussians, checks = _dequantize_checked(_stack(symbols, np.stack, "set"), height, width,
                                          band_rows)
  return gaussians, _capacity(checks, name)


def render_dequantized(gaussians, height: int, width: int, backend: str, capacity: int,
                       band_rows: int) -> jax.Array:
  """Renders :func:`dequantize_for_render`'s sets: ``[B, H, W, C]`` (``backend`` resolved)."""
  return _render(gaussians, height, width, backend, capacity, band_rows)


def render_symbols(symbols, height, width, backend, name: Callable[[int], str],
                   least_capacity: int = 0, band_rows: int | None = None) -> jax.Array:
  """:func:`render_quantized_batch`, naming the sets in errors by ``name(i)``."""
  backend = resolve_backend(backend)
  rows = band_tile_rows(height, width, backend, band_rows)
  gaussians, capacity = dequantize_for_render(symbols, height, width, name, rows)
  return _render(gaussians, height, width, backend, max(capacity, int(least_capacity)), rows)


def render_capacity(symbols: Sequence[QuantizedGaussians], height: int, width: int) -> int:
  """The smallest intersection capacity that renders each of these sets (one size and N).

  Pass it as ``capacity`` to their renders one by one (:func:`render_quantized`,
  :func:`quantized_mse`, :func:`~gi_jax.codec.refine_colors`): they then share one compiled
  render, where each set's own capacity would compile one render per bucket. It is the capacity
  of a render in one piece (``band_rows=0``), which also renders every band.

  Raises:
    CodecError: as :func:`render_quantized_batch`.
  """
  rows = binning.TileGrid(height, width).tiles_y
  return max((dequantize_for_render([q], height, width, batch_name, rows)[1] for q in symbols),
             default=0)


def render_quantized(symbols: QuantizedGaussians, height: int, width: int,
                     backend: str = "auto", *, capacity: int = 0,
                     band_rows: int | None = None) -> jax.Array:
  """One set's image exactly as :func:`~gi_jax.codec.decode` renders it from the set's file:
  ``[H, W, C]``, bit for bit (the Gaussians summed in the file's canonical order); ``capacity``
  and ``band_rows`` as for :func:`render_quantized_batch`."""
  return render_quantized_batch([canonicalize(symbols)], height, width, backend,
                                capacity=capacity, band_rows=band_rows)[0]


def quantized_mse(q: QuantizedGaussians, target, backend: str = "auto", *,
                  capacity: int = 0) -> float:
  """MSE of the decoder's render of ``q`` against ``target`` (``capacity`` as for
  :func:`render_quantized_batch`)."""
  target = jnp.asarray(target)
  image = render_quantized(q, target.shape[0], target.shape[1], backend, capacity=capacity)
  return float(mse_loss(image, target))
