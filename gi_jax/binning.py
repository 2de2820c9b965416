"""Projection and tile binning: from Gaussians to (tile, Gaussian) intersections grouped by tile.

Every backend rasterizes from the same :class:`Projection` and :class:`Bins`, so the set of
Gaussians each pixel sees is defined once, here (docs/design.md §2). A pixel sees every Gaussian with
``det Σ > 0`` whose α is at least 1/255 there. Binning finds those pairs in three steps:

- each Gaussian's *box*: the tiles ``floor((x ± e_x)/16)`` × ``floor((y ± e_y)/16)`` (inclusive,
  clamped to the grid), where ``e_x = sqrt(2·ln 255·Σ_xx)`` and ``e_y`` likewise are the half-widths
  of its α = 1/255 ellipse, padded against float rounding (:func:`tile_boxes`);
- :func:`bin_gaussians`: every (tile, Gaussian) pair of the boxes, widened by an optional margin, in
  one stable sort by tile (a :class:`Binning`);
- :func:`tile_lists`: of a binning's pairs, those in a Gaussian's current box whose tile its α can
  reach (:func:`alpha_reaches_tile`), packed per tile in Gaussian order (the :class:`Bins` a
  rasterizer reads). A binning made with a margin stays valid while every current box lies inside
  the box it was binned with (:func:`covers`), and then gives exactly the lists a fresh binning
  would: the same pairs in the same order, so every render and gradient is the same to the bit.

Shapes must be static under ``jit`` but the number of pairs changes as Gaussians move, so binning
fills a buffer of static ``capacity`` and also returns the true ``count``. When
``count > capacity`` the tail is not rendered: callers must check ``count`` (``render`` raises,
``fit`` re-bins with a larger capacity and redoes the steps); nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gi_jax import errors
from gi_jax.gaussians import (Gaussians, check_size, covariance_conic, covariance_determinant,
                              is_concrete)

TILE = 16
TILE_PIXELS = TILE * TILE
# Every rasterizer renders α = exp(−σ) below this as 0 (docs/design.md §3), exactly where σ > ln 255.
ALPHA_MIN = 1.0 / 255.0
LOG_255 = -math.log(ALPHA_MIN)
# The box's σ bound: ln 255 plus 1%, far above the float32 rounding of σ for any Gaussian whose
# det Σ is resolved at all (relative error ~1e-7 times its condition number), so the box holds
# every pixel a rasterizer finds at α >= 1/255.
BOX_SIGMA = 1.01 * LOG_255
# Pixels a binning's boxes are widened by beyond the margin asked for. Two compilations may round
# a box's edge differently (by ~1e-4 px at Kodak size: positions come through tanh), so a fit bins
# again once a box comes within half of this of its binned box (covers(..., slack)), and the
# render's own check, on the plain box, then always agrees.
COVER_SLACK = 1e-2
# A count no binning reaches: what a render reports when its binning does not cover the Gaussians
# (their lists would miss pairs, as an overflowing buffer does).
NOT_COVERED = np.iinfo(np.int32).max


class TileGrid(NamedTuple):
  """The 16×16 tile grid covering an image (static Python ints)."""
  height: int
  width: int

  @property
  def tiles_x(self) -> int:
    return -(-self.width // TILE)

  @property
  def tiles_y(self) -> int:
    return -(-self.height // TILE)

  @property
  def num_tiles(self) -> int:
    return self.tiles_x * self.tiles_y


class Projection(NamedTuple):
  """Per-Gaussian screen-space quantities.

  Attributes:
    means: [N, 2] float pixel positions (x, y).
    conics: [N, 3] float inverse covariance (A, B, C).
    colors: [N, C] float colours.
    tile_min: [N, 2] int32 first tile (tx, ty) of the Gaussian's box.
    tile_max: [N, 2] int32 one past its last tile; ``tile_max <= tile_min`` means no tile.
  """
  means: jax.Array
  conics: jax.Array
  colors: jax.Array
  tile_min: jax.Array
  tile_max: jax.Array

  @property
  def tiles_touched(self) -> jax.Array:
    """[N] int32 number of tiles in each Gaussian's box."""
    return box_tiles(self.tile_min, self.tile_max)


class Bins(NamedTuple):
  """What a rasterizer reads: each tile's Gaussians, packed tile by tile (static capacity).

  Attributes:
    gaussian_ids: [capacity] int32 Gaussian of each listed pair; within a tile in increasing order.
    tile_ids: [capacity] int32 tile of each listed pair, ``num_tiles`` for unused slots.
    tile_starts: [num_tiles + 1] int32; tile t's pairs are ``tile_starts[t]:tile_starts[t + 1]``;
      ``tile_starts[-1]`` is the number listed.
    count: [] int32 the number of box pairs the binning had to hold; ``count > capacity`` means
      pairs are missing (an overflow, or :data:`NOT_COVERED`).
    gaussian_starts: [N + 1] int32 and
    gaussian_slots: [capacity] int32: the listed slots of each Gaussian, in tile order, for
      backward passes that sum per Gaussian: Gaussian g's are the entries of
      ``gaussian_slots[gaussian_starts[g]:gaussian_starts[g + 1]]`` below ``capacity`` (the others
      mark box tiles it does not reach); entries past ``gaussian_starts[-1]`` are unspecified.
    tile_ends: None for lists packed end to end; else [num_tiles] int32, lists kept each in its
      tile's segment of a binning (:func:`gi_jax.pallas.tile_lists.tile_lists`): tile t's pairs
      are ``tile_starts[t]:tile_ends[t]``, the slots after them up to ``tile_starts[t + 1]``
      unlisted, and ``gaussian_ids`` and ``tile_ids`` meaningless there (only the Pallas
      rasterizer reads such lists).
  """
  gaussian_ids: jax.Array
  tile_ids: jax.Array
  tile_starts: jax.Array
  count: jax.Array
  gaussian_starts: jax.Array
  gaussian_slots: jax.Array
  tile_ends: jax.Array | None = None

  @property
  def ends(self) -> jax.Array:
    """[num_tiles] int32: where each tile's pairs end, whichever the layout."""
    return self.tile_starts[..., 1:] if self.tile_ends is None else self.tile_ends

  @property
  def capacity(self) -> int:
    return self.gaussian_ids.shape[-1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Binning:
  """Every (tile, Gaussian) pair of the Gaussians' boxes, sorted by tile: a pytree.

  Made by :func:`bin_gaussians`; rendering with it (``gi_jax.render(..., binning=b)``) skips the
  sort for as long as it :func:`covers` the Gaussians. Leading batch dimensions are allowed on
  every array (vmap over sets).

  Attributes:
    tile_min, tile_max: [N, 2] int32 the boxes binned (with the margin).
    tile_ids: [capacity] int32 tile of each pair, sorted; ``num_tiles`` for unused slots.
    gaussian_ids: [capacity] int32 Gaussian of each pair; within a tile in increasing order.
    tile_starts: [num_tiles + 1] int32 where each tile's pairs start.
    gaussian_starts: [N + 1] int32 where each Gaussian's pairs start in Gaussian order (clamped
      to the capacity).
    pairs: [capacity] int32 the pair in each sorted slot, numbered in Gaussian order (the order
      the pairs are generated in, Gaussian by Gaussian: ``gaussian_starts`` indexes it).
    count: [] int32 the number of pairs; above the capacity the buffer overflowed.
    height, width: the image size (static).
    margin: pixels the boxes were widened by (static).
  """
  tile_min: jax.Array
  tile_max: jax.Array
  tile_ids: jax.Array
  gaussian_ids: jax.Array
  tile_starts: jax.Array
  gaussian_starts: jax.Array
  pairs: jax.Array
  count: jax.Array
  height: int = dataclasses.field(metadata=dict(static=True))
  width: int = dataclasses.field(metadata=dict(static=True))
  margin: float = dataclasses.field(default=0.0, metadata=dict(static=True))

  @property
  def capacity(self) -> int:
    return self.tile_ids.shape[-1]

  @property
  def num_gaussians(self) -> int:
    return self.tile_min.shape[-2]

  @property
  def grid(self) -> TileGrid:
    return TileGrid(self.height, self.width)


def project(gaussians: Gaussians, grid: TileGrid) -> Projection:
  """Projects raw Gaussians to pixel space and finds each one's box of tiles."""
  cov = gaussians.pixel_covariance(grid.height, grid.width)
  means = gaussians.pixel_means(grid.height, grid.width)
  conics = covariance_conic(cov)
  tile_min, tile_max = tile_boxes(means, cov, grid)
  return Projection(means, conics, gaussians.colors, tile_min, tile_max)


def tile_boxes(means, cov, grid: TileGrid, margin: float = 0.0,
               keep_degenerate: bool = False) -> tuple[jax.Array, jax.Array]:
  """First and one-past-last tile (tx, ty) of each Gaussian's box, clamped to the grid.

  The box holds the Gaussian's α >= 1/255 ellipse, whose half-widths are ``sqrt(2·ln 255·Σ_xx)``
  and ``sqrt(2·ln 255·Σ_yy)``, widened by ``margin`` pixels. Integers: no gradient flows through
  which tiles a Gaussian reaches. A Gaussian with ``det Σ <= 0`` has an empty box, unless
  ``keep_degenerate``: binnings and their coverage test keep its box, since ``det Σ`` of a needle
  can round to either side of 0 in two computations, and an empty binned box would then not cover
  the render's.

  Args:
    means: [..., N, 2] pixel positions.
    cov: [..., N, 3] covariances (a, b, c).
    grid: the tile grid.
    margin: pixels added to each half-width (>= 0).
    keep_degenerate: give a Gaussian with ``det Σ <= 0`` its box too.
  """
  means = jax.lax.stop_gradient(means)
  cov = jax.lax.stop_gradient(cov)
  variances = jnp.maximum(jnp.stack([cov[..., 0], cov[..., 2]], axis=-1), 0.0)
  half = jnp.sqrt(2.0 * BOX_SIGMA * variances) + margin
  grid_max = jnp.asarray([grid.tiles_x, grid.tiles_y], jnp.int32)
  lo = jnp.floor((means - half) / TILE)
  hi = jnp.floor((means + half) / TILE) + 1
  # Clip in float first: a far-away Gaussian must not overflow int32.
  tile_min = jnp.clip(lo, 0, grid_max).astype(jnp.int32)
  tile_max = jnp.clip(hi, 0, grid_max).astype(jnp.int32)
  if keep_degenerate:
    return tile_min, tile_max
  valid = covariance_determinant(cov) > 0
  return tile_min, jnp.where(valid[..., None], tile_max, tile_min)


def box_tiles(tile_min: jax.Array, tile_max: jax.Array) -> jax.Array:
  """[...] int32 number of tiles in each box."""
  extent = jnp.maximum(tile_max - tile_min, 0)
  return extent[..., 0] * extent[..., 1]


def count_intersections(projection: Projection) -> jax.Array:
  """[] int32 total number of (tile, Gaussian) pairs of the boxes."""
  return jnp.sum(projection.tiles_touched)


def max_intersections(gaussians: Gaussians, grid: TileGrid, margin: float = 0.0,
                      keep_degenerate: bool = False) -> int:
  """The largest box-pair count over a (possibly batched) Gaussian set [..., N]; concrete."""
  return int(_max_pairs(gaussians, grid, float(margin), keep_degenerate))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _max_pairs(gaussians: Gaussians, grid: TileGrid, margin: float,
               keep_degenerate: bool) -> jax.Array:
  means = gaussians.pixel_means(grid.height, grid.width)
  cov = gaussians.pixel_covariance(grid.height, grid.width)
  boxes = tile_boxes(means, cov, grid, margin, keep_degenerate)
  return jnp.max(jnp.sum(box_tiles(*boxes), -1))


def binning_capacity(gaussians: Gaussians, grid: TileGrid, margin: float = 0.0) -> int:
  """The capacity :func:`bin_gaussians` needs for these (concrete) Gaussians with ``margin``."""
  return bucket_capacity(max_intersections(gaussians, grid, margin + COVER_SLACK, True))


def covers(binning: Binning, gaussians: Gaussians, slack: float = 0.0) -> jax.Array:
  """[...] bool: whether ``binning`` still holds every pair of the Gaussians' current boxes.

  One elementwise test and one reduction: each non-empty current box (widened by ``slack``
  pixels) lies inside the box that Gaussian was binned with. While it holds, :func:`tile_lists`
  gives exactly a fresh binning's lists.
  """
  grid = binning.grid
  means = gaussians.pixel_means(grid.height, grid.width)
  tile_min, tile_max = tile_boxes(means, gaussians.pixel_covariance(grid.height, grid.width), grid,
                                  slack, keep_degenerate=True)
  return boxes_inside(tile_min, tile_max, binning)


@jax.jit
def _covers_all(binning: Binning, gaussians: Gaussians) -> jax.Array:
  return jnp.all(covers(binning, gaussians))


def boxes_inside(tile_min, tile_max, binning: Binning) -> jax.Array:
  """[...] bool: whether every non-empty box lies inside the box ``binning`` holds for it."""
  inside = (jnp.all(tile_min >= binning.tile_min, -1) & jnp.all(tile_max <= binning.tile_max, -1))
  empty = jnp.any(tile_max <= tile_min, -1)
  return jnp.all(inside | empty, -1)


def bin_gaussians(gaussians: Gaussians, height: int, width: int, *, margin: float = 0.0,
                  capacity: int | None = None) -> Binning:
  """Bins Gaussians into 16×16 tiles once, so that many renders can share the binning.

  Jittable and vmappable (a batch [..., N] gives a batch of binnings). Render with
  ``gi_jax.render(gaussians, height, width, binning=b)``: while every Gaussian's box lies inside
  the box it was binned with (``margin`` pixels wider on each side), the render is the same to the
  bit as one that bins afresh, and costs no sort; once one has left it, the render raises
  (concrete values) or is all NaN (traced), never a wrong image.

  Args:
    gaussians: a Gaussian set [N] or a batch [..., N].
    height: image height in pixels.
    width: image width in pixels.
    margin: pixels each box is widened by on every side (>= 0): room for the Gaussians to move
      and grow before the binning must be made again, at the price of more pairs to hold.
    capacity: static number of pair slots; None counts (concrete values) or uses
      :func:`default_capacity` (traced). ``count > capacity`` makes renders raise or NaN.

  Returns:
    A :class:`Binning`.

  Example:
    >>> b = gi_jax.bin_gaussians(g, 128, 128, margin=4.0)
    >>> image = gi_jax.render(g, 128, 128, binning=b)
  """
  height, width = check_size(height, width)
  margin = float(margin)
  if not margin >= 0 or not math.isfinite(margin):
    raise errors.InvalidInputError(f"margin must be a finite number >= 0, got {margin}")
  gaussians.validate()
  grid = TileGrid(height, width)
  if capacity is None:
    if is_concrete(gaussians.means_raw):
      capacity = binning_capacity(gaussians, grid, margin)
    else:
      capacity = default_capacity(gaussians.num_gaussians, grid)
  capacity = int(capacity)
  if capacity < 1:
    raise errors.InvalidInputError(f"capacity must be >= 1, got {capacity}")
  return _bin_compiled(gaussians, grid, margin, capacity)


# One compiled program per grid, margin and capacity (an eager call runs as one program).
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _bin_compiled(gaussians: Gaussians, grid: TileGrid, margin: float, capacity: int) -> Binning:
  batch_shape = gaussians.means_raw.shape[:-2]
  flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[len(batch_shape):]), gaussians)

  def one(g):
    means = g.pixel_means(grid.height, grid.width)
    tile_min, tile_max = tile_boxes(means, g.pixel_covariance(grid.height, grid.width), grid,
                                    margin + COVER_SLACK, keep_degenerate=True)
    return bin_boxes(tile_min, tile_max, grid, capacity, margin)

  binning = jax.vmap(one)(flat)
  return jax.tree.map(lambda x: x.reshape(batch_shape + x.shape[1:]), binning)


def bin_boxes(tile_min: jax.Array, tile_max: jax.Array, grid: TileGrid, capacity: int,
              margin: float = 0.0) -> Binning:
  """Every (tile, Gaussian) pair of the boxes, sorted by tile, in ``capacity`` slots (one set).

  The pairs are generated in Gaussian order (each box row by row) and put in tile order by one
  stable sort of (tile, slot): within a tile the Gaussians stay in increasing order, which fixes
  every summation order, and the pair number carried through the sort (``Binning.pairs``) ties
  each sorted slot to its place in Gaussian order, so nothing downstream sorts again.
  """
  touched = box_tiles(tile_min, tile_max)
  ends = jnp.cumsum(touched)
  count = ends[-1]
  starts = ends - touched
  slot = jnp.arange(capacity, dtype=jnp.int32)
  gid = slot_owners(starts, touched, capacity)
  local = slot - starts[gid]
  width = jnp.maximum(tile_max[gid, 0] - tile_min[gid, 0], 1)
  tile_x = tile_min[gid, 0] + local % width
  tile_y = tile_min[gid, 1] + local // width
  tile = jnp.where(slot < count, tile_y * grid.tiles_x + tile_x, grid.num_tiles).astype(jnp.int32)
  # Two operands, one of them the key: the shape XLA:GPU hands to a radix sort.
  tile, source = jax.lax.sort((tile, slot), num_keys=1, is_stable=True)
  gaussian_starts = jnp.minimum(jnp.concatenate([starts, count[None]]), capacity)
  return Binning(tile_min, tile_max, tile, jnp.where(tile < grid.num_tiles, gid[source], 0),
                 segment_starts(tile, grid.num_tiles), gaussian_starts.astype(jnp.int32),
                 source, count.astype(jnp.int32), grid.height, grid.width, margin)


# An eager call as one program rather than op by op (inside a trace it is inlined): integer index
# arithmetic only, so the result is the same, bit for bit.
_bin_boxes_compiled = functools.partial(jax.jit, static_argnums=(2, 3, 4))(bin_boxes)


# An eager call runs as one program rather than op by op (inside a trace it is inlined). Its one
# float test, alpha_reaches_tile, keeps a margin far above the rounding that differs between
# compiled and eager code, so the images and gradients drawn from the lists are the same bits.
@jax.jit
def tile_lists(binning: Binning, projection: Projection, first_tile_row=0) -> Bins:
  """The lists a rasterizer reads: the binning's pairs that the projected Gaussians reach (one set).

  With ``first_tile_row`` (an int or a traced int32 scalar), the binning's grid is a band of a
  larger image starting at that tile row: the projection's boxes are the band's (tile rows
  counted from it), its means and conics the larger image's, and the tile test is made where
  the tiles lie in that image, so a tile's list is exactly its list in the whole image's.

  A pair is listed where its tile is in the Gaussian's current box and its α can reach 1/255
  somewhere on the tile (:func:`alpha_reaches_tile`); kept pairs are packed in the binning's
  order, so each tile lists its Gaussians in increasing order. When ``binning`` covers the
  projection's boxes these are exactly the lists of a fresh binning, whatever its margin.
  Pairs are dropped by one prefix sum and one scatter, no sort. ``count`` is the binning's, or
  :data:`NOT_COVERED` when it does not cover the boxes.
  """
  grid = binning.grid
  capacity = binning.capacity
  gid, tile = binning.gaussian_ids, binning.tile_ids
  tile_x, tile_y = tile % grid.tiles_x, tile // grid.tiles_x
  # One gather of each Gaussian's box and one of its geometry, rows of 4 and 5 numbers.
  box = jnp.concatenate([projection.tile_min, projection.tile_max], axis=-1)[gid]
  in_box = ((tile_x >= box[:, 0]) & (tile_x < box[:, 2]) & (tile_y >= box[:, 1]) &
            (tile_y < box[:, 3]))
  geometry = jax.lax.stop_gradient(jnp.concatenate([projection.means, projection.conics], -1))
  geometry = geometry[gid]
  reaches = alpha_reaches_tile(geometry[:, :2], geometry[:, 2:], tile_x, tile_y + first_tile_row)
  keep = (tile < grid.num_tiles) & in_box & reaches
  kept_through = jnp.cumsum(keep, dtype=jnp.int32)
  slot = jnp.arange(capacity, dtype=jnp.int32)
  # Dropped pairs go to distinct slots past the end (discarded): all indices unique.
  dest = jnp.where(keep, kept_through - 1, capacity + slot)
  packed = jnp.stack([jnp.zeros_like(gid), jnp.full_like(tile, grid.num_tiles)], axis=-1)
  packed = packed.at[dest].set(jnp.stack([gid, tile], axis=-1), mode="drop",
                               unique_indices=True)
  kept_before = jnp.concatenate([jnp.zeros((1,), jnp.int32), kept_through])
  tile_starts = kept_before[binning.tile_starts]
  # Each pair's listed slot, put at its place in Gaussian order (pairs is a permutation).
  gaussian_slots = jnp.zeros((capacity,), jnp.int32).at[binning.pairs].set(
      jnp.where(keep, kept_through - 1, capacity), unique_indices=True)
  covered = boxes_inside(projection.tile_min, projection.tile_max, binning)
  count = jnp.where(covered, binning.count, NOT_COVERED).astype(jnp.int32)
  return Bins(packed[:, 0], packed[:, 1], tile_starts, count, binning.gaussian_starts,
              gaussian_slots)


def bin_intersections(projection: Projection, grid: TileGrid, capacity: int,
                      lists=None) -> Bins:
  """Bins one projected set afresh and returns its lists (:func:`bin_boxes`, then ``lists``:
  :func:`tile_lists` by default, or a backend's own, ``(binning, projection) -> Bins``)."""
  binning = _bin_boxes_compiled(projection.tile_min, projection.tile_max, grid, capacity, 0.0)
  return (lists or tile_lists)(binning, projection)


def check_binning(binning: Binning, gaussians: Gaussians, height: int, width: int) -> None:
  """Raises a clear error where ``binning`` cannot render ``gaussians`` at this size.

  Static checks (always): the image size and N it was made for. With concrete values, also that
  it covers the Gaussians (traced renders turn NaN instead).
  """
  if not isinstance(binning, Binning):
    raise errors.InvalidInputError(f"binning must be a gi_jax.Binning, got {type(binning).__name__}")
  if (binning.height, binning.width) != (height, width):
    raise errors.BinningError(f"the binning was made for {binning.height}×{binning.width} pixels, "
                              f"not {height}×{width}")
  if binning.num_gaussians != gaussians.num_gaussians:
    raise errors.BinningError(f"the binning was made for {binning.num_gaussians} Gaussians, not "
                              f"{gaussians.num_gaussians}")
  lead = gaussians.means_raw.shape[:-2]
  if binning.tile_min.shape[:-2] != lead:
    raise errors.BinningError(f"the binning's batch shape {binning.tile_min.shape[:-2]} differs "
                              f"from the Gaussians' {lead}")
  if is_concrete(gaussians.means_raw) and is_concrete(binning.tile_min):
    if not bool(_covers_all(binning, gaussians)):
      raise errors.BinningError(
          "the Gaussians have moved or grown out of the tiles they were binned to (margin "
          f"{binning.margin:g} px); bin them again (gi_jax.bin_gaussians) or use a larger margin")


# The two helpers below replace binary searches (jnp.searchsorted's default is a loop of ~log2(n)
# steps: on a GPU, small kernels launched one after another) with one scatter and one prefix scan,
# with the same results; faster on the CPU too (70,000 Gaussians at 768×512: 0.42 against 2.26 ms).

def slot_owners(starts: jax.Array, counts: jax.Array, capacity: int) -> jax.Array:
  """[capacity] int32: the index of the range each slot falls in, for ranges laid end to end.

  Range g covers slots ``starts[g]:starts[g] + counts[g]`` (``starts`` the exclusive cumulative
  sum of ``counts``); empty ranges own no slot. Slots past the last range get the last non-empty
  range's index (callers mask them).
  """
  owner = jnp.arange(counts.shape[0], dtype=jnp.int32)
  first = jnp.where(counts > 0, starts, capacity)   # empty ranges mark nothing
  marks = jnp.zeros((capacity,), jnp.int32).at[first].max(owner, mode="drop")
  return jax.lax.cummax(marks)


def segment_starts(sorted_keys: jax.Array, num_segments: int) -> jax.Array:
  """[num_segments + 1] int32: where each key's run starts in ascending ``sorted_keys``.

  Entry k is the number of keys below k (as ``searchsorted(sorted_keys, k, side="left")``); keys
  equal to ``num_segments`` (unused slots) count only towards the last entry.
  """
  counts = jnp.zeros((num_segments,), jnp.int32).at[sorted_keys].add(1, mode="drop")
  return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)])


def gaussian_sigma(a, b, c, dx, dy):
  """σ = ½(A·dx² + C·dy²) + B·dx·dy, so α = exp(−σ) (docs/design.md §3), with ``d = mean − pixel``.

  The one expression every rasterizer and :func:`alpha_reaches_tile` evaluate, so the tile test
  bounds the very quantity the renders threshold.
  """
  return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy


def alpha_reaches_tile(means, conics, tile_x, tile_y) -> jax.Array:
  """Whether a Gaussian's α can reach 1/255 at some pixel of a tile (False only when it cannot).

  The box of tiles ``floor((x ± r)/16)`` is loose for elongated or rotated Gaussians: in fitted
  sets a sixth to a third of the (tile, Gaussian) pairs see α < 1/255, hence exactly 0, at every
  pixel (docs/design.md §3).
  Such a tile adds exactly nothing to the image or the gradients, so leaving it out changes no
  sum and saves its 256-pixel evaluation. The test is the exact minimum of
  σ = ½(A·dx² + C·dy²) + B·dx·dy over the tile's pixel rectangle (on an edge: a clamped 1-D
  minimum), computed from the same ``mean − pixel`` differences as the rasterizers, against
  ln 255 with a margin far above float32 rounding of either side (σ's rounding differs between
  compiled programs by a few 1e-7 of its terms' magnitude: enough to flip an α that lies within
  that of 1/255, never one this test leaves out). NaN keeps the tile.

  Args:
    means: [...,  2] pixel positions.
    conics: [..., 3] (A, B, C).
    tile_x, tile_y: [...] int tile coordinates.

  Returns:
    [...] bool.
  """
  return alpha_reaches_tile_of(means[..., 0], means[..., 1], conics[..., 0], conics[..., 1],
                               conics[..., 2], tile_x, tile_y)


def alpha_reaches_tile_of(x, y, a, b, c, tile_x, tile_y) -> jax.Array:
  """:func:`alpha_reaches_tile` from the mean's and the conic's components, each [...] (for
  kernels, which cannot slice an array's last axis)."""
  dtype = x.dtype
  x0 = (tile_x * TILE).astype(dtype)
  y0 = (tile_y * TILE).astype(dtype)
  # The extreme pixels' differences, computed as the rasterizers compute every pixel's.
  dx_lo, dx_hi = x - (x0 + (TILE - 1)), x - x0
  dy_lo, dy_hi = y - (y0 + (TILE - 1)), y - y0
  sigma = functools.partial(gaussian_sigma, a, b, c)
  edge_minima = [sigma(e, jnp.clip(-b * e / c, dy_lo, dy_hi)) for e in (dx_lo, dx_hi)]
  edge_minima += [sigma(jnp.clip(-b * e / a, dx_lo, dx_hi), e) for e in (dy_lo, dy_hi)]
  lowest = functools.reduce(jnp.minimum, edge_minima)
  inside = (dx_lo <= 0) & (dx_hi >= 0) & (dy_lo <= 0) & (dy_hi >= 0)
  # Largest magnitude of σ's terms over the tile: float32 rounds each side by well under 1e-6 of
  # it, so the 1e-5 share plus 1e-3 leaves the decision to the rasterizer's own test.
  far_x = jnp.maximum(jnp.abs(dx_lo), jnp.abs(dx_hi))
  far_y = jnp.maximum(jnp.abs(dy_lo), jnp.abs(dy_hi))
  magnitude = 0.5 * (jnp.abs(a) * far_x * far_x + jnp.abs(c) * far_y * far_y) + (
      jnp.abs(b) * far_x * far_y)
  beyond = lowest > LOG_255 + 1e-3 + 1e-5 * magnitude
  return inside | ~beyond


def bucket_capacity(count: int, multiple: int = 256) -> int:
  """A capacity >= ``count`` from a coarse geometric ladder, so few distinct shapes get compiled.

  Steps of at most 1/8 above ``count``, rounded to ``multiple``.
  """
  count = max(int(count), 1)
  granule = max(multiple, 2 ** max(math.floor(math.log2(count)) - 3, 0))
  granule = -(-granule // multiple) * multiple
  return -(-count // granule) * granule


def default_capacity(num_gaussians: int, grid: TileGrid) -> int:
  """A capacity for traced code that cannot count first: 8 tiles per Gaussian on average.

  A freshly initialised Gaussian touches 1 to 4 tiles; a fitted one rarely more than a few. Fitting
  sizes the capacity from the true count instead, and any overflow is still reported.
  """
  return bucket_capacity(min(8 * num_gaussians, num_gaussians * grid.num_tiles) + 1)
