"""Binning once and rendering many times: ``gi_jax.bin_gaussians``, ``render(binning=)`` and fits
that reuse their binning (``gi_jax.BinReuse``), against binning afresh, to the bit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gi_jax
from gi_jax import binning, errors

H, W = 40, 56


def scene(seed=0, n=150, spread=1.0):
  rng = np.random.default_rng(seed)
  means_raw = rng.normal(0.0, spread, (n, 2))
  cov_raw = rng.uniform(-0.2, 1.5, (n, 3))
  colors = rng.uniform(-0.1, 0.6, (n, 3))
  return gi_jax.Gaussians(*(jnp.asarray(x, jnp.float32) for x in (means_raw, cov_raw, colors)))


def moved(g, pixels):
  """``g`` with every mean shifted by ``pixels`` along x (in pixel units, through the tanh)."""
  x = 0.5 * W * (jnp.tanh(g.means_raw[:, 0]) + 1.0) + pixels
  raw_x = jnp.arctanh(jnp.clip(2.0 * x / W - 1.0, -0.999, 0.999))
  return gi_jax.Gaussians(g.means_raw.at[:, 0].set(raw_x), g.cov_raw, g.colors)


def target():
  rng = np.random.default_rng(1)
  ramp = np.linspace(0.0, 0.6, W, dtype=np.float32)[None, :, None]
  return np.clip(rng.uniform(0, 0.3, (H, W, 3)).astype(np.float32) + ramp, 0.0, 1.0)


def same_tree(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_tile_lists_of_a_covering_binning_are_those_of_a_fresh_one():
  g = scene()
  grid = binning.TileGrid(H, W)
  near = moved(g, 1.5)   # within a 3-pixel margin
  binned = gi_jax.bin_gaussians(g, H, W, margin=3.0, capacity=4096)
  assert bool(binning.covers(binned, near))
  proj = binning.project(near, grid)
  reused = binning.tile_lists(binned, proj)
  fresh = binning.bin_intersections(proj, grid, 4096)
  for field in ("gaussian_ids", "tile_ids", "tile_starts"):
    np.testing.assert_array_equal(getattr(reused, field), getattr(fresh, field))
  assert int(reused.count) == int(binned.count) > int(fresh.count)

  # Each Gaussian's listed slots, read through either permutation, are the same in tile order.
  def per_gaussian(bins):
    slots = np.asarray(bins.gaussian_slots)
    starts = np.asarray(bins.gaussian_starts)
    return [[s for s in slots[starts[i]:starts[i + 1]] if s < bins.capacity]
            for i in range(g.num_gaussians)]
  assert per_gaussian(reused) == per_gaussian(fresh)


@pytest.mark.parametrize("backend", ["reference", "pallas"])
def test_render_with_a_binning_is_bit_identical(backend):
  g = scene(2)
  weights = jnp.asarray(np.random.default_rng(3).normal(size=(H, W, 3)), jnp.float32)
  binned = gi_jax.bin_gaussians(g, H, W, margin=4.0)
  near = moved(g, 2.0)

  @jax.jit
  def fresh(g):
    return jax.value_and_grad(lambda g: jnp.sum(gi_jax.render(g, H, W, backend,
                                                              capacity=binned.capacity) * weights))(g)

  @jax.jit
  def reused(g, b):
    return jax.value_and_grad(lambda g: jnp.sum(gi_jax.render(g, H, W, backend, binning=b)
                                                * weights))(g)

  assert same_tree(fresh(near), reused(near, binned))
  assert np.array_equal(gi_jax.render(near, H, W, backend), gi_jax.render(near, H, W, backend,
                                                                          binning=binned))


def test_binning_vmaps_over_sets():
  sets = [scene(s) for s in range(3)]
  batch = jax.tree.map(lambda *x: jnp.stack(x), *sets)
  binned = gi_jax.bin_gaussians(batch, H, W, margin=2.0)
  assert binned.tile_ids.shape[0] == 3
  images = jax.jit(jax.vmap(lambda g, b: gi_jax.render(g, H, W, "reference", binning=b)))(
      batch, binned)
  fresh = jax.jit(jax.vmap(lambda g: gi_jax.render(g, H, W, "reference",
                                                   capacity=binned.capacity)))(batch)
  np.testing.assert_array_equal(images, fresh)
  together = gi_jax.render(batch, H, W, "reference", binning=binned)   # eager: rounded otherwise
  np.testing.assert_allclose(together, images, atol=1e-5)
  for i, g in enumerate(sets):
    # One set alone: the same sums, vectorised differently (float32 rounding).
    np.testing.assert_allclose(images[i], gi_jax.render(g, H, W, "reference"), atol=1e-5)


def test_a_binning_is_never_used_where_it_would_be_wrong():
  g = scene(4)
  binned = gi_jax.bin_gaussians(g, H, W, margin=1.0)
  far = moved(g, 20.0)
  assert not bool(binning.covers(binned, far))
  with pytest.raises(errors.BinningError, match="bin them again"):
    gi_jax.render(far, H, W, binning=binned)
  traced = jax.jit(lambda g, b: gi_jax.render(g, H, W, "reference", binning=b))(far, binned)
  assert bool(jnp.isnan(traced).all())
  image, count = jax.jit(lambda g, b: gi_jax.render_with_count(g, H, W, "reference",
                                                               binning=b))(far, binned)
  assert int(count) == binning.NOT_COVERED
  with pytest.raises(errors.BinningError, match="32×56"):
    gi_jax.render(g, 32, W, binning=binned)
  with pytest.raises(errors.BinningError, match="150 Gaussians, not 149"):
    gi_jax.render(jax.tree.map(lambda x: x[:149], g), H, W, binning=binned)
  with pytest.raises(errors.InvalidInputError, match="not both"):
    gi_jax.render(g, H, W, capacity=binned.capacity, binning=binned)
  with pytest.raises(errors.InvalidInputError, match="margin"):
    gi_jax.bin_gaussians(g, H, W, margin=-1.0)
  with pytest.raises(errors.InvalidInputError, match="BinReuse.margin"):
    gi_jax.BinReuse(margin=float("nan"))


def test_an_overflowing_binning_is_never_silent():
  g = scene(5)
  binned = gi_jax.bin_gaussians(g, H, W, capacity=64)
  assert int(binned.count) > 64
  with pytest.raises(errors.CapacityOverflowError):
    gi_jax.render(g, H, W, binning=binned)
  traced = jax.jit(lambda g, b: gi_jax.render(g, H, W, "reference", binning=b))(g, binned)
  assert bool(jnp.isnan(traced).all())


@pytest.mark.parametrize("backend", ["reference", "pallas"])
def test_fit_reusing_its_binning_equals_binning_every_step(backend):
  # A learning rate 30x the paper's moves Gaussians by pixels a step early on, so the binning is
  # made again many times (and kept for most steps): the fit must not change by one bit.
  image = target()
  kwargs = dict(backend=backend, progress=False, learning_rate=3e-2, steps_per_call=50)
  every_step = gi_jax.fit(image, 150, 200, bin_reuse=None, **kwargs)
  reused = gi_jax.fit(image, 150, 200, bin_reuse=gi_jax.BinReuse(margin=2.0), **kwargs)
  assert same_tree(every_step.gaussians, reused.gaussians)
  binnings = sum(record["binnings"] for record in reused.history)
  assert 4 < binnings < 50, binnings   # at least one per call, and far fewer than steps
  assert sum(record["binnings"] for record in every_step.history) == 200


def test_fit_batch_reusing_its_binning_equals_binning_every_step():
  images = [target(), target()[:, ::-1].copy()]
  kwargs = dict(progress=False, learning_rate=3e-2, steps_per_call=40, backend="reference",
                mesh=gi_jax.sharding.default_mesh(1))
  every_step = gi_jax.fit_batch(images, 120, 80, bin_reuse=None, **kwargs)
  reused = gi_jax.fit_batch(images, 120, 80, bin_reuse=gi_jax.BinReuse(margin=1.0, every=15),
                            **kwargs)
  for a, b in zip(every_step, reused):
    assert same_tree(a.gaussians, b.gaussians)


def test_unrolled_fit_loop_takes_the_same_steps():
  # XLA compiles each unrolled copy of the step on its own, so float rounding may differ (and a
  # 70-step fit at 30x the paper's rate amplifies it); the steps and the fit are the same.
  image = target()
  kwargs = dict(backend="reference", progress=False, learning_rate=3e-2, steps_per_call=30,
                bin_reuse=None)
  plain = gi_jax.fit(image, 100, 70, **kwargs)
  unrolled = gi_jax.fit(image, 100, 70, unroll=4, **kwargs)
  assert [r["step"] for r in unrolled.history] == [30, 60, 70]
  np.testing.assert_allclose([r["psnr"] for r in unrolled.history],
                             [r["psnr"] for r in plain.history], atol=1e-3)


def test_unrolled_loop_reusing_a_binning_keeps_only_the_steps_it_covers():
  # Moving fast (30x the paper's rate) the Gaussians leave a 1 px margin every few steps, often
  # inside an unrolled block: a step the binning no longer covers is thrown away and taken again
  # after binning, so the fit is the one-step loop's (to float rounding).
  image = target()
  kwargs = dict(backend="reference", progress=False, learning_rate=3e-2, steps_per_call=30,
                bin_reuse=gi_jax.BinReuse(margin=1.0))
  plain = gi_jax.fit(image, 100, 70, **kwargs)
  unrolled = gi_jax.fit(image, 100, 70, unroll=4, **kwargs)
  assert [r["step"] for r in unrolled.history] == [30, 60, 70]
  binnings = [r["binnings"] for r in plain.history]
  assert sum(binnings) > 7 and [r["binnings"] for r in unrolled.history] == binnings
  np.testing.assert_allclose([r["psnr"] for r in unrolled.history],
                             [r["psnr"] for r in plain.history], atol=1e-3)


def test_a_needle_binned_degenerate_stays_covered_when_it_fattens():
  # det Σ of a needle can round to either side of 0 in the step's coverage test and in the
  # render's: a binning keeps a degenerate Gaussian's box, so a box that reappears is covered.
  g = gi_jax.init_gaussians(jax.random.key(0), 8, 64, 64)
  needle = dataclasses.replace(g, cov_raw=g.cov_raw.at[0, 2].set(-0.5))  # l22 = 0: det Σ = 0
  b = gi_jax.bin_gaussians(needle, 64, 64, margin=1.0)
  assert bool(jnp.all(b.tile_max[0] > b.tile_min[0]))  # its box is binned, not empty
  fattened = dataclasses.replace(needle, cov_raw=needle.cov_raw.at[0, 2].add(1e-3))
  assert bool(binning.covers(b, fattened))
  np.testing.assert_array_equal(gi_jax.render(fattened, 64, 64, binning=b),
                                gi_jax.render(fattened, 64, 64))
