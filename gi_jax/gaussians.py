"""The Gaussian set: a pure pytree of raw parameters, and what derives from them.

An image is represented by N 2D Gaussians, 8 numbers each (docs/design.md §1): 2 for the position, 3 for
the covariance and 3 for the colour (C numbers for an image of C channels: 1 for grayscale, 4 for
RGBA, any C for multispectral data). Only raw, unconstrained arrays are stored; pixel means,
covariance, conic and radius are derived, so the pytree holds exactly what the optimizer updates.

Two parameterisations share one layout, ``cov_raw`` [..., N, 3]:

- ``"cholesky"``: ``cov_raw`` is ``chol_raw``; ``(l11, l21, l22) = chol_raw + (0.5, 0, 0.5)`` and
  ``Σ = L Lᵀ``.
- ``"rs"``: ``cov_raw`` is ``concat(scale_raw, rot_raw)``; ``s = |scale_raw + 0.5|``,
  ``θ = 2π·sigmoid(rot_raw)`` and ``Σ = R(θ) diag(s²) R(θ)ᵀ``.

A set remembers the canvas it was fitted on (``canvas_size``, static): covariances are in that
canvas's pixels, and a render at another size scales positions and covariances together
(:meth:`Gaussians.pixel_means`, :meth:`Gaussians.pixel_covariance`).

Sharing the layout keeps every Gaussian set the same shape whatever its parameterisation, so
batches, optimizer states and codecs never special-case it. Leading batch dimensions are allowed
everywhere; ``jax.vmap`` over a stacked ``Gaussians`` works as for any pytree.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from gi_jax import errors

Parameterization = Literal["cholesky", "rs"]
PARAMETERIZATIONS = ("cholesky", "rs")

# The paper's fixed offset that keeps initial Cholesky factors (and RS scales) away from zero.
CHOLESKY_OFFSET = (0.5, 0.0, 0.5)
SCALE_OFFSET = 0.5
# tanh(atanh(1 - 1e-6)) keeps initial means strictly inside the image and atanh finite.
_MEAN_INIT_LIMIT = 1.0 - 1e-6


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Gaussians:
  """N 2D Gaussians in raw (unconstrained) parameters.

  Attributes:
    means_raw: [..., N, 2] pre-tanh positions; the pixel position is ``0.5·W·(tanh(u_x)+1)``,
      ``0.5·H·(tanh(u_y)+1)``.
    cov_raw: [..., N, 3] ``chol_raw`` ("cholesky") or ``(scale_raw_x, scale_raw_y, rot_raw)``
      ("rs").
    colors: [..., N, C] colours, used raw (no activation; opacity is folded into colour); C is
      the image's channel count (3 for RGB).
    parameterization: ``"cholesky"`` or ``"rs"`` (static).
    canvas_size: ``(height, width)`` of the canvas the covariances are measured in, i.e. the
      size the set was fitted at (static, so a batch shares it and ``vmap`` never sees it). Every
      set the library makes carries it (``init_gaussians``, ``fit``, ``load_gaussians``, the
      codec's decoder). None (a set built by hand) means the covariances are in the pixels of
      whatever size it is rendered at.

  Example:
    >>> g = gi_jax.init_gaussians(jax.random.key(0), 1000, 64, 64)
    >>> g.num_gaussians, g.covariance.shape
    (1000, (1000, 3))
  """

  means_raw: jax.Array
  cov_raw: jax.Array
  colors: jax.Array
  parameterization: str = dataclasses.field(default="cholesky", metadata=dict(static=True))
  canvas_size: tuple[int, int] | None = dataclasses.field(default=None,
                                                          metadata=dict(static=True))

  def __post_init__(self):
    if self.canvas_size is not None:
      # A list or NumPy ints would make two equal sizes different pytree metadata.
      object.__setattr__(self, "canvas_size", check_size(*self.canvas_size))

  # -- constructors ------------------------------------------------------------------------------

  @classmethod
  def cholesky(cls, means_raw, chol_raw, colors, canvas_size=None) -> Gaussians:
    """Builds a Cholesky-parameterised set from ``means_raw``, ``chol_raw`` and ``colors``."""
    return cls(jnp.asarray(means_raw), jnp.asarray(chol_raw), jnp.asarray(colors), "cholesky",
               canvas_size)

  @classmethod
  def rs(cls, means_raw, scale_raw, rot_raw, colors, canvas_size=None) -> Gaussians:
    """Builds an RS-parameterised set; ``rot_raw`` is [..., N, 1] (or [..., N])."""
    scale_raw = jnp.asarray(scale_raw)
    rot_raw = jnp.asarray(rot_raw)
    if rot_raw.ndim == scale_raw.ndim - 1:
      rot_raw = rot_raw[..., None]
    cov_raw = jnp.concatenate([scale_raw, rot_raw.astype(scale_raw.dtype)], axis=-1)
    return cls(jnp.asarray(means_raw), cov_raw, jnp.asarray(colors), "rs", canvas_size)

  # -- raw views ---------------------------------------------------------------------------------

  @property
  def num_gaussians(self) -> int:
    return self.means_raw.shape[-2]

  @property
  def num_channels(self) -> int:
    """C, the colour channels (3 for RGB)."""
    return self.colors.shape[-1]

  def with_canvas_size(self, height: int, width: int) -> Gaussians:
    """The same set, stating the canvas its covariances are measured in."""
    return dataclasses.replace(self, canvas_size=(height, width))

  @property
  def chol_raw(self) -> jax.Array:
    """[..., N, 3] raw Cholesky factors (Cholesky parameterisation only)."""
    self._require("cholesky", "chol_raw")
    return self.cov_raw

  @property
  def scale_raw(self) -> jax.Array:
    """[..., N, 2] raw scales (RS parameterisation only)."""
    self._require("rs", "scale_raw")
    return self.cov_raw[..., :2]

  @property
  def rot_raw(self) -> jax.Array:
    """[..., N, 1] raw rotations (RS parameterisation only)."""
    self._require("rs", "rot_raw")
    return self.cov_raw[..., 2:]

  def _require(self, parameterization: str, name: str):
    if self.parameterization != parameterization:
      raise AttributeError(f"{name} exists only for parameterization={parameterization!r}, "
                           f"this set is {self.parameterization!r}")

  # -- derived quantities ------------------------------------------------------------------------

  def _scales(self, height: int, width: int) -> tuple[float, float] | None:
    """``(sx, sy)`` from the canvas to a ``height`` × ``width`` render; None at the canvas size."""
    if self.canvas_size is None or self.canvas_size == (height, width):
      return None
    return width / self.canvas_size[1], height / self.canvas_size[0]

  def pixel_means(self, height: int, width: int) -> jax.Array:
    """[..., N, 2] positions (x, y) in pixels of a ``height`` × ``width`` render.

    Pixel (row i, col j) sits at the point (j, i) (docs/design.md §1). At the canvas size (or
    with no canvas size) ``x = 0.5·W·(tanh(u_x) + 1)``. At another size the canvas is stretched
    by ``s = W'/W`` so that each render pixel covers the area it covers on the canvas: a pixel is
    the unit square around its point, so ``x' = s·(x + ½) − ½`` (and likewise y). Then a 2× render
    box-filtered back to 1× is centred on the 1× render's pixels.
    """
    size = jnp.asarray([width, height], self.means_raw.dtype)
    scales = self._scales(height, width)
    if scales is None:
      return 0.5 * size * (jnp.tanh(self.means_raw) + 1.0)
    canvas = jnp.asarray(self.canvas_size[::-1], self.means_raw.dtype)
    scale = jnp.asarray(scales, self.means_raw.dtype)
    return (0.5 * canvas * (jnp.tanh(self.means_raw) + 1.0) + 0.5) * scale - 0.5

  def pixel_covariance(self, height: int, width: int) -> jax.Array:
    """[..., N, 3] covariance ``(a, b, c)`` in pixels² of a ``height`` × ``width`` render.

    ``Σ' = S Σ S`` with ``S = diag(W'/W, H'/H)`` from the canvas size: positions and covariances
    scale together, anisotropically when the aspect ratio changes. At the canvas size (or with no
    canvas size) this is :attr:`covariance`, bit for bit.
    """
    scales = self._scales(height, width)
    if scales is None:
      return self.covariance
    sx, sy = scales
    factor = jnp.asarray([sx * sx, sx * sy, sy * sy], self.cov_raw.dtype)
    return self.covariance * factor

  @property
  def covariance(self) -> jax.Array:
    """[..., N, 3] covariance ``(a, b, c)`` of ``Σ = [[a, b], [b, c]]`` in pixels²."""
    if self.parameterization == "cholesky":
      l11, l21, l22 = _unstack(self.cov_raw + jnp.asarray(CHOLESKY_OFFSET, self.cov_raw.dtype))
      return jnp.stack([l11 * l11, l11 * l21, l21 * l21 + l22 * l22], axis=-1)
    if self.parameterization == "rs":
      sx, sy, rot = _unstack(self.cov_raw)
      sx = jnp.abs(sx + SCALE_OFFSET)
      sy = jnp.abs(sy + SCALE_OFFSET)
      theta = 2.0 * jnp.pi * jax.nn.sigmoid(rot)
      cos, sin = jnp.cos(theta), jnp.sin(theta)
      # R diag(s²) Rᵀ written out so no [N, 2, 2] matrices are built.
      a = cos * cos * sx * sx + sin * sin * sy * sy
      b = cos * sin * (sx * sx - sy * sy)
      c = sin * sin * sx * sx + cos * cos * sy * sy
      return jnp.stack([a, b, c], axis=-1)
    raise errors.InvalidInputError(f"unknown parameterization {self.parameterization!r}")

  @property
  def determinant(self) -> jax.Array:
    """[..., N] ``det Σ``; a Gaussian with ``det <= 0`` is never rendered."""
    return covariance_determinant(self.covariance)

  @property
  def conic(self) -> jax.Array:
    """[..., N, 3] inverse covariance ``(A, B, C) = (c, −b, a) / det`` (0 where ``det <= 0``)."""
    return covariance_conic(self.covariance)

  @property
  def radius(self) -> jax.Array:
    """[..., N] int32 screen-space radius ``ceil(3·sqrt(λ_max))`` in pixels: the reference's 3σ extent (docs/design.md §2)."""
    return covariance_radius(self.covariance)

  def to_cholesky(self) -> Gaussians:
    """Returns the same Gaussians in the Cholesky parameterisation (exact up to rounding)."""
    if self.parameterization == "cholesky":
      return self
    a, b, c = _unstack(self.covariance)
    l11 = jnp.sqrt(a)
    l21 = b / l11
    l22 = jnp.sqrt(jnp.maximum(c - l21 * l21, 0.0))
    chol = jnp.stack([l11, l21, l22], axis=-1) - jnp.asarray(CHOLESKY_OFFSET, a.dtype)
    return Gaussians(self.means_raw, chol, self.colors, "cholesky", self.canvas_size)

  # -- checks ------------------------------------------------------------------------------------

  def nonfinite_fields(self) -> list[str]:
    """The fields holding NaN or infinity, among those with concrete values."""
    return [name for name in ("means_raw", "cov_raw", "colors")
            if is_concrete(value := getattr(self, name))
            and not np.isfinite(np.asarray(value)).all()]

  def validate(self) -> Gaussians:
    """Checks shapes, parameterisation and (for concrete arrays) finiteness.

    Returns:
      ``self``, so calls chain.

    Raises:
      InvalidInputError: naming the field and the problem.
    """
    if self.parameterization not in PARAMETERIZATIONS:
      raise errors.InvalidInputError(
          f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}")
    for name, last in (("means_raw", 2), ("cov_raw", 3), ("colors", None)):
      shape = getattr(self, name).shape
      if len(shape) < 2 or shape[-1] != (shape[-1] if last is None else last) or shape[-1] < 1:
        raise errors.InvalidInputError(f"Gaussians.{name} must have shape [..., N, {last or 'C'}]"
                                       f"{'' if last else ' with C >= 1'}, got {shape}")
    lead = self.means_raw.shape[:-1]
    if self.cov_raw.shape[:-1] != lead or self.colors.shape[:-1] != lead:
      raise errors.InvalidInputError(
          "Gaussians fields disagree on [..., N]: means_raw "
          f"{self.means_raw.shape}, cov_raw {self.cov_raw.shape}, colors {self.colors.shape}")
    if self.num_gaussians < 1:
      raise errors.InvalidInputError("a Gaussian set needs at least one Gaussian (N >= 1)")
    nonfinite = self.nonfinite_fields()
    if nonfinite:
      raise errors.InvalidInputError(f"Gaussians.{nonfinite[0]} contains NaN or infinity")
    return self


def covariance_determinant(cov: jax.Array) -> jax.Array:
  a, b, c = _unstack(cov)
  return a * c - b * b


def covariance_conic(cov: jax.Array) -> jax.Array:
  a, b, c = _unstack(cov)
  det = a * c - b * b
  ok = det > 0
  inv = jnp.where(ok, _reciprocal(jnp.where(ok, det, 1.0)), 0.0)
  return jnp.stack([c * inv, -b * inv, a * inv], axis=-1)


@jax.custom_jvp
def _reciprocal(x: jax.Array) -> jax.Array:
  return 1.0 / x


@_reciprocal.defjvp
def _reciprocal_jvp(primals, tangents):
  # d(1/x) = −dx/x², taken as −(dx/x)/x: for a needle-thin Gaussian (det ≈ 1e-20 px⁴) 1/x²
  # is inf in float32, and autodiff's −dx·(1/x²) made its zero cotangent (it covers no pixel
  # centre) 0·inf = NaN. Dividing twice keeps a zero cotangent zero; its transpose divides twice.
  (x,), (dx,) = primals, tangents
  return 1.0 / x, -(dx / x) / x


def covariance_radius(cov: jax.Array) -> jax.Array:
  a, b, c = _unstack(cov)
  det = a * c - b * b
  mid = 0.5 * (a + c)
  lam = mid + jnp.sqrt(jnp.maximum(0.1, mid * mid - det))
  return jnp.ceil(3.0 * jnp.sqrt(lam)).astype(jnp.int32)


def init_gaussians(key: jax.Array, num_gaussians: int, height: int, width: int,
                   parameterization: Parameterization = "cholesky",
                   dtype=jnp.float32, channels: int = 3) -> Gaussians:
  """The paper's random initialisation (docs/design.md §1).

  Args:
    key: a JAX PRNG key.
    num_gaussians: N >= 1.
    height: image height in pixels (>= 1): the canvas size the set carries.
    width: image width in pixels (>= 1).
    parameterization: ``"cholesky"`` or ``"rs"``.
    dtype: float dtype of the arrays.
    channels: C, colour channels (>= 1). For C = 3 the draws are the paper's; other C draw
      ``[N, C]`` colours from the same key.

  Returns:
    A ``Gaussians`` with means uniform over the image, ``cov_raw ~ U[0, 1)`` and colours
    ``~ U[0, 1)``, of canvas size ``(height, width)``.

  Example:
    >>> g = init_gaussians(jax.random.key(0), 5000, 256, 256)
  """
  check_count(num_gaussians)
  check_size(height, width)
  check_channels(channels)
  if parameterization not in PARAMETERIZATIONS:
    raise errors.InvalidInputError(
        f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
  k_mean, k_cov, k_col = jax.random.split(key, 3)
  u = jax.random.uniform(k_mean, (num_gaussians, 2), dtype, -_MEAN_INIT_LIMIT, _MEAN_INIT_LIMIT)
  means_raw = jnp.arctanh(u)
  cov_raw = jax.random.uniform(k_cov, (num_gaussians, 3), dtype)
  colors = jax.random.uniform(k_col, (num_gaussians, channels), dtype)
  return Gaussians(means_raw, cov_raw, colors, parameterization, (height, width))


def check_channels(channels) -> int:
  """Raises InvalidInputError unless ``channels`` is an integer >= 1."""
  if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
    raise errors.InvalidInputError(f"channels must be an integer >= 1, got {channels!r}")
  return int(channels)


def check_count(num_gaussians) -> int:
  """Raises InvalidInputError unless ``num_gaussians`` is an integer >= 1."""
  if isinstance(num_gaussians, bool) or not isinstance(num_gaussians, (int, np.integer)):
    raise errors.InvalidInputError(f"num_gaussians must be an integer, got {num_gaussians!r}")
  if num_gaussians < 1:
    raise errors.InvalidInputError(f"num_gaussians must be >= 1, got {num_gaussians}")
  return int(num_gaussians)


def check_steps(steps) -> int:
  """Raises InvalidInputError unless ``steps`` is an integer >= 0."""
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
    raise errors.InvalidInputError(f"steps must be an integer >= 0, got {steps!r}")
  return int(steps)


def check_size(height, width) -> tuple[int, int]:
  """Raises InvalidInputError unless ``height`` and ``width`` are integers >= 1."""
  for name, value in (("height", height), ("width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise errors.InvalidInputError(f"{name} must be an integer, got {value!r}")
    if value < 1:
      raise errors.InvalidInputError(f"{name} must be >= 1, got {value}")
  return int(height), int(width)


def is_concrete(x) -> bool:
  """True when ``x`` holds values now (not a tracer inside jit, grad or vmap)."""
  return not isinstance(x, jax.core.Tracer)


def _unstack(x: jax.Array):
  return tuple(x[..., i] for i in range(x.shape[-1]))
