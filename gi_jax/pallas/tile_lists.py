"""Pallas (Triton) tile lists: a binning's pairs the projected Gaussians reach, in one kernel.

The same lists as :func:`gi_jax.binning.tile_lists`, laid out differently: where that packs every
tile's kept pairs end to end (a prefix scan over all pairs, a scatter, a gather of the tile
starts: about ten kernels on a GPU), this keeps each tile's pairs inside the tile's own segment of
the binning, ``tile_starts[t]:tile_ends[t]`` with ``tile_starts`` the binning's, so no program
needs another's count: one kernel, one program per tile, which also writes the backward's
slots (each pair's new slot at its place in Gaussian order, through ``Binning.pairs``).

The Pallas rasterizer reads a tile's pairs from ``tile_starts[t]`` to ``tile_ends[t]`` whichever
the layout, in the same order (the binning's: increasing Gaussian index), so its chunks of G pairs
hold the same Gaussians as with packed lists and the image and gradients are the same bits.

A pair is kept where its tile lies in the Gaussian's current box and
:func:`gi_jax.binning.alpha_reaches_tile` holds, as in the packed lists; the float test compiled
into this kernel may round differently from XLA's, which could only keep or drop a pair whose α
stays below 1/255 on the whole tile (it adds exactly nothing), and a fit bins with the same kernel
every time, so a reused binning still gives a fresh binning's bits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gi_jax import binning as binning_lib
from gi_jax.binning import Binning, Bins, Projection
from gi_jax.pallas.rasterize import parameter_table

# Pairs a program tests at once (a power of two), and its warps.
LISTS_BLOCK = 64
LISTS_PARAMS = plgpu.CompilerParams(num_warps=2, num_stages=1)


def _lists_kernel(starts_ref, ids_ref, pairs_ref, min_ref, max_ref, params_ref, kept_ids_ref,
                  slots_ref, ends_ref, *, tiles_x: int, block: int, capacity: int):
  """One tile: its kept pairs' Gaussians packed at the front of its segment, each of its binned
  pairs' new slot (``capacity`` where dropped) at the pair's place in Gaussian order, and the
  segment's end."""
  tile = pl.program_id(0)
  tile_x, tile_y = lax.rem(tile, tiles_x), lax.div(tile, tiles_x)
  start, end = starts_ref[tile], starts_ref[tile + 1]

  lane = jnp.arange(block, dtype=jnp.int32)
  # Masked lanes of a store write nothing on a GPU; the interpreter writes them back, so each gets
  # an index of its own past the end, which its scatter drops.
  nowhere = capacity + lane

  def body(i, written):
    slots = start + i * block + lane
    valid = slots < end
    gid = plgpu.load(ids_ref.at[slots], mask=valid, other=0)
    pair = plgpu.load(pairs_ref.at[slots], mask=valid, other=0)
    lo = [plgpu.load(min_ref.at[k, gid]) for k in range(2)]
    hi = [plgpu.load(max_ref.at[k, gid]) for k in range(2)]
    in_box = (tile_x >= lo[0]) & (tile_x < hi[0]) & (tile_y >= lo[1]) & (tile_y < hi[1])
    geometry = [plgpu.load(params_ref.at[gid, k]) for k in range(5)]
    reaches = binning_lib.alpha_reaches_tile_of(*geometry, tile_x, tile_y)
    keep = valid & in_box & reaches
    # Kept pairs move to the front of the segment, in order: each address is written once, by
    # one lane, so no ordering between lanes or blocks is needed.
    new_slot = start + written + jnp.cumsum(keep.astype(jnp.int32)) - 1
    plgpu.store(kept_ids_ref.at[jnp.where(keep, new_slot, nowhere)], gid, mask=keep)
    # pairs is a permutation: each Gaussian-order place is written once, by one lane.
    plgpu.store(slots_ref.at[jnp.where(valid, pair, nowhere)],
                jnp.where(keep, new_slot, capacity), mask=valid)
    return written + jnp.sum(keep.astype(jnp.int32))

  kept = lax.fori_loop(0, pl.cdiv(end - start, block), body, jnp.int32(0))
  ends_ref[tile] = start + kept


@functools.partial(jax.jit, static_argnames=("interpret",))
def tile_lists(binning: Binning, projection: Projection, *, interpret: bool = False) -> Bins:
  """The :class:`~gi_jax.binning.Bins` of one projected set, each tile's within its segment.

  Same contract as :func:`gi_jax.binning.tile_lists` (no band offset), with ``tile_ends`` set:
  slots between ``tile_ends[t]`` and ``tile_starts[t + 1]`` are not listed.
  """
  grid = binning.grid
  capacity = binning.capacity
  kept_ids, gaussian_slots, ends = pl.pallas_call(
      functools.partial(_lists_kernel, tiles_x=grid.tiles_x, block=LISTS_BLOCK,
                        capacity=capacity),
      grid=(grid.num_tiles,),
      in_specs=[pl.no_block_spec] * 6,
      out_specs=[pl.no_block_spec] * 3,
      # Unlisted slots, and the places of pairs past the binning's count, are never written; no
      # rasterizer reads them.
      out_shape=[jax.ShapeDtypeStruct((capacity,), jnp.int32),
                 jax.ShapeDtypeStruct((capacity,), jnp.int32),
                 jax.ShapeDtypeStruct((grid.num_tiles,), jnp.int32)],
      compiler_params=LISTS_PARAMS,
      interpret=interpret,
      name="gi_tile_lists",
  )(binning.tile_starts, binning.gaussian_ids, binning.pairs, projection.tile_min.T,
    projection.tile_max.T,
    # The rasterizer's table: the same expression, so a render computes it once for both.
    parameter_table(*(lax.stop_gradient(x) for x in
                      (projection.means, projection.conics, projection.colors))))
  covered = binning_lib.boxes_inside(projection.tile_min, projection.tile_max, binning)
  count = jnp.where(covered, binning.count, binning_lib.NOT_COVERED).astype(jnp.int32)
  return Bins(kept_ids, binning.tile_ids, binning.tile_starts, count, binning.gaussian_starts,
              gaussian_slots, ends)


def tile_lists_for_backend(binning: Binning, projection: Projection) -> Bins:
  """The ``"pallas"`` backend's lists: the kernel compiled on a GPU, interpreted elsewhere."""
  return tile_lists(binning, projection, interpret=jax.default_backend() != "gpu")
