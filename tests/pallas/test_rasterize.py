"""The Pallas kernels themselves (gi_jax.pallas.rasterize): against the reference backend with
small chunks and an overflowing capacity, their chunk check, their Triton lowering (the tile
lists' kernel's too; its own tests are test_tile_lists.py). (The scenes
every backend renders, the Pallas one included, are tests/test_render.py's TestScenes.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# The Pallas interpreter imports this lazily on its first call, and the trace-context option it
# defines would make every function jitted before then retrace (and recompile) once afterwards.
import jax.experimental.pallas.fuser  # noqa: F401

import gi_jax
from gi_jax.pallas.rasterize import KernelSettings, rasterize as pallas_rasterize
from gi_jax.pallas.tile_lists import tile_lists as pallas_tile_lists
from tests.render_scenes import (FWD_TOL, assert_grads_close, capacity_for, make_scene,
                                 project_and_bin, raster_vjp)


# chunk 8 over an overflowing capacity (both render the slots that fit); chunk 64 over 1,100.
@pytest.mark.parametrize("scene,chunk,overflow", [("cholesky", 8, True), ("edge_cases", 64, False)])
def test_matches_reference_backend(scene, chunk, overflow):
  gaussians, height, width = make_scene(scene)
  capacity = 100 if overflow else capacity_for(gaussians, height, width)
  proj, bins = project_and_bin(gaussians, height, width, capacity)
  assert (int(bins.count) > capacity) == overflow
  cotangent = jnp.asarray(np.random.default_rng(3).normal(size=(height, width, 3)), jnp.float32)
  args = (proj.means, proj.conics, proj.colors, bins, cotangent)
  out, grads = raster_vjp(*args, "pallas", height, width, chunk)
  out_r, grads_r = raster_vjp(*args, "reference", height, width)
  np.testing.assert_allclose(out, out_r, rtol=FWD_TOL, atol=FWD_TOL)
  assert_grads_close(grads, grads_r)


def test_kernel_settings_read_and_print_as_gxw():
  settings = KernelSettings.parse("64x8/16x4/2")
  assert settings == KernelSettings(64, 8, 16, 4, 2) and str(settings) == "64x8/16x4/2"
  assert str(KernelSettings()) == "32x4/16x8"
  for bad in ("32x4", "32x4/16", "32x3/16x8", "32x4/16x8/0", "a/b"):
    with pytest.raises(ValueError):
      KernelSettings.parse(bad)


def test_chunk_must_be_a_power_of_two():
  gaussians, height, width = make_scene("cholesky")
  proj, bins = project_and_bin(gaussians, height, width, 256)
  with pytest.raises(ValueError, match="power of two"):
    pallas_rasterize(proj.means, proj.conics, proj.colors, bins, height, width, chunk=24)


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
def test_kernels_lower_to_triton_for_a_gpu():
  # No GPU here, but Pallas's Triton lowering runs in Python: lowering for an abstract H100 checks
  # that every op in the three kernels has a Triton rule and every block a power-of-two size.
  gaussians, height, width = make_scene("cholesky")
  proj, _ = project_and_bin(gaussians, height, width, 512)
  binned = gi_jax.bin_gaussians(gaussians, height, width, capacity=512)

  def loss(means, conics, colors):
    bins = pallas_tile_lists(binned, proj._replace(means=means, conics=conics))
    return jnp.sum(pallas_rasterize(means, conics, colors, bins, height, width))

  h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132,
                                     platform="cuda")
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",),
                                                                abstract_device=h100)):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(
        proj.means, proj.conics, proj.colors).lower(lowering_platforms=("cuda",))
  # Tile lists, forward, backward, reduction.
  assert lowered.as_text().count("__gpu$xla.gpu.triton") == 4
