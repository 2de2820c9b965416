"""Render scenes every backend is tested on (tests/test_render.py's TestScenes) and the jitted
pipelines that run them: the Pallas backend on a CPU with interpret=True, on a GPU compiled.

The oracle is the dense renderer on the same projection; gradients are of a loss on the clipped
image, in the raw parameters. Tolerances (float32; the backends sum in other orders):
- forward: 1e-5 relative and absolute;
- gradients: 1e-4 relative to the largest entry of the same Gaussian's gradient (so Gaussians
  with small gradients are checked as strictly as large ones).

Compiling dominates the run time, so every pipeline is one jitted function that several tests
share through the jit cache, and scenes are drawn with NumPy (jax.random would compile).
"""

from __future__ import annotations

import functools
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# The Pallas interpreter imports this lazily on its first call, and the trace-context option it
# defines would make every function jitted before then retrace (and recompile) once afterwards.
import jax.experimental.pallas.fuser  # noqa: F401

import gi_jax
from gi_jax import binning
from gi_jax.pallas.rasterize import rasterize as pallas_rasterize
from gi_jax.raster_dense import rasterize_dense
from gi_jax.raster_reference import rasterize as reference_rasterize
from gi_jax.render import rasterizer as registered_rasterizer

FWD_TOL = 1e-5
GRAD_TOL = 1e-4
H, W = 37, 53                 # odd sizes: partial tiles on both axes
EDGE_H, EDGE_W = 61, 59


class PixelGaussians(NamedTuple):
  """Gaussians given directly in pixels (means anywhere, even off the image).

  ``binning.project`` reads only ``pixel_means``, ``pixel_covariance`` and ``colors``, so this
  stands in for :class:`gi_jax.Gaussians` where the tanh parameterisation cannot reach (off-image
  means).
  """
  means: jax.Array
  covariance: jax.Array
  colors: jax.Array

  def pixel_means(self, height, width):
    del height, width
    return self.means

  def pixel_covariance(self, height, width):
    del height, width
    return self.covariance


def _isotropic(rng, n, var_lo, var_hi):
  var = rng.uniform(var_lo, var_hi, (n, 1))
  return np.concatenate([var, np.zeros_like(var), var], axis=1)


def paper_init(rng, n, parameterization):
  """The paper's initialisation (docs/design.md §1) through the public constructors."""
  means_raw = np.arctanh(rng.uniform(-0.999, 0.999, (n, 2)))
  colors = rng.uniform(0.0, 1.0, (n, 3))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  if parameterization == "cholesky":
    return gi_jax.Gaussians.cholesky(f32(means_raw), f32(rng.uniform(0, 1, (n, 3))), f32(colors))
  return gi_jax.Gaussians.rs(f32(means_raw), f32(rng.uniform(0, 1, (n, 2))),
                             f32(rng.uniform(0, 1, (n, 1))), f32(colors))


def edge_case_scene(rng):
  """A 61×59 image (4×4 tiles) holding the awkward cases at once.

  - 1,100 tiny Gaussians whose 3σ boxes all lie inside tile (1, 1), with small colours so their
    sum stays in (0, 1) and the clip does not hide their gradient;
  - 120 Gaussians with means off the image (right of it or below it): some reach into the
    border tiles, many touch nothing;
  - tiles (0, 0), (1, 0) and (0, 1) are touched by nobody.
  """
  crowd = rng.uniform(20.0, 27.0, (1100, 2))
  right = rng.uniform([EDGE_W + 1.0, -40.0], [EDGE_W + 45.0, EDGE_H + 45.0], (60, 2))
  below = rng.uniform([-40.0, EDGE_H + 1.0], [EDGE_W + 45.0, EDGE_H + 45.0], (60, 2))
  means = np.concatenate([crowd, right, below])
  # Off-image radii reach at most ceil(3·sqrt(60)) = 24 px: never back into tile (1, 1).
  cov = np.concatenate([_isotropic(rng, 1100, 0.2, 0.5), _isotropic(rng, 120, 4.0, 60.0)])
  colors = rng.uniform(0.0, 1.0, (1220, 3)) * np.where(np.arange(1220) < 1100, 1e-3, 1.0)[:, None]
  return PixelGaussians(*(jnp.asarray(x, jnp.float32) for x in (means, cov, colors)))


def make_scene(name):
  """(Gaussians, height, width) for one named test scene."""
  rng = np.random.default_rng(zlib.crc32(name.encode()))
  if name in ("cholesky", "rs"):
    return paper_init(rng, 150, name), H, W
  if name == "edge_cases":
    return edge_case_scene(rng), EDGE_H, EDGE_W
  raise ValueError(name)


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _max_count(gaussians, height, width):
  grid = binning.TileGrid(height, width)
  flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[-2:]), gaussians)
  return jnp.max(jax.vmap(lambda g: binning.count_intersections(binning.project(g, grid)))(flat))


def capacity_for(gaussians, height, width):
  return binning.bucket_capacity(int(_max_count(gaussians, height, width)))


@functools.partial(jax.jit, static_argnames=("height", "width", "capacity"))
def project_and_bin(gaussians, height, width, capacity):
  grid = binning.TileGrid(height, width)
  proj = binning.project(gaussians, grid)
  return proj, binning.bin_intersections(proj, grid, capacity)


def target_for(height, width, seed=7):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (height, width, 3)), jnp.float32)


# Off a GPU the kernels run in the Pallas interpreter; on one (scripts/gpu_plan.sh) the same tests
# check the compiled Triton kernels against the oracle.
INTERPRET = jax.default_backend() != "gpu"


def rasterizer(backend, chunk=None):
  """The unclipped rasterizer of ``backend``: Pallas with a chosen chunk, any other as registered."""
  if backend == "pallas":
    return functools.partial(pallas_rasterize, interpret=INTERPRET, chunk=chunk)
  if backend == "reference":
    return reference_rasterize
  return registered_rasterizer(backend)


@functools.partial(jax.jit, static_argnames=("backend", "capacity"))
def loss_image_grads(gaussians, target, backend, capacity):
  """``((loss, raw image), d loss / d gaussians)`` for the MSE of the clipped render.

  ``backend``: "pallas", "reference" or "dense" (the oracle: no binning).
  """
  height, width = target.shape[:2]
  grid = binning.TileGrid(height, width)

  def loss(g):
    proj = binning.project(g, grid)
    if backend == "dense":
      image = rasterize_dense(proj, height, width)
    else:
      bins = binning.bin_intersections(proj, grid, capacity)
      image = rasterizer(backend)(proj.means, proj.conics, proj.colors, bins, height, width)
    return jnp.mean((jnp.clip(image, 0.0, 1.0) - target) ** 2), image

  return jax.value_and_grad(loss, has_aux=True)(gaussians)


@functools.partial(jax.jit, static_argnames=("backend", "height", "width", "chunk"))
def raster_vjp(means, conics, colors, bins, cotangent, backend, height, width, chunk=None):
  """Raw image and the VJP of ``cotangent`` at the rasterizer's own inputs."""
  fn = lambda *a: rasterizer(backend, chunk)(*a, bins, height, width)
  out, vjp = jax.vjp(fn, means, conics, colors)
  return out, vjp(cotangent)


def relative_grad_error(got, want) -> np.ndarray:
  """Per entry of one gradient leaf: |got − want| over max |want| in that Gaussian's row."""
  want = np.asarray(want)
  scale = np.maximum(np.abs(want).max(axis=-1, keepdims=True), 1e-6 * np.abs(want).max() + 1e-30)
  return np.abs(np.asarray(got) - want) / scale


def assert_grads_close(got, want):
  """Per Gaussian: |got − want| <= GRAD_TOL · max |want| over that Gaussian's row."""
  for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
    w, g = np.asarray(w), np.asarray(g)
    err = relative_grad_error(g, w)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= GRAD_TOL, (
        f"{jax.tree_util.keystr(path)}: relative error {err.max():.3g} at {worst}: "
        f"got {g[worst]}, want {w[worst]}")
