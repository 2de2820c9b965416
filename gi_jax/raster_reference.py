"""Pure-JAX tiled rasterizer (accumulated summation, docs/design.md §3), the ``"reference"`` backend.

It walks the tile-sorted intersections in fixed-size chunks: each chunk evaluates its K
intersections on their tile's 256 pixels ([K, 256] alphas) and adds them into the image. Memory is
O(K·256) whatever the count, and every tile sees all of its Gaussians (no per-tile cap).

The gradient is a ``custom_vjp`` that recomputes alphas chunk by chunk, forms per-intersection
gradients of (mean, conic, colour) and sums them per Gaussian: the same scheme as the Pallas
backend, so autodiff never stores the [C, 256] alphas of a whole image.
Both passes stop after the last live intersection (fitting keeps the capacity well above the
count), and are what a CPU fit spends most of its time on.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gi_jax.binning import ALPHA_MIN, TILE, TILE_PIXELS, Bins, TileGrid, gaussian_sigma

# Intersections per loop step: measured fastest on CPU (256x256, 5,000 Gaussians: 1024 beat 256 by
# 2x and 4096 by 1.4x); smaller chunks pay loop overhead, larger ones spill caches.
CHUNK = 1024


def tile_pixel_coords(tile_ids: jax.Array, tiles_x: int, dtype,
                      first_tile_row=0) -> tuple[jax.Array, jax.Array]:
  """[K, 256] pixel x and y of the 256 pixels of each tile, in row-major order within the tile.

  ``first_tile_row`` (an int or a traced int32 scalar) shifts the tiles down that many tile rows:
  the pixels of a band of a larger image, with that image's coordinates.
  """
  local = jnp.arange(TILE_PIXELS, dtype=jnp.int32)
  px = (tile_ids % tiles_x * TILE)[:, None] + (local % TILE)[None, :]
  py = ((tile_ids // tiles_x + first_tile_row) * TILE)[:, None] + (local // TILE)[None, :]
  return px.astype(dtype), py.astype(dtype)


def gaussian_alpha(means, conics, px, py):
  """Alpha of Gaussians at pixels, with the skip rules; also returns dx, dy for gradients.

  Args:
    means: [..., 2] Gaussian positions, broadcast against ``px``.
    conics: [..., 3] (A, B, C).
    px, py: pixel coordinates.

  Returns:
    ``(alpha, dx, dy)`` with ``alpha = min(1, exp(−σ))`` and 0 where ``σ < 0`` or
    ``alpha < 1/255``.
  """
  dx = means[..., 0] - px
  dy = means[..., 1] - py
  a, b, c = conics[..., 0], conics[..., 1], conics[..., 2]
  sigma = gaussian_sigma(a, b, c, dx, dy)
  alpha = jnp.minimum(1.0, jnp.exp(-sigma))
  alpha = jnp.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, 0.0)
  return alpha, dx, dy


def tiles_to_image(tiles: jax.Array, grid: TileGrid) -> jax.Array:
  """[num_tiles, 256, C] → [H, W, C], cropping the padding of partial tiles."""
  channels = tiles.shape[-1]
  img = tiles.reshape(grid.tiles_y, grid.tiles_x, TILE, TILE, channels)
  img = img.transpose(0, 2, 1, 3, 4).reshape(grid.tiles_y * TILE, grid.tiles_x * TILE, channels)
  return img[:grid.height, :grid.width]


def image_to_tiles(image: jax.Array, grid: TileGrid) -> jax.Array:
  """[H, W, C] → [num_tiles, 256, C], zero-padding partial tiles."""
  channels = image.shape[-1]
  pad_h = grid.tiles_y * TILE - grid.height
  pad_w = grid.tiles_x * TILE - grid.width
  img = jnp.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
  img = img.reshape(grid.tiles_y, TILE, grid.tiles_x, TILE, channels).transpose(0, 2, 1, 3, 4)
  return img.reshape(grid.num_tiles, TILE_PIXELS, channels)


def _chunked(bins: Bins, chunk: int):
  """Pads the intersection lists to a multiple of ``chunk`` and splits them into chunks."""
  capacity = bins.capacity
  chunk = min(chunk, -(-capacity // 64) * 64)  # small images: do not pad to a whole chunk
  padded = -(-capacity // chunk) * chunk
  extra = padded - capacity
  num_tiles = bins.tile_starts.shape[0] - 1
  gid = jnp.pad(bins.gaussian_ids, (0, extra))
  tid = jnp.pad(bins.tile_ids, (0, extra), constant_values=num_tiles)
  return gid.reshape(-1, chunk), tid.reshape(-1, chunk)


def _fold_live_chunks(body, acc, operands, bins: Bins, chunk: int):
  """Runs ``acc = body(acc, operands, (gid, tid))`` over the chunks that hold an intersection.

  Unused slots sort to the end and add exactly nothing, so stopping after the last live chunk
  changes no bit of the result, and the work follows the true count rather than the capacity,
  which fitting keeps 1.5x above the count it last saw. A loop of dynamic length updates ``acc``
  in place (a ``cond`` per chunk would copy it: the whole image in the forward). Batched, it runs
  to the batch's largest count: the other sets' extra chunks hold only unused slots.
  Both callers sit under ``rasterize``'s ``custom_vjp``, so a gradient does not differentiate this
  loop; second derivatives still match the dense oracle (``tests/test_render.py``).
  """
  gid_chunks, tid_chunks = _chunked(bins, chunk)
  size = gid_chunks.shape[1]
  num_live = jnp.minimum(-(-bins.tile_starts[-1] // size), gid_chunks.shape[0])

  @jax.custom_batching.custom_vmap
  def fold(acc, operands, gid_chunks, tid_chunks, num_live):
    step = lambda i, acc: body(acc, operands, (gid_chunks[i], tid_chunks[i]))
    return jax.lax.fori_loop(0, num_live, step, acc)

  @fold.def_vmap
  def fold_batched(axis_size, in_batched, acc, operands, gid_chunks, tid_chunks, num_live):
    # A batched trip count would make vmap select the whole carry after every chunk.
    args = jax.tree.map(
        lambda x, batched: x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape),
        (acc, operands, gid_chunks, tid_chunks), tuple(in_batched[:4]))
    acc, operands, gid_chunks, tid_chunks = args
    batched_body = jax.vmap(lambda acc, operands, gid, tid: body(acc, operands, (gid, tid)))
    step = lambda i, acc: batched_body(acc, operands, gid_chunks[:, i], tid_chunks[:, i])
    return jax.lax.fori_loop(0, jnp.max(num_live), step, acc), True

  return fold(acc, operands, gid_chunks, tid_chunks, num_live)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def rasterize(means, conics, colors, bins: Bins, height: int, width: int) -> jax.Array:
  """Sums every Gaussian's ``colour·α`` over its tiles' pixels.

  Args:
    means: [N, 2] pixel positions.
    conics: [N, 3] inverse covariances (A, B, C).
    colors: [N, C] colours, any C >= 1.
    bins: intersections from :func:`gi_jax.binning.bin_intersections`.
    height: image height (static).
    width: image width (static).

  Returns:
    [H, W, C] unclipped sum. Differentiable in ``means``, ``conics`` and ``colors``.
  """
  return _forward(means, conics, colors, bins, TileGrid(height, width))


def rasterize_band(means, conics, colors, bins: Bins, height: int, width: int,
                   first_tile_row) -> jax.Array:
  """The forward of :func:`rasterize` for a band of a larger image (no gradient).

  Args:
    means, conics, colors: as for :func:`rasterize`, in the larger image's pixel coordinates.
    bins: the band's lists, tile ids counted from the band's first tile (a ``height`` × ``width``
      grid).
    height: the band's height in pixels (static).
    width: image width (static).
    first_tile_row: [] int32 (may be traced): the larger image's tile row the band starts at.

  Returns:
    [height, width, 3] unclipped sum: exactly the rows ``16·first_tile_row`` on of the larger
    image's render from the same lists, to the bit (each pixel sums the same terms in the same
    order).
  """
  return _forward(means, conics, colors, bins, TileGrid(height, width), first_tile_row)


def _forward(means, conics, colors, bins, grid, first_tile_row=0):
  if isinstance(first_tile_row, int):
    return _forward_compiled(means, conics, colors, bins, grid, first_tile_row)
  return _forward_traced(means, conics, colors, bins, grid, first_tile_row)


def _forward_traced(means, conics, colors, bins, grid, first_tile_row):
  # One spare row absorbs the unused slots (tile id == num_tiles) without a branch.
  acc = jnp.zeros((grid.num_tiles + 1, TILE_PIXELS, colors.shape[-1]), colors.dtype)

  def body(acc, operands, chunk):
    means, conics, colors = operands
    gid, tid = chunk
    px, py = tile_pixel_coords(tid, grid.tiles_x, means.dtype, first_tile_row)
    alpha, _, _ = gaussian_alpha(means[gid][:, None, :], conics[gid][:, None, :], px, py)
    return acc.at[tid].add(alpha[..., None] * colors[gid][:, None, :])

  acc = _fold_live_chunks(body, acc, (means, conics, colors), bins, CHUNK)
  return tiles_to_image(acc[:-1], grid)


# Called with concrete values (an eager render), the loop over chunks would be traced and
# compiled afresh on every call: its body is a new closure each time. Compiled once per grid
# instead; inside a trace it is inlined. Only the loop and index bookkeeping live here, so the
# arithmetic, and every bit of the result, is the same either way.
_forward_compiled = functools.partial(jax.jit, static_argnums=(4, 5))(_forward_traced)


def _fwd(means, conics, colors, bins, height, width):
  out = rasterize(means, conics, colors, bins, height, width)
  return out, (means, conics, colors, bins)


def _bwd(height, width, residuals, d_out):
  means, conics, colors, bins = residuals
  grid = TileGrid(height, width)
  d_means, d_conics, d_colors = per_gaussian_grads(means, conics, colors, bins, grid, d_out)
  return d_means, d_conics, d_colors, None


def _pixel_offsets(dtype) -> jax.Array:
  """[256, 3]: (1, x, y) of a tile's pixels, about the tile's centre."""
  local = jnp.arange(TILE_PIXELS, dtype=jnp.int32)
  x = (local % TILE).astype(dtype) - (TILE - 1) / 2
  y = (local // TILE).astype(dtype) - (TILE - 1) / 2
  return jnp.stack([jnp.ones_like(x), x, y], axis=1)


def per_gaussian_grads(means, conics, colors, bins, grid, d_out):
  """Gradients of ``sum(rasterize(...) * d_out)`` in (means, conics, colors), chunk by chunk.

  A (Gaussian, tile) pair needs 5 + C sums over the tile's pixels: Σ α·dL/dout per channel (the
  colour's gradient) and, with dσ = dL/dσ, Σ dσ·{dx, dy, dx², dx·dy, dy²}. With (u, v) the
  Gaussian's offset from the tile's centre and (x, y) a pixel's, dx = u − x, so
  Σ dσ·dx² = u·Σ dσ·dx − Σ dσ·dx·x (and likewise dx·dy, dy²): every sum is a product of one of
  the C + 2 pixel arrays α·dL/dout, dσ·dx, dσ·dy with the pixels' (1, x, y), and a chunk's sums
  are one [C + 2, K, 256] × [256, 3] matrix product instead of 5 + C reductions, each a pass over
  [K, 256] (most of the backward's time on a CPU). Only the second-order sums are rebuilt from
  two terms; with |x| ≤ 7.5 about the centre they are as accurate as the direct sums (checked
  against a float64 oracle in ``tests/test_render.py``).
  """
  num = means.shape[0]
  d_tiles = image_to_tiles(d_out, grid)
  d_tiles = jnp.concatenate([d_tiles, jnp.zeros_like(d_tiles[:1])])  # the spare row: no gradient
  # One [tiles, 256] plane per channel: a chunk then gathers whole contiguous 256-pixel rows
  # instead of [K, 256, C] with a C-wide minor axis (twice as fast on CPU for C = 3).
  d_planes = jnp.moveaxis(d_tiles, -1, 0)
  channels = colors.shape[-1]
  centre = (TILE - 1) / 2
  # Per-Gaussian sums: [x, y, A, B, C, colour channel 0..C-1].
  acc = jnp.zeros((num, 5 + channels), means.dtype)

  def body(acc, operands, chunk):
    means, conics, colors, d_planes = operands
    gid, tid = chunk
    px, py = tile_pixel_coords(tid, grid.tiles_x, means.dtype)
    mean, conic, color = means[gid], conics[gid], colors[gid]
    alpha, dx, dy = gaussian_alpha(mean[:, None, :], conic[:, None, :], px, py)
    # Computed once: XLA would otherwise evaluate the exponential in every product below.
    alpha = jax.lax.optimization_barrier(alpha)
    d_pix = d_planes[:, tid]                                    # [C, K, 256]
    # dL/dσ = −α · <colour, dL/dout>; zero wherever the pixel was skipped (α = 0).
    dot = color[:, 0:1] * d_pix[0]
    for ch in range(1, channels):
      dot = dot + color[:, ch:ch + 1] * d_pix[ch]
    d_sigma = -alpha * dot
    weighted = jnp.concatenate([alpha * d_pix, (d_sigma * dx)[None], (d_sigma * dy)[None]])
    m = jnp.matmul(weighted, _pixel_offsets(means.dtype),
                   precision=jax.lax.Precision.HIGHEST)     # [C + 2, K, 3]
    d_color = m[:channels, :, 0].T
    m = m[channels:]
    # The Gaussian's offset from the tile's centre (pixel 0 is the tile's corner).
    u = mean[:, 0] - (px[:, 0] + centre)
    v = mean[:, 1] - (py[:, 0] + centre)
    s_x, s_y = m[0, :, 0], m[1, :, 0]
    # σ = ½(A·dx² + C·dy²) + B·dx·dy: five sums over the pixels give the five gradients.
    s_xx = u * s_x - m[0, :, 1]
    s_xy = v * s_x - m[0, :, 2]
    s_yy = v * s_y - m[1, :, 2]
    a, b, c = conic[:, 0], conic[:, 1], conic[:, 2]
    grads = jnp.concatenate([jnp.stack([a * s_x + b * s_y, c * s_y + b * s_x, 0.5 * s_xx, s_xy,
                                        0.5 * s_yy], axis=1), d_color], axis=1)
    return acc.at[gid].add(grads)

  acc = _fold_live_chunks(body, acc, (means, conics, colors, d_planes), bins, CHUNK)
  return acc[:, 0:2], acc[:, 2:5], acc[:, 5:]


rasterize.defvjp(_fwd, _bwd)
