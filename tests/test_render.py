"""Every backend on one set of scenes against the dense oracle (TestScenes), the reference
backend's own rules (its vmap rule, spare capacity, second derivatives), binning's pairs, and
render's contract."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gi_jax
import gi_jax.raster_reference
from gi_jax import binning, errors
from gi_jax.raster_dense import rasterize_dense
from gi_jax.render import resolve_backend
from tests.render_scenes import (FWD_TOL, H, W, assert_grads_close, capacity_for, loss_image_grads,
                                 make_scene, paper_init, project_and_bin, relative_grad_error,
                                 target_for)

FORWARD_TOL = 1e-5
BACKENDS = ["reference", "pallas"]


def random_gaussians(seed, n, height, width, scale=1.0, parameterization="cholesky",
                     dtype=jnp.float32):
  """Random Gaussians over (and somewhat beyond) the image, various sizes and colours."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  means_raw = jax.random.normal(k1, (n, 2), dtype) * 1.2
  cov_raw = jax.random.uniform(k2, (n, 3), dtype, -1.0, 2.0) * scale
  colors = jax.random.uniform(k3, (n, 3), dtype, -0.2, 0.8)
  return gi_jax.Gaussians(means_raw, cov_raw, colors, parameterization)


def dense(gaussians, height, width):
  proj = binning.project(gaussians, binning.TileGrid(height, width))
  return jnp.clip(rasterize_dense(proj, height, width), 0.0, 1.0)


def test_entirely_off_image_gaussians_touch_no_tile():
  height, width = 32, 32
  grid = binning.TileGrid(height, width)
  proj = binning.project(random_gaussians(2, 10, height, width), grid)
  # tanh keeps pixel means inside the image; build a projection whose means are far outside.
  means = jnp.asarray([[-50.0, 10.0], [10.0, -50.0], [90.0, 10.0], [10.0, 90.0], [-40.0, -40.0],
                       [-3.5, 10.0], [35.5, 10.0], [10.0, 36.0], [100.0, 100.0], [-1e9, 1e9]])
  cov = jnp.tile(jnp.asarray([[1.0, 0.0, 1.0]]), (10, 1))   # α reaches 3.4 px from the mean
  tile_min, tile_max = binning.tile_boxes(means, cov, grid)
  proj = proj._replace(means=means, conics=binning.covariance_conic(cov), tile_min=tile_min,
                       tile_max=tile_max)
  assert int(binning.count_intersections(proj)) == 0
  bins = binning.bin_intersections(proj, grid, 16)
  out = gi_jax.raster_reference.rasterize(proj.means, proj.conics, proj.colors, bins, height, width)
  np.testing.assert_array_equal(out, 0.0)
  np.testing.assert_array_equal(rasterize_dense(proj, height, width), 0.0)


def tile_alphas(proj, grid, tile_ids, gaussian_ids):
  """[K, 256] the rasterizer's alphas of each (tile, Gaussian) pair on the tile's pixels."""
  tile_ids, gaussian_ids = jnp.asarray(tile_ids), jnp.asarray(gaussian_ids)
  px, py = gi_jax.raster_reference.tile_pixel_coords(tile_ids, grid.tiles_x, jnp.float32)
  alpha, _, _ = gi_jax.raster_reference.gaussian_alpha(
      proj.means[gaussian_ids][:, None], proj.conics[gaussian_ids][:, None], px, py)
  return alpha


def box_intersections(proj, grid):
  """Every (tile, Gaussian) pair of the tile boxes of docs/design.md §2."""
  pairs = set()
  tmin, tmax = np.asarray(proj.tile_min), np.asarray(proj.tile_max)
  for g in range(tmin.shape[0]):
    for ty in range(tmin[g, 1], tmax[g, 1]):
      for tx in range(tmin[g, 0], tmax[g, 0]):
        pairs.add((ty * grid.tiles_x + tx, g))
  return pairs


def test_binning_lists_every_intersection_grouped_by_tile():
  height, width = 48, 80
  grid = binning.TileGrid(height, width)
  proj = binning.project(random_gaussians(4, 100, height, width, scale=3.0), grid)
  bins = binning.bin_intersections(proj, grid, 4096)
  live = int(bins.tile_starts[-1])
  tiles = np.asarray(bins.tile_ids[:live])
  gids = np.asarray(bins.gaussian_ids[:live])
  assert (np.diff(tiles) >= 0).all()
  assert (np.asarray(bins.tile_ids[live:]) == grid.num_tiles).all()
  # The count is the boxes' (what the buffer must hold); the listed pairs are the boxes' less
  # those where the Gaussian's alpha is 0 on every pixel of the tile.
  box = box_intersections(proj, grid)
  assert int(bins.count) == len(box)
  listed = set(zip(tiles.tolist(), gids.tolist()))
  assert len(listed) == live and listed <= box
  left_out = sorted(box - listed)
  assert left_out, "no tile was left out: the test checks nothing"
  np.testing.assert_array_equal(tile_alphas(proj, grid, *zip(*left_out)), 0.0)
  starts = np.asarray(bins.tile_starts)
  for t in range(grid.num_tiles):
    assert (tiles[starts[t]:starts[t + 1]] == t).all()


@pytest.mark.parametrize("case", ["elongated", "tiny", "threshold"])
def test_no_pixel_above_the_alpha_threshold_is_left_out(case):
  # A pixel sees every Gaussian whose α >= 1/255 there: every (tile, Gaussian) pair that binning
  # does not list, inside the Gaussian's box or outside it, has α = 0 on all its pixels.
  # Adversarial sets: needles up to 1,200:1 at every angle, Gaussians of under a pixel, and
  # Gaussians whose lowest σ on a nearby tile sits within 1e-4 of ln 255.
  height, width = 96, 128
  grid = binning.TileGrid(height, width)
  rng = np.random.default_rng(7)
  n = 400
  means = rng.uniform([-8, -8], [width + 8, height + 8], (n, 2))
  angle = rng.uniform(0, np.pi, n)
  if case == "elongated":
    major, minor = rng.uniform(2, 60, n), rng.uniform(0.05, 2, n)
  elif case == "tiny":
    major, minor = rng.uniform(0.05, 0.8, n), rng.uniform(0.05, 0.8, n)
  else:
    major = minor = rng.uniform(1, 6, n)
    # Isotropic, on a pixel row, left of a tile whose first column is at σ = ln 255 ± 1e-4.
    offset = np.sqrt(2 * (binning.LOG_255 + rng.uniform(-1e-4, 1e-4, n))) * major
    means[:, 0] = 16 * rng.integers(1, grid.tiles_x, n) - offset
    means[:, 1] = rng.integers(0, height, n)
  along = np.stack([np.cos(angle), np.sin(angle)], -1)
  across = np.stack([-along[:, 1], along[:, 0]], -1)
  outer = lambda v: v[:, :, None] * v[:, None, :]
  cov = major[:, None, None] ** 2 * outer(along) + minor[:, None, None] ** 2 * outer(across)
  cov = jnp.asarray(np.stack([cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]], -1), jnp.float32)
  means = jnp.asarray(means, jnp.float32)
  tile_min, tile_max = binning.tile_boxes(means, cov, grid)
  proj = binning.Projection(means, binning.covariance_conic(cov), jnp.ones((n, 3)), tile_min,
                            tile_max)
  box = box_intersections(proj, grid)
  bins = binning.bin_intersections(proj, grid, binning.bucket_capacity(len(box)))
  live = int(bins.tile_starts[-1])
  listed = set(zip(np.asarray(bins.tile_ids[:live]).tolist(),
                   np.asarray(bins.gaussian_ids[:live]).tolist()))
  assert listed < box and int(bins.count) == len(box)
  every_pair = {(t, g) for t in range(grid.num_tiles) for g in range(n)}
  left_out = sorted(every_pair - listed)
  tiles, gids = (np.asarray(x) for x in zip(*left_out))
  np.testing.assert_array_equal(tile_alphas(proj, grid, tiles, gids), 0.0)
  alphas_jit = jax.jit(tile_alphas, static_argnums=1)(proj, grid, tiles, gids)
  np.testing.assert_array_equal(alphas_jit, 0.0)
  # And the images agree with the dense oracle, which evaluates every pixel.
  out = gi_jax.raster_reference.rasterize(proj.means, proj.conics, proj.colors, bins, height,
                                          width)
  np.testing.assert_allclose(out, rasterize_dense(proj, height, width), atol=FORWARD_TOL)


def _loss(render_fn, g, weights):
  return jnp.sum(render_fn(g) * weights)


def test_gradients_match_finite_differences_float64():
  with jax.enable_x64(True):
    height, width = 21, 19
    g = random_gaussians(9, 12, height, width, scale=3.0, dtype=jnp.float64)
    # Colours small enough that clipping at 1 never binds, so the loss is smooth.
    g = gi_jax.Gaussians(g.means_raw, g.cov_raw, jnp.abs(g.colors) * 0.05)
    weights = jax.random.normal(jax.random.key(10), (height, width, 3), jnp.float64)

    @jax.jit
    def loss(g):
      return _loss(lambda g: gi_jax.render(g, height, width, "reference", capacity=512), g,
                   weights)

    grads = jax.grad(loss)(g)
    eps = 1e-6
    rng = np.random.default_rng(0)
    for field in ("means_raw", "cov_raw", "colors"):
      value = np.asarray(getattr(g, field))
      for _ in range(6):
        i, j = rng.integers(value.shape[0]), rng.integers(value.shape[1])
        plus, minus = value.copy(), value.copy()
        plus[i, j] += eps
        minus[i, j] -= eps
        numeric = (loss(_replace(g, field, plus)) - loss(_replace(g, field, minus))) / (2 * eps)
        analytic = getattr(grads, field)[i, j]
        assert abs(numeric - analytic) <= 1e-5 * max(1.0, abs(numeric)), (field, i, j)


@pytest.mark.parametrize("scene", ["cholesky", "rs", "edge_cases"])
def test_reference_gradients_are_as_accurate_as_the_dense_oracles(scene):
  # The backward rebuilds its second-order pixel sums from first-order ones (u·Σ dσ·dx −
  # Σ dσ·dx·x). Against float64 its gradients must stay about as close as the float32 dense
  # oracle's (the edge-case scene holds 1,100 Gaussians far smaller than their tile, where sums
  # rebuilt from the tile's moments alone lost 6× more).
  with jax.enable_x64(True):
    g, height, width = make_scene(scene)
    target = target_for(height, width)
    capacity = capacity_for(g, height, width)

    def grads(dtype, backend):
      cast = lambda x: x.astype(dtype)
      return jax.tree.leaves(loss_image_grads(jax.tree.map(cast, g), cast(target), backend,
                                              capacity)[1])

    def error(got, truth):
      return max(float(relative_grad_error(x, t).max()) for x, t in zip(got, truth))

    truth = grads(jnp.float64, "dense")
    dense_error = error(grads(jnp.float32, "dense"), truth)
    assert error(grads(jnp.float32, "reference"), truth) <= 3 * dense_error + 1e-6


def _replace(g, field, value):
  fields = dict(means_raw=g.means_raw, cov_raw=g.cov_raw, colors=g.colors)
  fields[field] = jnp.asarray(value)
  return gi_jax.Gaussians(**fields, parameterization=g.parameterization)


def test_jit_vmap_grad_compose():
  height, width = 24, 40
  batch = jax.vmap(lambda k: gi_jax.init_gaussians(k, 50, height, width))(
      jax.random.split(jax.random.key(11), 3))
  single = [jax.tree.map(lambda x: x[i], batch) for i in range(3)]
  expected = jnp.stack([gi_jax.render(g, height, width, "reference") for g in single])

  render_jit = jax.jit(lambda g: gi_jax.render(g, height, width, "reference", capacity=2048))
  np.testing.assert_allclose(jax.vmap(render_jit)(batch), expected, atol=1e-6)
  np.testing.assert_allclose(gi_jax.render(batch, height, width, "reference"), expected, atol=1e-6)

  grad_fn = jax.jit(jax.vmap(jax.grad(lambda g: jnp.sum(
      gi_jax.render(g, height, width, "reference", capacity=2048) ** 2))))
  grads = grad_fn(batch)
  grad_one = jax.jit(jax.grad(lambda g: jnp.sum(gi_jax.render(g, height, width, "reference") ** 2)))
  for i in range(3):
    one = grad_one(single[i])
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], grads)), jax.tree.leaves(one)):
      # Same sums in another order (the capacity differs): agree to float32 rounding.
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("seed, capacity", [(0, 64), (1, 200), (2, 7), (3, 1)])
def test_slot_owners_and_segment_starts_match_binary_search(seed, capacity):
  # Binning's loop-free helpers give what jnp.searchsorted gives, with empty ranges, capacities
  # below and above the total, and unused keys (== number of segments) at the end.
  rng = np.random.default_rng(seed)
  counts = rng.integers(0, 4, 40) * (rng.random(40) < 0.6)
  ends = np.cumsum(counts)
  owners = binning.slot_owners(jnp.asarray(ends - counts, jnp.int32), jnp.asarray(counts, jnp.int32),
                               capacity)
  used = min(int(ends[-1]), capacity)
  np.testing.assert_array_equal(owners[:used],
                                np.searchsorted(ends, np.arange(used), side="right"))
  segments = 12
  keys = np.sort(rng.integers(0, segments + 1, capacity)).astype(np.int32)
  np.testing.assert_array_equal(binning.segment_starts(jnp.asarray(keys), segments),
                                np.searchsorted(keys, np.arange(segments + 1), side="left"))


def test_spare_capacity_changes_no_bit():
  # The reference backend walks only the chunks that hold intersections; a capacity far above the
  # count (fitting keeps 1.5x) must give the very same image and gradients, also under vmap, where
  # the sets' counts differ.
  height, width = 64, 80
  batch = jax.vmap(lambda k: random_gaussians(k, 300, height, width, scale=4.0))(
      jnp.arange(13, 15))
  single = [jax.tree.map(lambda x: x[i], batch) for i in range(2)]
  counts = [int(gi_jax.render_with_count(g, height, width, "reference")[1]) for g in single]
  tight = binning.bucket_capacity(max(counts))
  assert min(counts) > gi_jax.raster_reference.CHUNK  # same chunk size at both capacities
  weights = jax.random.normal(jax.random.key(15), (height, width, 3))

  def image_and_grad(capacity):
    loss = lambda g: jnp.sum(gi_jax.render(g, height, width, "reference", capacity=capacity)
                             * weights)
    return jax.jit(jax.vmap(jax.value_and_grad(loss)))(batch)

  for a, b in zip(jax.tree.leaves(image_and_grad(tight)),
                  jax.tree.leaves(image_and_grad(4 * tight))):
    np.testing.assert_array_equal(a, b)
  # ... and every intersection is still drawn (a lost last chunk would pass the check above).
  images = gi_jax.render(batch, height, width, "reference", capacity=4 * tight)
  for i, g in enumerate(single):
    np.testing.assert_allclose(images[i], dense(g, height, width), atol=FORWARD_TOL)


@pytest.mark.parametrize("batched", ["colors", "geometry", "nested"])
def test_reference_vmap_rule_matches_a_loop(batched):
  # The reference backend has its own batching rule (each pass runs to the batch's largest count);
  # it must equal one call per set whichever arguments carry the batch, also vmap inside vmap.
  height, width, capacity = 40, 56, 4096
  grid = binning.TileGrid(height, width)
  # 790-1,380 listed pairs: one or two live 1,024-slot chunks, and both counts in each nested pair.
  sets = [random_gaussians(20 + i, 260, height, width, scale=3.0 + i) for i in (0, 2, 1, 3)]
  weights = jax.random.normal(jax.random.key(21), (height, width, 3))

  def value_and_grads(means, conics, colors, bins):
    loss = lambda m, k, c: jnp.sum(
        gi_jax.raster_reference.rasterize(m, k, c, bins, height, width) * weights)
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(means, conics, colors)

  def inputs(g):
    proj = binning.project(g, grid)
    return proj.means, proj.conics, g.colors, binning.bin_intersections(proj, grid, capacity)

  if batched == "colors":  # one geometry, four colourings: only the colours are batched
    base = inputs(sets[0])
    args = [base[:2] + (g.colors,) + base[3:] for g in sets]
    fn = jax.vmap(value_and_grads, in_axes=(None, None, 0, None))
    out = fn(*args[0][:2], jnp.stack([a[2] for a in args]), args[0][3])
  else:
    args = [inputs(g) for g in sets]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *args)
    if batched == "geometry":
      out = jax.vmap(value_and_grads)(*stacked)
    else:
      pairs = jax.tree.map(lambda x: x.reshape((2, 2) + x.shape[1:]), stacked)
      out = jax.tree.map(lambda x: x.reshape((4,) + x.shape[2:]),
                         jax.vmap(jax.vmap(value_and_grads))(*pairs))
  if batched != "colors":
    live = [-(-int(a[3].tile_starts[-1]) // gi_jax.raster_reference.CHUNK) for a in args]
    assert live[0] != live[1] and live[2] != live[3]
  for i, a in enumerate(args):
    for got, want in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], out)),
                         jax.tree.leaves(value_and_grads(*a))):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("field", ["means_raw", "cov_raw", "colors"])
def test_reference_second_derivatives_match_dense(field):
  # The gradient's chunk loop runs under a custom_vjp; differentiating the gradient again (for
  # curvature or meta-learning) must still give the dense oracle's answer.
  height, width = 16, 16
  g = gi_jax.init_gaussians(jax.random.key(0), 20, height, width)
  weights = jax.random.normal(jax.random.key(1), (height, width, 3))

  def grad_norm_grad(render_fn):
    loss = lambda x: jnp.sum(jnp.sin(3 * render_fn(dataclasses.replace(g, **{field: x}))) * weights)
    return jax.grad(lambda x: jnp.sum(jax.grad(loss)(x) ** 2))(getattr(g, field))

  got = grad_norm_grad(lambda m: gi_jax.render(m, height, width, "reference", capacity=256))
  want = grad_norm_grad(lambda m: dense(m, height, width))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))


def test_capacity_overflow_is_never_silent():
  height, width = 32, 32
  g = gi_jax.init_gaussians(jax.random.key(12), 200, height, width)
  count = int(gi_jax.render_with_count(g, height, width, "reference", capacity=8)[1])
  assert count > 8
  with pytest.raises(errors.CapacityOverflowError, match=str(count)):
    gi_jax.render(g, height, width, "reference", capacity=8)
  traced = jax.jit(lambda g: gi_jax.render(g, height, width, "reference", capacity=8))(g)
  assert bool(jnp.isnan(traced).all())
  fine = jax.jit(lambda g: gi_jax.render(g, height, width, "reference", capacity=count))(g)
  np.testing.assert_allclose(fine, gi_jax.render(g, height, width, "reference"), atol=1e-6)


@pytest.mark.parametrize("height,width", [(0, 10), (10, -1), (2.5, 4)])
def test_bad_sizes(height, width):
  g = gi_jax.init_gaussians(jax.random.key(0), 10, 8, 8)
  with pytest.raises(errors.InvalidInputError):
    gi_jax.render(g, height, width)


def test_bad_gaussians():
  with pytest.raises(errors.InvalidInputError, match="num_gaussians"):
    gi_jax.init_gaussians(jax.random.key(0), 0, 8, 8)
  g = gi_jax.init_gaussians(jax.random.key(0), 10, 8, 8)
  bad = gi_jax.Gaussians(g.means_raw.at[3, 0].set(jnp.nan), g.cov_raw, g.colors)
  with pytest.raises(errors.InvalidInputError, match="NaN"):
    gi_jax.render(bad, 8, 8)
  with pytest.raises(errors.InvalidInputError, match="shape"):
    gi_jax.render(gi_jax.Gaussians(g.means_raw, g.cov_raw[:, :2], g.colors), 8, 8)
  with pytest.raises(errors.InvalidInputError, match="backend"):
    gi_jax.render(g, 8, 8, backend="nope")


def test_image_too_large():
  g = gi_jax.init_gaussians(jax.random.key(0), 10, 8, 8)
  with pytest.raises(errors.ImageTooLargeError):
    gi_jax.render(g, 200_000, 200_000)


# -- the scenes every backend renders ------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
class TestScenes:
  """Every scene on every backend against the dense oracle (and the checks a backend must pass):
  the reference in JAX, Pallas interpreted on a CPU and compiled on a GPU, as JAX's own Pallas
  tests run one class both ways. A new backend is one more entry in BACKENDS."""

  @pytest.mark.parametrize("scene", ["cholesky", "rs", "edge_cases"])
  def test_matches_dense_oracle(self, backend, scene):
    gaussians, height, width = make_scene(scene)
    capacity = capacity_for(gaussians, height, width)
    target = target_for(height, width)
    (loss, image), grads = loss_image_grads(gaussians, target, backend, capacity)
    (loss_d, image_d), grads_d = loss_image_grads(gaussians, target, "dense", capacity)
    np.testing.assert_allclose(image, image_d, rtol=FWD_TOL, atol=FWD_TOL)
    np.testing.assert_allclose(loss, loss_d, rtol=FWD_TOL)
    assert_grads_close(grads, grads_d)

  @pytest.mark.parametrize("height,width", [(16, 16), (37, 53), (64, 48), (5, 70)])
  @pytest.mark.parametrize("parameterization", ["cholesky", "rs"])
  def test_matches_dense(self, backend, height, width, parameterization):
    g = random_gaussians(0, 300, height, width, scale=4.0, parameterization=parameterization)
    out = gi_jax.render(g, height, width, backend)
    assert out.shape == (height, width, 3)
    np.testing.assert_allclose(out, dense(g, height, width), atol=FORWARD_TOL)

  def test_edge_cases_match_dense(self, backend):
    height, width = 40, 56
    n = 64
    g = random_gaussians(1, n, height, width)
    means_raw = np.array(g.means_raw)
    cov_raw = np.array(g.cov_raw)
    # Centred exactly on tile borders and image corners.
    means_raw[0] = np.arctanh(2 * np.array([16.0 / width, 16.0 / height]) - 1)
    means_raw[1] = np.arctanh(2 * np.array([32.0 / width, 31.999 / height]) - 1)
    # Pushed to the image's edges: tanh saturates at the border, half the Gaussian is outside.
    means_raw[2] = [20.0, 20.0]
    means_raw[3] = [-20.0, -20.0]
    # Degenerate: det = 0 (l11 = 0) and det tiny.
    cov_raw[4] = [-0.5, 0.3, 0.2]
    cov_raw[5] = [-0.5 + 1e-4, 0.0, 1.0]
    # Huge: covers the whole image.
    cov_raw[6] = [30.0, 5.0, 30.0]
    g = gi_jax.Gaussians(jnp.asarray(means_raw), jnp.asarray(cov_raw), g.colors)
    np.testing.assert_allclose(gi_jax.render(g, height, width, backend), dense(g, height, width),
                               atol=FORWARD_TOL)

  def test_tile_with_more_than_1000_gaussians(self, backend):
    height, width = 32, 32
    n = 1200
    k1, k2 = jax.random.split(jax.random.key(3))
    # Small Gaussians all inside tile (0, 0): every one intersects it, no per-tile cap.
    xy = jax.random.uniform(k1, (n, 2), minval=3.0, maxval=12.0)
    means_raw = jnp.arctanh(2 * xy / jnp.asarray([width, height]) - 1)
    cov_raw = jnp.full((n, 3), -0.2).at[:, 1].set(0.0)
    colors = jax.random.uniform(k2, (n, 3)) * 1e-3
    g = gi_jax.Gaussians(means_raw, cov_raw, colors)
    bins = binning.bin_intersections(binning.project(g, binning.TileGrid(height, width)),
                                     binning.TileGrid(height, width), 4096)
    assert int(bins.tile_starts[1] - bins.tile_starts[0]) == n
    np.testing.assert_allclose(gi_jax.render(g, height, width, backend), dense(g, height, width),
                               atol=FORWARD_TOL)

  def test_permutation_invariance(self, backend):
    height, width = 37, 53
    g = random_gaussians(5, 400, height, width, scale=3.0)
    perm = jax.random.permutation(jax.random.key(6), 400)
    permuted = jax.tree.map(lambda x: x[perm], g)
    np.testing.assert_allclose(gi_jax.render(g, height, width, backend),
                               gi_jax.render(permuted, height, width, backend), atol=1e-6)

  @pytest.mark.parametrize("parameterization", ["cholesky", "rs"])
  def test_gradients_match_dense_autodiff(self, backend, parameterization):
    height, width = 37, 29
    g = random_gaussians(7, 120, height, width, scale=3.0, parameterization=parameterization)
    weights = jax.random.normal(jax.random.key(8), (height, width, 3))
    tiled = jax.grad(lambda g: _loss(lambda g: gi_jax.render(g, height, width, backend),
                                     g, weights))(g)
    oracle = jax.grad(lambda g: _loss(lambda g: dense(g, height, width), g, weights))(g)
    # Both are float32 sums of hundreds of terms taken in different orders and groupings, which
    # cancel in the covariance gradient; the float64 test below checks the gradient exactly.
    for a, b in zip(jax.tree.leaves(tiled), jax.tree.leaves(oracle)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * float(jnp.abs(b).max()))

  def test_needle_gaussian_gets_a_finite_gradient(self, backend):
    # A Cholesky factor quantized to l11 ≈ 1e-6, l22 ≈ 2e-4 (kodim12's fine-tuning reached one):
    # det ≈ 5e-20 px⁴, so 1/det² overflows float32. The needle shows at no pixel centre, so its
    # gradient is 0; autodiff of 1/det made it 0·inf = NaN, which Adan spread to every parameter.
    height, width = 24, 20
    g = random_gaussians(11, 30, height, width, scale=2.0)
    cov_raw = g.cov_raw.at[0].set(jnp.asarray([-0.5 - 1.25e-6, -0.61, -0.5 - 1.79e-4]))
    means_raw = g.means_raw.at[0].set(jnp.arctanh(jnp.asarray([0.3, -0.2]) + 1 / 160))
    g = gi_jax.Gaussians(means_raw, cov_raw, g.colors)
    assert 0 < float(g.determinant[0]) < 1e-19
    weights = jax.random.normal(jax.random.key(12), (height, width, 3))
    grads = jax.grad(lambda g: _loss(lambda g: gi_jax.render(g, height, width, backend), g,
                                     weights))(g)
    for leaf in jax.tree.leaves(grads):
      assert np.isfinite(np.asarray(leaf)).all()
    np.testing.assert_array_equal(grads.cov_raw[0], 0.0)

  def test_vmap_over_three_gaussian_sets(self, backend):
    sets = [paper_init(np.random.default_rng(i), 60, "cholesky") for i in range(3)]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *sets)
    capacity = capacity_for(batch, H, W)
    targets = jnp.stack([target_for(H, W, seed) for seed in range(3)])
    # Each set is binned inside the vmap, so the kernels see a batch of bins, one per set.
    batched = jax.jit(jax.vmap(functools.partial(loss_image_grads, backend=backend,
                                                 capacity=capacity)))
    (_, images), grads = batched(batch, targets)
    for i, g in enumerate(sets):
      (_, image_d), grads_d = loss_image_grads(g, targets[i], "dense", capacity)
      np.testing.assert_allclose(images[i], image_d, rtol=FWD_TOL, atol=FWD_TOL)
      assert_grads_close(jax.tree.map(lambda x: x[i], grads), grads_d)

  def test_gradients_are_bit_identical_across_calls(self, backend):
    gaussians, height, width = make_scene("cholesky")
    capacity = capacity_for(gaussians, height, width)
    target = target_for(height, width)
    first = loss_image_grads(gaussians, target, backend, capacity)
    second = loss_image_grads(gaussians, target, backend, capacity)
    # No atomics and a fixed summation order: repeated backward passes agree bit for bit.
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
      assert np.array_equal(a, b)

  def test_render_through_registry(self, backend):
    # The registered function is the one tested above (it picks the interpreter off a GPU, as the
    # tests do); here: that render() dispatches to it, eagerly, as users call it.
    assert backend in gi_jax.available_backends()
    assert resolve_backend(backend) == backend
    gaussians, height, width = make_scene("rs")
    capacity = capacity_for(gaussians, height, width)
    (_, image_d), _ = loss_image_grads(gaussians, target_for(height, width), "dense", capacity)
    image = gi_jax.render(gaussians, height, width, backend=backend)
    np.testing.assert_allclose(image, jnp.clip(image_d, 0.0, 1.0), rtol=FWD_TOL, atol=FWD_TOL)


def test_edge_case_scene_has_its_edge_cases():
  gaussians, height, width = make_scene("edge_cases")
  grid = binning.TileGrid(height, width)
  proj, bins = project_and_bin(gaussians, height, width, capacity_for(gaussians, height, width))
  per_tile = np.diff(np.asarray(bins.tile_starts)).reshape(grid.tiles_y, grid.tiles_x)
  assert per_tile[1, 1] == 1100                                  # > 1,000 in one tile
  assert per_tile[0, 0] == per_tile[0, 1] == per_tile[1, 0] == 0  # empty tiles
  touched = np.asarray(proj.tiles_touched[1100:])
  assert (touched == 0).sum() > 10 and (touched > 0).sum() > 10   # off-image: hidden, straddling
  assert np.all(np.asarray(proj.tiles_touched[:1100]) == 1)
