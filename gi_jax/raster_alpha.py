"""Front-to-back α-blending: the paper's ablation of accumulated summation.

GaussianImage renders by accumulated summation, ``C = Σ cᵢ·exp(−σᵢ)``, with opacity folded into the
colour and no ordering. Its ablation compares that with 3DGS-style α-blending, which needs an
opacity per Gaussian and an order. Here:

- each Gaussian has an opacity ``oᵢ = sigmoid(opacity_raw)`` (:class:`AlphaGaussians` adds the raw
  value to a :class:`~gi_jax.Gaussians`);
- ``αᵢ = min(0.99, oᵢ·exp(−σᵢ))`` with the same skip rules as summation (σ < 0, or α < 1/255:
  α = 0); the 0.99 cap is 3DGS's, so transmittance never reaches exactly zero;
- the order is the Gaussian index: Gaussian 0 is in front. Binning lists each tile's Gaussians in
  increasing index, so the tile lists are already front-to-back;
- ``C = Σᵢ cᵢ·αᵢ·Πⱼ<ᵢ (1 − αⱼ)``, no background term (a black background, as summation has none),
  no early termination.

The tiled pure-JAX rasterizer forms the [capacity, 256] alphas of all intersections at once and
takes the per-tile exclusive product of ``1 − α`` with a segmented associative scan, so it is
differentiable by plain autodiff. Memory is O(capacity × 256): fine for ablations on crops and
moderate sizes, not a production renderer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gi_jax import errors
from gi_jax.binning import TILE_PIXELS, Binning, Bins, TileGrid
from gi_jax.gaussians import Gaussians, check_size
from gi_jax.raster_reference import ALPHA_MIN, gaussian_alpha, tile_pixel_coords, tiles_to_image
from gi_jax.render import check_overflow, render_binned

# 3DGS caps α so that a pixel never becomes fully opaque (and 1 − α never exactly 0).
ALPHA_MAX = 0.99
DEFAULT_OPACITY = 0.5


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AlphaGaussians:
  """Gaussians with a per-Gaussian opacity, for α-blending.

  Attributes:
    gaussians: the Gaussians (positions, covariances, colours).
    opacity_raw: [..., N] raw opacity; the opacity is ``sigmoid(opacity_raw)``.
  """
  gaussians: Gaussians
  opacity_raw: jax.Array

  @property
  def opacity(self) -> jax.Array:
    return jax.nn.sigmoid(self.opacity_raw)

  @property
  def num_gaussians(self) -> int:
    return self.gaussians.num_gaussians

  def validate(self) -> AlphaGaussians:
    """Checks the Gaussians and that ``opacity_raw`` is [..., N]."""
    self.gaussians.validate()
    if self.opacity_raw.shape != self.gaussians.means_raw.shape[:-1]:
      raise errors.InvalidInputError(
          f"opacity_raw must have shape {self.gaussians.means_raw.shape[:-1]} ([..., N]), got "
          f"{self.opacity_raw.shape}")
    return self


def with_opacity(gaussians: Gaussians, opacity: float = DEFAULT_OPACITY) -> AlphaGaussians:
  """``gaussians`` with every opacity set to ``opacity`` (in (0, 1))."""
  if not 0.0 < opacity < 1.0:
    raise errors.InvalidInputError(f"opacity must lie in (0, 1), got {opacity}")
  raw = jnp.full(gaussians.means_raw.shape[:-1], jnp.log(opacity / (1.0 - opacity)),
                 gaussians.means_raw.dtype)
  return AlphaGaussians(gaussians, raw)


def rasterize_alpha(means, conics, colors, opacities, bins: Bins, height: int,
                    width: int) -> jax.Array:
  """Front-to-back α-blending of each tile's Gaussians in index order.

  Args:
    means: [N, 2] pixel positions.
    conics: [N, 3] inverse covariances (A, B, C).
    colors: [N, 3] colours.
    opacities: [N] opacities in [0, 1].
    bins: intersections from :func:`gi_jax.binning.bin_intersections` (tile lists in increasing
      Gaussian index, as binning guarantees).
    height: image height (static).
    width: image width (static).

  Returns:
    [H, W, 3] ``Σᵢ cᵢ·αᵢ·Πⱼ<ᵢ (1 − αⱼ)`` (unclipped), differentiable in every float argument.
  """
  grid = TileGrid(height, width)
  gid, tid = bins.gaussian_ids, bins.tile_ids
  used = tid < grid.num_tiles
  px, py = tile_pixel_coords(jnp.minimum(tid, grid.num_tiles - 1), grid.tiles_x, means.dtype)
  falloff, _, _ = gaussian_alpha(means[gid][:, None, :], conics[gid][:, None, :], px, py)
  alpha = jnp.minimum(ALPHA_MAX, opacities[gid][:, None] * falloff)
  alpha = jnp.where(used[:, None] & (alpha >= ALPHA_MIN), alpha, 0.0)     # [C, 256]
  transmittance = exclusive_segment_cumprod(1.0 - alpha, tid)
  weight = alpha * transmittance
  acc = jnp.zeros((grid.num_tiles + 1, TILE_PIXELS, colors.shape[-1]), colors.dtype)
  acc = acc.at[tid].add(weight[..., None] * colors[gid][:, None, :])
  return tiles_to_image(acc[:-1], grid)


# One compiled program rather than a few hundred eager ops (an associative scan unrolls into
# log2(C) levels of slices); products and selects only, so eager calls get the same bits.
@jax.jit
def exclusive_segment_cumprod(x: jax.Array, segment: jax.Array) -> jax.Array:
  """Product of the earlier rows of the same segment: ``out[i] = Π x[j]`` over ``j < i`` in i's.

  Args:
    x: [C, ...] factors.
    segment: [C] segment ids, equal ids contiguous.

  Returns:
    [C, ...] exclusive products (1 at each segment's first row).
  """
  first = jnp.concatenate([jnp.ones((1,), bool), segment[1:] != segment[:-1]])
  flags = jnp.broadcast_to(first.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)

  def combine(left, right):
    left_flag, left_prod = left
    right_flag, right_prod = right
    # A segment start on the right discards everything to its left.
    return left_flag | right_flag, jnp.where(right_flag, right_prod, left_prod * right_prod)

  _, inclusive = jax.lax.associative_scan(combine, (flags, x))
  shifted = jnp.concatenate([jnp.ones_like(x[:1]), inclusive[:-1]])
  return jnp.where(flags, jnp.ones_like(x), shifted)


def render_alpha_with_count(model: AlphaGaussians, height: int, width: int, *,
                            capacity: int | None = None,
                            binning: Binning | None = None) -> tuple[jax.Array, jax.Array]:
  """α-blended render and the true intersection count (the counterpart of ``render_with_count``).

  Args:
    model: an :class:`AlphaGaussians` [N] or a batch [..., N].
    height: image height in pixels.
    width: image width in pixels.
    capacity: static intersection capacity; None counts (concrete values) or uses
      :func:`gi_jax.binning.default_capacity` (traced). Not with ``binning``.
    binning: a :func:`gi_jax.bin_gaussians` binning of ``model.gaussians`` to reuse.

  Returns:
    ``(image [..., H, W, 3] clipped to [0, 1], count [...] int32)``; where ``count > capacity`` the
    image misses intersections and the caller must re-render with a larger capacity.
  """
  image, count, _ = _render_alpha(model, height, width, capacity, binning)
  return image, count


def _render_alpha(model, height, width, capacity, binning=None):
  """Renders; returns ``(image, count, capacity used)``."""
  height, width = check_size(height, width)
  model.validate()
  return render_binned(
      model, height, width, capacity, lambda m: m.gaussians,
      lambda m, proj, bins: rasterize_alpha(proj.means, proj.conics, proj.colors, m.opacity, bins,
                                            height, width), binned=binning)


def render_alpha(model: AlphaGaussians, height: int, width: int, *,
                 capacity: int | None = None) -> jax.Array:
  """[..., H, W, 3] α-blended image in [0, 1]; nothing is dropped silently.

  As :func:`gi_jax.render`: with concrete inputs an overflowing ``capacity`` raises
  :class:`~gi_jax.errors.CapacityOverflowError`; under tracing an overflowing render is all NaN.

  Example:
    >>> model = with_opacity(gi_jax.init_gaussians(jax.random.key(0), 500, 64, 64))
    >>> image = render_alpha(model, 64, 64)
  """
  return check_overflow(*_render_alpha(model, height, width, capacity))

