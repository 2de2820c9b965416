"""The Pallas tile lists (gi_jax.pallas.tile_lists): each tile's pairs the same as the packed
lists of gi_jax.binning.tile_lists, in the same order, so the Pallas rasterizer draws the same
bits from either; the backward's slots, counts and batches likewise."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax.experimental.pallas.fuser  # noqa: F401  (see tests/pallas/test_rasterize.py)

import gi_jax
from gi_jax import binning
from gi_jax.pallas.rasterize import rasterize as pallas_rasterize
from gi_jax.pallas.tile_lists import tile_lists as pallas_tile_lists
from tests.render_scenes import INTERPRET, make_scene


def moved(gaussians, shift):
  """The set with every mean nudged (raw units), so its boxes differ from those binned."""
  return dataclasses.replace(gaussians, means_raw=gaussians.means_raw + shift)


def lists_per_tile(bins):
  starts, ends = np.asarray(bins.tile_starts), np.asarray(bins.ends)
  ids = np.asarray(bins.gaussian_ids)
  return [ids[starts[t]:ends[t]].tolist() for t in range(len(ends))]


def both_lists(gaussians, height, width, margin, capacity=None, shift=0.0):
  grid = binning.TileGrid(height, width)
  binned = gi_jax.bin_gaussians(gaussians, height, width, margin=margin, capacity=capacity)
  proj = binning.project(moved(gaussians, shift), grid)
  return proj, binning.tile_lists(binned, proj), pallas_tile_lists(binned, proj,
                                                                   interpret=INTERPRET)


@pytest.mark.parametrize("scene,margin,shift", [("cholesky", 0.0, 0.0), ("cholesky", 4.0, 0.004),
                                                ("rs", 2.0, -0.002)])
def test_each_tile_lists_the_packed_lists_pairs_in_order(scene, margin, shift):
  gaussians, height, width = make_scene(scene)
  proj, packed, segmented = both_lists(gaussians, height, width, margin, shift=shift)
  assert packed.tile_ends is None and segmented.tile_ends is not None
  assert lists_per_tile(segmented) == lists_per_tile(packed)
  assert int(segmented.count) == int(packed.count)
  # The backward's view: each Gaussian's listed slots, in tile order, hold that Gaussian.
  per_tile = lists_per_tile(packed)
  for bins in (packed, segmented):
    starts, slots = np.asarray(bins.gaussian_starts), np.asarray(bins.gaussian_slots)
    ids = np.asarray(bins.gaussian_ids)
    for g in range(gaussians.num_gaussians):
      listed = [s for s in slots[starts[g]:starts[g + 1]] if s < bins.capacity]
      assert all(ids[s] == g for s in listed)
      assert len(listed) == sum(g in tile for tile in per_tile)


def test_the_rasterizer_draws_the_same_bits_from_either_layout():
  gaussians, height, width = make_scene("cholesky")
  proj, packed, segmented = both_lists(gaussians, height, width, 4.0, shift=0.003)
  cotangent = jnp.asarray(np.random.default_rng(5).normal(size=(height, width, 3)), jnp.float32)

  def value_and_vjp(bins):
    image, pullback = jax.vjp(
        lambda m, k, c: pallas_rasterize(m, k, c, bins, height, width, interpret=INTERPRET),
        proj.means, proj.conics, proj.colors)
    return image, pullback(cotangent)
  (image_p, grads_p), (image_s, grads_s) = value_and_vjp(packed), value_and_vjp(segmented)
  np.testing.assert_array_equal(image_s, image_p)
  for got, want in zip(grads_s, grads_p):
    np.testing.assert_array_equal(got, want)


def test_counts_report_overflow_and_gaussians_that_left_their_binning():
  gaussians, height, width = make_scene("cholesky")
  # An overflowing binning: the pairs that fit are listed, as in the packed lists.
  proj, packed, segmented = both_lists(gaussians, height, width, 0.0, capacity=100)
  assert int(segmented.count) == int(packed.count) > 100
  assert lists_per_tile(segmented) == lists_per_tile(packed)
  # Moved far: no longer covered.
  _, packed, segmented = both_lists(gaussians, height, width, 0.0, shift=0.2)
  assert int(segmented.count) == int(packed.count) == binning.NOT_COVERED


def test_batches_list_each_set_as_alone():
  gaussians, height, width = make_scene("cholesky")
  batch = jax.tree.map(lambda a, b: jnp.stack([a, b]), gaussians, moved(gaussians, 0.01))
  binned = gi_jax.bin_gaussians(batch, height, width, margin=4.0)
  grid = binning.TileGrid(height, width)
  proj = jax.vmap(lambda g: binning.project(g, grid))(batch)
  lists = jax.vmap(lambda b, p: pallas_tile_lists(b, p, interpret=INTERPRET))(binned, proj)
  for i in range(2):
    one = jax.tree.map(lambda a: a[i], lists)
    alone = binning.tile_lists(jax.tree.map(lambda a: a[i], binned),
                               jax.tree.map(lambda a: a[i], proj))
    assert lists_per_tile(one) == lists_per_tile(alone)
