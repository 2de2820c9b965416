"""Pallas (Triton) rasterizer: forward and backward kernels behind a ``custom_vjp``.

Exactly the semantics of :func:`gi_jax.raster_reference.rasterize` (docs/design.md §3), as GPU kernels:

- forward: one program per 16×16 tile. It walks the tile's intersections
  ``tile_starts[t]:tile_starts[t + 1]`` in chunks of ``chunk`` (G), gathers those Gaussians'
  parameters by index, forms the [256, G] alpha block and adds ``Σ_g α·colour`` to the tile's
  256 pixels;
- backward: one program per tile recomputes the alpha blocks and writes the gradient of every
  intersection to its own slot ([5 + C, capacity]: mean x, y; conic A, B, C; the C colour
  channels), so no two programs ever write the same address;
- reduction: one program per block of Gaussians sums each Gaussian's slots in tile order, read
  through the permutation binning carries from its one sort (:class:`gi_jax.binning.Bins`), so
  the backward sorts nothing.

No float atomics anywhere, so two backward passes on the same inputs are bit-identical.

Triton constraints shape the code: every array inside a kernel has a power-of-two size (256
pixels, G intersections, 128 Gaussians per reduction block); arrays are never sliced inside a
kernel (each parameter is gathered as its own [G] vector from the packed [N, 5 + C] table); and the
colour sums are broadcast-multiply-reduce rather than ``α @ colours``: Triton's dot wants every
dimension >= 16 (colour has 3; JAX's own Pallas tests skip smaller dots on GPU), and Pallas lowers
a default-precision float32 dot to TF32, too coarse for the 1e-5 forward tolerance.

Any channel count C works: the kernels unroll over channels in Python, and the image blocks the
kernels read and write are padded to a power of two of channels (4 for RGB, 1 for grayscale, 8
for five channels), the padding always zero.

The same kernels run on CPU with ``interpret=True`` (the tests do).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gi_jax.binning import TILE, TILE_PIXELS, Bins, TileGrid, gaussian_sigma
from gi_jax.errors import InvalidInputError
from gi_jax.raster_reference import ALPHA_MIN, image_to_tiles, tiles_to_image



class KernelSettings(NamedTuple):
  """The launch shape of the forward and backward kernels (static; powers of two).

  The defaults are sized by register use, read off ptxas for sm_90, not tuned by timing (on an
  H200 a render was bound by binning, results/gpu_h200_2026-12-04/NOTES.md): the forward at
  G = 32 with 4 warps takes 128 registers a thread; the backward keeps more [256, G] arrays live
  and takes 128 at G = 16 with 8 warps (G = 32 needs 249; with 4 warps it spills).
  ``bench.py --kernel_settings`` times others on a GPU.

  Attributes:
    forward_chunk, backward_chunk: G, intersections per [256, G] α block.
    forward_warps, backward_warps: warps per program (one program per tile).
    stages: Triton pipeline stages of both kernels' loops.
  """
  forward_chunk: int = 32
  forward_warps: int = 4
  backward_chunk: int = 16
  backward_warps: int = 8
  stages: int = 1

  @classmethod
  def parse(cls, text: str) -> "KernelSettings":
    """From ``"GxW/GxW"`` (forward, backward) or ``"GxW/GxW/S"`` with stages, e.g. ``32x4/16x8``."""
    try:
      parts = text.split("/")
      (fg, fw), (bg, bw) = (map(int, p.lower().split("x")) for p in parts[:2])
      stages = int(parts[2]) if len(parts) == 3 else 1
      if len(parts) > 3:
        raise ValueError
    except ValueError:
      raise InvalidInputError(f"kernel settings {text!r} are not GxW/GxW[/STAGES]") from None
    return cls(fg, fw, bg, bw, stages).checked()

  def checked(self) -> "KernelSettings":
    """These settings, or an InvalidInputError naming the first that is not a power of two."""
    for name, value in self._asdict().items():
      if name != "stages" and (value < 1 or value & (value - 1)):
        raise InvalidInputError(f"{name} must be a power of two, got {value}")
    if self.stages < 1:
      raise InvalidInputError(f"stages must be >= 1, got {self.stages}")
    return self

  def __str__(self) -> str:
    tail = f"/{self.stages}" if self.stages != 1 else ""
    return (f"{self.forward_chunk}x{self.forward_warps}/{self.backward_chunk}x"
            f"{self.backward_warps}{tail}")


REDUCE_BLOCK = 128    # Gaussians per program of the per-Gaussian reduction (32 registers).
REDUCE_PARAMS = plgpu.CompilerParams(num_warps=4, num_stages=1)
# The packed parameter table is [N, 5 + C] and the gradient buffers [5 + C, ·], both in the order
# (mean x, mean y, conic A, B, C, colour channels 0..C-1).
GEOMETRY = 5


def padded_channels(channels: int) -> int:
  """The power of two >= ``channels`` that the kernels' image blocks hold."""
  return 1 << (channels - 1).bit_length()


# -- shared kernel pieces ------------------------------------------------------------------------

def _tile_pixels(tile, tiles_x, first_tile_row=0):
  """[256] float x and y of the pixels of ``tile`` (row-major within the tile), ``first_tile_row``
  tile rows down (a band of a larger image)."""
  local = jnp.arange(TILE_PIXELS, dtype=jnp.int32)
  # Non-negative ints: truncating lax.div/rem are floor division and keep the Triton IR small.
  px = lax.rem(tile, tiles_x) * TILE + lax.rem(local, TILE)
  py = (lax.div(tile, tiles_x) + first_tile_row) * TILE + lax.div(local, TILE)
  return px.astype(jnp.float32), py.astype(jnp.float32)


def _load_chunk(i, start, end, ids_ref, params_ref, chunk):
  """Gathers chunk ``i`` of a tile's intersections.

  Returns:
    ``(slots, valid, p)``: the chunk's [G] slots, the mask of those inside the tile, and the
    5 + C [G] parameter vectors x, y, A, B, C, colour channels (Gaussian 0's for masked slots;
    callers zero their alpha).
  """
  first = start + i * chunk
  slots = first + jnp.arange(chunk, dtype=jnp.int32)
  valid = slots < end
  ids = plgpu.load(ids_ref.at[pl.ds(first, chunk)], mask=valid, other=0)
  # Row-major [N, 5 + C]: for RGB a Gaussian's 8 numbers share one 32-byte sector, so after the
  # first gather the other 7 hit cache. Separate [G] gathers because a kernel cannot slice a
  # [G, 5 + C] block.
  p = [plgpu.load(params_ref.at[ids, k]) for k in range(params_ref.shape[1])]
  return slots, valid, p


def _alpha(p, px, py, valid):
  """[256, G] alpha with the skip rules (as :func:`gi_jax.raster_reference.gaussian_alpha`)."""
  x, y, a, b, c = (v[None, :] for v in p[:5])
  dx = x - px[:, None]
  dy = y - py[:, None]
  sigma = gaussian_sigma(a, b, c, dx, dy)
  alpha = jnp.minimum(1.0, jnp.exp(-sigma))
  keep = (sigma >= 0) & (alpha >= ALPHA_MIN) & valid[None, :]
  return jnp.where(keep, alpha, 0.0), dx, dy


def _num_chunks(starts_ref, ends_ref, tile, chunk):
  start, end = starts_ref[tile], ends_ref[tile]
  return start, end, pl.cdiv(end - start, chunk)


# -- forward -------------------------------------------------------------------------------------

def _forward_kernel(starts_ref, ends_ref, ids_ref, params_ref, *refs, tiles_x: int, chunk: int):
  """One tile: out[256, C'] = Σ over its intersections of α·colour (padding channels stay 0).

  ``refs`` is ``(out_ref,)``, or for a band ``(first_row_ref, out_ref)``: a [1] int32 holding the
  larger image's tile row the band starts at.
  """
  *band, out_ref = refs
  first_tile_row = band[0][0] if band else 0
  tile = pl.program_id(0)
  px, py = _tile_pixels(tile, tiles_x, first_tile_row)
  start, end, num_chunks = _num_chunks(starts_ref, ends_ref, tile, chunk)

  def body(i, acc):
    _, valid, p = _load_chunk(i, start, end, ids_ref, params_ref, chunk)
    alpha, _, _ = _alpha(p, px, py, valid)
    return tuple(s + jnp.sum(alpha * color[None, :], axis=1) for s, color in zip(acc, p[5:]))

  zeros = jnp.zeros((TILE_PIXELS,), jnp.float32)
  channels = params_ref.shape[1] - GEOMETRY
  sums = lax.fori_loop(0, num_chunks, body, (zeros,) * channels)
  for ch, value in enumerate(sums + (zeros,) * (out_ref.shape[-1] - channels)):
    out_ref[:, ch] = value


def parameter_table(means, conics, colors) -> jax.Array:
  """[N, 5 + C] row-major: each Gaussian's x, y, A, B, C and colour, the rows the kernels gather.

  The tile lists' kernel reads the same table (its first five columns), so XLA builds it once a
  step for both.
  """
  return jnp.concatenate([means, conics, colors], axis=-1)


def _forward(means, conics, colors, bins, grid, interpret, settings, first_tile_row=None):
  params = parameter_table(means, conics, colors)
  band = () if first_tile_row is None else (jnp.reshape(first_tile_row, (1,)).astype(jnp.int32),)
  channels = colors.shape[-1]
  padded = padded_channels(channels)
  tiles = pl.pallas_call(
      functools.partial(_forward_kernel, tiles_x=grid.tiles_x, chunk=settings.forward_chunk),
      grid=(grid.num_tiles,),
      in_specs=[pl.no_block_spec] * (4 + len(band)),
      out_specs=pl.BlockSpec((None, TILE_PIXELS, padded), lambda t: (t, 0, 0)),
      out_shape=jax.ShapeDtypeStruct((grid.num_tiles, TILE_PIXELS, padded), jnp.float32),
      compiler_params=plgpu.CompilerParams(num_warps=settings.forward_warps,
                                           num_stages=settings.stages),
      interpret=interpret,
      name="gi_rasterize_fwd",
  )(bins.tile_starts, bins.ends, bins.gaussian_ids, params, *band)
  return tiles_to_image(tiles[..., :channels], grid), params


# -- backward ------------------------------------------------------------------------------------

def _backward_kernel(starts_ref, ends_ref, ids_ref, params_ref, d_out_ref, grads_ref, *,
                     tiles_x: int, chunk: int):
  """One tile: the 5 + C gradients of each of its intersections, into that intersection's slot."""
  tile = pl.program_id(0)
  px, py = _tile_pixels(tile, tiles_x)
  start, end, num_chunks = _num_chunks(starts_ref, ends_ref, tile, chunk)
  channels = params_ref.shape[1] - GEOMETRY
  d_pix = [d_out_ref[:, ch][:, None] for ch in range(channels)]   # [256, 1] dL/dout per channel

  @pl.loop(0, num_chunks)
  def _(i):
    slots, valid, p = _load_chunk(i, start, end, ids_ref, params_ref, chunk)
    alpha, dx, dy = _alpha(p, px, py, valid)
    d_color = [jnp.sum(alpha * d, axis=0) for d in d_pix]
    # dL/dσ = −α·<colour, dL/dout>; zero wherever the pixel was skipped (α = 0).
    color = [v[None, :] for v in p[GEOMETRY:]]
    dot = color[0] * d_pix[0]
    for ch in range(1, channels):
      dot = dot + color[ch] * d_pix[ch]
    d_sigma = -alpha * dot
    # σ = ½(A·dx² + C·dy²) + B·dx·dy with (A, B, C) constant per Gaussian, so five pixel sums
    # (moments of dL/dσ) give all five geometry gradients: fewer [256, G] temporaries, which is
    # what bounds this kernel's registers.
    gx, gy = d_sigma * dx, d_sigma * dy
    s_x, s_y = jnp.sum(gx, axis=0), jnp.sum(gy, axis=0)
    s_xx, s_xy, s_yy = (jnp.sum(gx * dx, axis=0), jnp.sum(gx * dy, axis=0),
                        jnp.sum(gy * dy, axis=0))
    a, b, c = p[2:5]
    grads = [a * s_x + b * s_y, c * s_y + b * s_x, 0.5 * s_xx, s_xy, 0.5 * s_yy, *d_color]
    # Index arrays, not pl.ds: the interpreter cannot mix an int and a slice in a masked store
    # (jax 0.11); Triton sees the same contiguous `first + arange` either way.
    for k, g in enumerate(grads):
      plgpu.store(grads_ref.at[k, slots], g, mask=valid)


def _reduce_kernel(starts_ref, slots_ref, grads_ref, out_ref, *, block: int):
  """A block of Gaussians: each sums its listed pairs' gradients, in tile order.

  Gaussian g's pairs are ``slots[starts[g]:starts[g + 1]]`` (binning carries them from its one
  sort), entries at or past the capacity marking box tiles it does not reach; the loop runs to the
  block's longest range, shorter ones masked. Sequential per Gaussian, so the order is fixed.
  """
  num = starts_ref.shape[0] - 1
  capacity = slots_ref.shape[0]
  gid = pl.program_id(0) * block + jnp.arange(block, dtype=jnp.int32)
  inside = gid < num
  lo = plgpu.load(starts_ref.at[gid], mask=inside, other=0)
  hi = plgpu.load(starts_ref.at[gid + 1], mask=inside, other=0)

  def body(j, acc):
    live = lo + j < hi
    slot = plgpu.load(slots_ref.at[jnp.where(live, lo + j, 0)], mask=live, other=capacity)
    listed = slot < capacity
    slot = jnp.where(listed, slot, 0)
    return tuple(s + plgpu.load(grads_ref.at[k, slot], mask=listed, other=0.0)
                 for k, s in enumerate(acc))

  zeros = jnp.zeros((block,), jnp.float32)
  sums = lax.fori_loop(0, jnp.max(hi - lo), body, (zeros,) * grads_ref.shape[0])
  for k, s in enumerate(sums):
    plgpu.store(out_ref.at[k, gid], s, mask=inside)


def _backward(params, bins, d_out, grid, interpret, settings):
  num, width = params.shape
  channels = width - GEOMETRY
  padded = padded_channels(channels)
  d_tiles = image_to_tiles(d_out, grid)
  d_tiles = jnp.pad(d_tiles, ((0, 0), (0, 0), (0, padded - channels)))
  grads = pl.pallas_call(
      functools.partial(_backward_kernel, tiles_x=grid.tiles_x, chunk=settings.backward_chunk),
      grid=(grid.num_tiles,),
      in_specs=[pl.no_block_spec] * 4 + [pl.BlockSpec((None, TILE_PIXELS, padded),
                                                      lambda t: (t, 0, 0))],
      out_specs=pl.no_block_spec,
      # Slots past tile_starts[-1] are never written (nor read by the reduction).
      out_shape=jax.ShapeDtypeStruct((width, bins.capacity), jnp.float32),
      compiler_params=plgpu.CompilerParams(num_warps=settings.backward_warps,
                                           num_stages=settings.stages),
      interpret=interpret,
      name="gi_rasterize_bwd",
  )(bins.tile_starts, bins.ends, bins.gaussian_ids, params, d_tiles)
  sums = pl.pallas_call(
      functools.partial(_reduce_kernel, block=REDUCE_BLOCK),
      grid=(pl.cdiv(num, REDUCE_BLOCK),),
      in_specs=[pl.no_block_spec] * 3,
      out_specs=pl.no_block_spec,
      out_shape=jax.ShapeDtypeStruct((width, num), jnp.float32),
      compiler_params=REDUCE_PARAMS,
      interpret=interpret,
      name="gi_rasterize_reduce",
  )(bins.gaussian_starts, bins.gaussian_slots, grads)
  return sums.T


# -- custom_vjp ----------------------------------------------------------------------------------

_STATIC = ("height", "width", "interpret", "settings")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
@functools.partial(jax.jit, static_argnames=_STATIC)
def _rasterize(means, conics, colors, bins, height, width, interpret, settings):
  grid = TileGrid(height, width)
  return _forward(means, conics, colors, bins, grid, interpret, settings)[0]


@functools.partial(jax.jit, static_argnames=_STATIC)
def _rasterize_fwd(means, conics, colors, bins, height, width, interpret, settings):
  grid = TileGrid(height, width)
  out, params = _forward(means, conics, colors, bins, grid, interpret, settings)
  return out, (params, bins)


def _rasterize_bwd(height, width, interpret, settings, residuals, d_out):
  params, bins = residuals
  grads = _backward_jit(params, bins, d_out, height, width, interpret, settings)
  return grads[:, 0:2], grads[:, 2:5], grads[:, GEOMETRY:], None


@functools.partial(jax.jit, static_argnames=_STATIC)
def _backward_jit(params, bins, d_out, height, width, interpret, settings):
  return _backward(params, bins, d_out, TileGrid(height, width), interpret, settings)


_rasterize.defvjp(_rasterize_fwd, _rasterize_bwd)


def rasterize(means, conics, colors, bins: Bins, height: int, width: int, *,
              interpret: bool = False, chunk: int | None = None,
              settings: KernelSettings | None = None) -> jax.Array:
  """Sums every Gaussian's ``colour·α`` over its tiles' pixels, with Pallas kernels.

  Same contract as :func:`gi_jax.raster_reference.rasterize`; jit-, grad- and vmap-compatible.

  Args:
    means: [N, 2] float32 pixel positions.
    conics: [N, 3] float32 inverse covariances (A, B, C).
    colors: [N, C] float32 colours, any C >= 1.
    bins: intersections from :func:`gi_jax.binning.bin_intersections`.
    height: image height (static).
    width: image width (static).
    interpret: run the kernels in the Pallas interpreter (any device; for CPU and tests).
    chunk: G, intersections per alpha block (static power of two) for both kernels, in place of
      the settings' own.
    settings: the kernels' launch shape (:class:`KernelSettings`; None: its defaults).

  Returns:
    [H, W, C] float32 unclipped sum. Differentiable in ``means``, ``conics`` and
    ``colors``; the gradient is deterministic (bit-identical across calls).
  """
  settings = settings or KernelSettings()
  if chunk is not None:
    settings = settings._replace(forward_chunk=chunk, backward_chunk=chunk)
  return _rasterize(means, conics, colors, bins, height, width, interpret, settings.checked())


def rasterize_for_backend(means, conics, colors, bins: Bins, height: int, width: int) -> jax.Array:
  """The ``"pallas"`` backend: compiled kernels on a GPU, the interpreter elsewhere."""
  interpret = jax.default_backend() != "gpu"
  return rasterize(means, conics, colors, bins, height, width, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("height", "width", "interpret"))
def _rasterize_band(means, conics, colors, bins, first_tile_row, height, width, interpret):
  return _forward(means, conics, colors, bins, TileGrid(height, width), interpret,
                  KernelSettings(), first_tile_row)[0]


def rasterize_band_for_backend(means, conics, colors, bins: Bins, height: int, width: int,
                               first_tile_row) -> jax.Array:
  """The ``"pallas"`` backend's band forward, as
  :func:`gi_jax.raster_reference.rasterize_band` (no gradient)."""
  interpret = jax.default_backend() != "gpu"
  return _rasterize_band(means, conics, colors, bins, first_tile_row, height=height, width=width,
                         interpret=interpret)
