"""The α-blending ablation renderer (gi_jax.raster_alpha): front to back, against a dense oracle
and finite differences."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gi_jax
from gi_jax import binning
from gi_jax.init import from_pixels
from gi_jax.raster_alpha import (AlphaGaussians, exclusive_segment_cumprod, rasterize_alpha,
                                 render_alpha)


# Eager (op-by-op) calls of these are slow; jitted, each compiles once.
_render_alpha = jax.jit(render_alpha, static_argnums=(1, 2), static_argnames=("capacity",))


def _two_overlapping(front_first: bool):
  xy = jnp.asarray([[16.0, 16.0], [17.0, 16.0]])
  colors = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
  if not front_first:
    xy, colors = xy[::-1], colors[::-1]
  g = from_pixels(xy, jnp.asarray([3.0, 3.0]), colors, 32, 32)
  return AlphaGaussians(g, jnp.asarray([8.0, 8.0]))


def test_alpha_blending_front_gaussian_wins():
  image = np.asarray(_render_alpha(_two_overlapping(True), 32, 32, capacity=256))
  opacity = 1.0 / (1.0 + np.exp(-8.0))
  # Pixel (16, 16): red sits on it (σ = 0), blue is 1 px away (σ = 0.5·1/9).
  a_red = min(0.99, opacity)
  a_blue = min(0.99, opacity * np.exp(-0.5 / 9.0))
  np.testing.assert_allclose(image[16, 16], [a_red, 0.0, a_blue * (1.0 - a_red)], rtol=1e-5)
  # Swap the order: now blue is in front and wins its own pixel (17, 16) and this one.
  swapped = np.asarray(_render_alpha(_two_overlapping(False), 32, 32, capacity=256))
  np.testing.assert_allclose(swapped[16, 16], [a_red * (1.0 - a_blue), 0.0, a_blue], rtol=1e-5)
  assert swapped[16, 16, 2] > swapped[16, 16, 0]


def _dense_alpha(model, height, width):
  """Oracle: every Gaussian at every pixel, transmittance by cumprod over the index."""
  grid = binning.TileGrid(height, width)
  proj = binning.project(model.gaussians, grid)
  ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  px, py = xs.reshape(-1, 1).astype(jnp.float32), ys.reshape(-1, 1).astype(jnp.float32)
  tx, ty = px // binning.TILE, py // binning.TILE
  inside = ((tx >= proj.tile_min[:, 0]) & (tx < proj.tile_max[:, 0]) &
            (ty >= proj.tile_min[:, 1]) & (ty < proj.tile_max[:, 1]))
  from gi_jax.raster_reference import gaussian_alpha
  falloff, _, _ = gaussian_alpha(proj.means[None], proj.conics[None], px, py)
  alpha = jnp.minimum(0.99, model.opacity[None] * falloff)
  alpha = jnp.where(inside & (alpha >= 1 / 255), alpha, 0.0)
  trans = jnp.cumprod(jnp.concatenate([jnp.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
  return jnp.clip((alpha * trans) @ proj.colors, 0, 1).reshape(height, width, -1)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_alpha_blending_matches_dense_oracle(channels):
  g = gi_jax.init_gaussians(jax.random.key(2), 60, 40, 40)
  g = dataclasses.replace(g, colors=jax.random.uniform(jax.random.key(4), (60, channels)))
  model = AlphaGaussians(g, jax.random.normal(jax.random.key(3), (60,)))
  image = _render_alpha(model, 40, 40, capacity=1024)
  assert image.shape == (40, 40, channels)
  np.testing.assert_allclose(image, jax.jit(_dense_alpha, static_argnums=(1, 2))(model, 40, 40),
                             atol=2e-6)


def test_exclusive_segment_cumprod():
  x = jnp.asarray([2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
  seg = jnp.asarray([0, 0, 0, 2, 2, 5])
  np.testing.assert_allclose(exclusive_segment_cumprod(x, seg), [1, 2, 6, 1, 5, 1])


def test_alpha_blending_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    g = gi_jax.init_gaussians(jax.random.key(5), 12, 24, 24, dtype=jnp.float64)
    g = gi_jax.Gaussians(g.means_raw, g.cov_raw + 1.0, g.colors, g.parameterization)
    grid = binning.TileGrid(24, 24)
    proj = binning.project(g, grid)
    bins = binning.bin_intersections(proj, grid, 512)
    weights = jax.random.normal(jax.random.key(6), (24, 24, 3), jnp.float64)
    opacity = jnp.linspace(0.3, 0.9, 12, dtype=jnp.float64)

    def loss(means, conics, colors, opacities):
      out = rasterize_alpha(means, conics, colors, opacities, bins, 24, 24)
      return jnp.sum(out * weights)

    args = (proj.means, proj.conics, proj.colors, opacity)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
    loss = jax.jit(loss)
    rng = np.random.default_rng(0)
    for i in range(4):
      direction = jnp.asarray(rng.normal(size=args[i].shape))
      eps = 1e-6
      plus = list(args)
      minus = list(args)
      plus[i] = args[i] + eps * direction
      minus[i] = args[i] - eps * direction
      numeric = (loss(*plus) - loss(*minus)) / (2 * eps)
      analytic = jnp.sum(grads[i] * direction)
      np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


