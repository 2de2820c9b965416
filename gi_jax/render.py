"""``render``: Gaussians → image, through binning and a pluggable rasterizer backend.

A backend is a function ``rasterize(means, conics, colors, bins, height, width) -> [H, W, C]``
returning the unclipped accumulated sum, differentiable in its first three arguments. Backends:

- ``"reference"``: pure JAX (:mod:`gi_jax.raster_reference`), any device;
- ``"pallas"``: the GPU kernels (:mod:`gi_jax.pallas`), run by the Pallas interpreter off a GPU;
- ``"auto"``: Pallas on a GPU, the reference elsewhere.

New backends call :func:`register_backend`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from gi_jax import binning, errors, memory
from gi_jax.binning import Binning
from gi_jax.gaussians import Gaussians, check_size, is_concrete
from gi_jax.pallas.rasterize import (rasterize_band_for_backend as _rasterize_band_pallas,
                                     rasterize_for_backend as _rasterize_pallas)
from gi_jax.pallas.tile_lists import tile_lists_for_backend as _tile_lists_pallas
from gi_jax.raster_reference import (rasterize as _rasterize_reference,
                                     rasterize_band as _rasterize_band_reference)

Rasterizer = Callable[..., jax.Array]

_BACKENDS: dict[str, Rasterizer] = {"reference": _rasterize_reference, "pallas": _rasterize_pallas}
# Forward-only renders of a band of tile rows, ``(means, conics, colors, bins, height, width,
# first_tile_row) -> [height, width, 3]``, for renders too large to hold all at once (the decoder).
_BAND_RASTERIZERS: dict[str, Rasterizer] = {"reference": _rasterize_band_reference,
                                            "pallas": _rasterize_band_pallas}
# How a backend lists each tile's pairs from a binning, ``(binning, projection) -> Bins``, where it
# has its own way; the others read binning.tile_lists's packed lists.
_TILE_LISTS: dict[str, Callable] = {"pallas": _tile_lists_pallas}
# Index arithmetic is int32: tiles × 256 pixels and intersection counts must stay below 2**31.
_MAX_PIXELS = 2**31 // 16


def register_backend(name: str, rasterizer: Rasterizer,
                     band_rasterizer: Rasterizer | None = None,
                     tile_lists: Callable | None = None) -> None:
  """Makes ``rasterizer`` available as ``render(..., backend=name)``.

  Args:
    name: the backend's name.
    rasterizer: ``(means, conics, colors, bins, height, width) -> [H, W, 3]``.
    band_rasterizer: optional, its forward for a band of a larger image, ``(means, conics,
      colors, bins, height, width, first_tile_row) -> [height, width, 3]`` (as
      :func:`gi_jax.raster_reference.rasterize_band`); without it the decoder renders large
      images in one piece with this backend.
    tile_lists: optional, ``(binning, projection) -> Bins``: its own way of listing a binning's
      pairs per tile for its renders (the Pallas backend's is a kernel); without it,
      :func:`gi_jax.binning.tile_lists`.
  """
  _BACKENDS[name] = rasterizer
  _BAND_RASTERIZERS.pop(name, None)
  _TILE_LISTS.pop(name, None)
  if band_rasterizer is not None:
    _BAND_RASTERIZERS[name] = band_rasterizer
  if tile_lists is not None:
    _TILE_LISTS[name] = tile_lists


def rasterizer(backend: str) -> Rasterizer:
  """The unclipped rasterizer of ``backend`` ("auto" resolved), for callers that bin themselves."""
  return _BACKENDS[resolve_backend(backend)]


def tile_lists_for(backend: str) -> Callable:
  """How ``backend`` ("auto" resolved) lists a binning's pairs: ``(binning, projection) -> Bins``."""
  return _TILE_LISTS.get(resolve_backend(backend), binning.tile_lists)


def band_rasterizer(backend: str) -> Rasterizer | None:
  """The band forward of ``backend`` ("auto" resolved; see :func:`register_backend`), or None
  where it has none."""
  return _BAND_RASTERIZERS.get(resolve_backend(backend))


def available_backends() -> tuple[str, ...]:
  return tuple(_BACKENDS)


def resolve_backend(backend: str = "auto") -> str:
  """The concrete backend name ``backend`` stands for on the default device."""
  if backend == "auto":
    return "pallas" if jax.default_backend() == "gpu" else "reference"
  if backend not in _BACKENDS:
    raise errors.InvalidInputError(
        f"unknown backend {backend!r}; available: {', '.join(('auto',) + available_backends())}")
  return backend


# How the gradient passes the clip to [0, 1] that every render ends with (see clip_unit).
CLIP_GRADIENTS = ("exact", "straight_through")


def check_clip_gradient(clip_gradient: str) -> str:
  """``clip_gradient`` if it names one of :data:`CLIP_GRADIENTS`, else an InvalidInputError."""
  if clip_gradient not in CLIP_GRADIENTS:
    raise errors.InvalidInputError(
        f"clip_gradient must be one of {CLIP_GRADIENTS}, got {clip_gradient!r}")
  return clip_gradient


@jax.custom_jvp
def _clip_straight_through(image: jax.Array) -> jax.Array:
  return jnp.clip(image, 0.0, 1.0)


@_clip_straight_through.defjvp
def _clip_straight_through_jvp(primals, tangents):
  return _clip_straight_through(primals[0]), tangents[0]


def clip_unit(image: jax.Array, clip_gradient: str = "exact") -> jax.Array:
  """Clips a render to [0, 1].

  Args:
    image: the accumulated sum.
    clip_gradient: ``"exact"``: the clip's own derivative, zero outside [0, 1] (the paper's).
      ``"straight_through"``: the identity's. Same values; they differ at a pixel the sum has
      pushed past 1 (or below 0) where the target is inside: the exact gradient leaves it there,
      the straight-through one gives a squared-error loss ``2·(1 − target)`` to pull it back.
      On the main job's kodim23 fit such pixels are 0.9% of the values and 8% of the squared
      error.

  Returns:
    ``clip(image, 0, 1)``, bit for bit with either gradient.
  """
  if check_clip_gradient(clip_gradient) == "exact":
    return jnp.clip(image, 0.0, 1.0)
  return _clip_straight_through(image)


def check_image_size(height: int, width: int, batch: int = 1) -> tuple[int, int]:
  """Validates an image size and that the device can hold the work for it."""
  height, width = check_size(height, width)
  grid = binning.TileGrid(height, width)
  if grid.num_tiles * binning.TILE_PIXELS * batch >= _MAX_PIXELS:
    raise errors.ImageTooLargeError(
        f"{batch}×{height}×{width} pixels exceed the {_MAX_PIXELS} pixels our int32 indexing "
        "allows")
  # The image, its gradient and the per-chunk buffers: a conservative ~64 bytes per pixel.
  memory.check_fits(64 * grid.num_tiles * binning.TILE_PIXELS * batch,
                    f"rendering {batch}×{height}×{width} pixels")
  return height, width


def render_with_count(gaussians: Gaussians, height: int, width: int, backend: str = "auto", *,
                      capacity: int | None = None, clip_gradient: str = "exact",
                      binning: Binning | None = None) -> tuple[jax.Array, jax.Array]:
  """Renders and also returns the true intersection count, for callers that handle overflow.

  This is the variant for jitted loops: when ``count > capacity`` the image misses intersections,
  and the caller must re-render with a larger capacity (or bin again: a binning that no longer
  covers the Gaussians reports :data:`gi_jax.binning.NOT_COVERED`).

  Args:
    gaussians: a Gaussian set [N] or a batch [..., N] (rendered with vmap).
    height: image height in pixels.
    width: image width in pixels.
    backend: ``"auto"``, ``"reference"``, ``"pallas"`` or a registered name.
    capacity: static intersection capacity; None counts (when values are concrete) or uses
      :func:`gi_jax.binning.default_capacity` (when traced). Not with ``binning``.
    clip_gradient: ``"exact"`` or ``"straight_through"`` (:func:`clip_unit`).
    binning: a :func:`gi_jax.bin_gaussians` binning of these Gaussians' batch shape, to render
      without binning afresh (same image and gradients, to the bit, while it covers them).

  Returns:
    ``(image [..., H, W, C] clipped to [0, 1], count [...] int32)``.
  """
  image, count, _ = _render(gaussians, height, width, backend, capacity, clip_gradient, binning)
  return image, count


def _render(gaussians, height, width, backend, capacity, clip_gradient="exact", binning=None):
  """Renders; returns ``(image, count, capacity used)``."""
  height, width = check_size(height, width)
  gaussians.validate()
  raster = rasterizer(backend)
  return render_binned(
      gaussians, height, width, capacity, lambda g: g,
      lambda g, proj, bins: raster(proj.means, proj.conics, proj.colors, bins, height, width),
      clip_gradient, binning, tile_lists_for(backend))


def render_binned(model, height: int, width: int, capacity: int | None,
                  gaussians_of: Callable[[Any], Gaussians],
                  rasterize_one: Callable[[Any, binning.Projection, binning.Bins], jax.Array],
                  clip_gradient: str = "exact", binned: Binning | None = None,
                  tile_lists: Callable | None = None):
  """Bins and rasterizes a model holding Gaussians [..., N]: what every renderer shares.

  Args:
    model: a pytree holding a (possibly batched) Gaussian set, e.g. ``Gaussians`` itself or
      Gaussians with opacities; all its leaves share the batch dimensions.
    height: image height.
    width: image width.
    capacity: static intersection capacity; None counts (concrete values) or uses
      :func:`gi_jax.binning.default_capacity` (traced). Must be None with ``binned``.
    gaussians_of: ``model -> Gaussians``.
    rasterize_one: ``(model of one set, projection, bins) -> [H, W, C]`` unclipped image.
    clip_gradient: ``"exact"`` or ``"straight_through"`` (:func:`clip_unit`).
    binned: a binning of the model's Gaussians to reuse (None: bin afresh).
    tile_lists: the rasterizer's way of listing pairs (:func:`tile_lists_for`); None:
      :func:`gi_jax.binning.tile_lists`.

  Returns:
    ``(image [..., H, W, C] clipped to [0, 1], count [...], capacity used)``.
  """
  grid = binning.TileGrid(height, width)
  batch_shape = gaussians_of(model).means_raw.shape[:-2]
  flatten = lambda tree: jax.tree.map(lambda x: x.reshape((-1,) + x.shape[len(batch_shape):]),
                                      tree)
  flat = flatten(model)
  if binned is not None:
    if capacity is not None:
      raise errors.InvalidInputError("pass capacity or binning, not both (a binning has its own)")
    binning.check_binning(binned, gaussians_of(model), height, width)
    capacity = binned.capacity
  elif capacity is None:
    if is_concrete(gaussians_of(flat).means_raw):
      capacity = binning.bucket_capacity(binning.max_intersections(gaussians_of(flat), grid))
    else:
      capacity = binning.default_capacity(gaussians_of(model).num_gaussians, grid)
  capacity = int(capacity)
  if capacity < 1:
    raise errors.InvalidInputError(f"capacity must be >= 1, got {capacity}")

  def one(m, b):
    proj = binning.project(gaussians_of(m), grid)
    if b is None:
      bins = binning.bin_intersections(proj, grid, capacity, tile_lists)
    else:
      bins = (tile_lists or binning.tile_lists)(b, proj)
    return clip_unit(rasterize_one(m, proj, bins), clip_gradient), bins.count

  if binned is None:
    image, count = jax.vmap(lambda m: one(m, None))(flat)
  else:
    image, count = jax.vmap(one)(flat, flatten(binned))
  return image.reshape(batch_shape + image.shape[1:]), count.reshape(batch_shape), capacity


def check_overflow(image: jax.Array, count: jax.Array, capacity: int) -> jax.Array:
  """Raises on an overflowing concrete render; makes a traced one all NaN (never silent)."""
  if is_concrete(count):
    worst = int(jnp.max(count))
    if worst > capacity:
      raise errors.CapacityOverflowError(worst, capacity)
    return image
  return jnp.where((count > capacity)[..., None, None, None], jnp.nan, image)


def render(gaussians: Gaussians, height: int, width: int, backend: str = "auto", *,
           capacity: int | None = None, binning: Binning | None = None) -> jax.Array:
  """Renders Gaussians to an image by accumulated summation (docs/design.md §3).

  Jittable, differentiable in the Gaussians, and vmappable over a batch of Gaussian sets.
  Nothing is dropped silently: with concrete inputs an overflowing ``capacity`` raises
  :class:`~gi_jax.errors.CapacityOverflowError`, and a ``binning`` that no longer covers the
  Gaussians (or was made for another N or size) raises :class:`~gi_jax.errors.BinningError`;
  under tracing (jit, vmap) such a render is all NaN. Use :func:`render_with_count` to handle
  overflow yourself.

  Args:
    gaussians: a Gaussian set [N] or a batch [..., N].
    height: image height in pixels (>= 1).
    width: image width in pixels (>= 1).
    backend: ``"auto"`` (Pallas on GPU, else reference), ``"reference"``, ``"pallas"``.
    capacity: static intersection capacity (None: sized automatically). Not with ``binning``.
    binning: from :func:`gi_jax.bin_gaussians`: render many times (as the Gaussians change a
      little, or their colours change) without binning again; same image and gradients to the
      bit as binning afresh.

  Returns:
    [..., H, W, C] float image clipped to [0, 1], C the colour channels.

  Example:
    >>> g = gi_jax.init_gaussians(jax.random.key(0), 2000, 128, 128)
    >>> image = gi_jax.render(g, 128, 128)
    >>> b = gi_jax.bin_gaussians(g, 128, 128, margin=4.0)
    >>> same = gi_jax.render(g, 128, 128, binning=b)
  """
  height, width = check_image_size(height, width)
  return check_overflow(*_render(gaussians, height, width, backend, capacity, binning=binning))
