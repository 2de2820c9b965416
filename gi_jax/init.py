"""Content-adaptive initialisation: put Gaussians where the image has detail.

The paper starts from uniform random positions, sizes and colours (:func:`gi_jax.init_gaussians`),
so most of the first thousands of steps are spent moving Gaussians to edges and fixing colours.
:func:`gradient_init` starts close to the image instead (as GaussianImage++, Image-GS and Instant-GI
do):

- positions follow a mix of image-gradient magnitude and uniform density: a pixel is drawn with
  that probability, then the point is jittered within the pixel. The draw is stratified along a
  Hilbert curve, so points are spread evenly for their density rather than clumped (with
  accumulated summation a clump renders as a bright blotch and a gap as a hole);
- each Gaussian is isotropic with ``σ = k·sqrt(a/π)``, where ``a`` is the area of its Voronoi cell
  among all points (found by jump flooding on the pixel grid): edges get many small Gaussians,
  flat regions a few large ones, and together they tile the image;
- accumulated summation adds overlapping Gaussians: points ``a`` pixels² apart with that ``σ``
  overlap ``2πσ²/a = 2k²`` times at any point, so each colour is the mean image colour over the
  point's cell divided by ``2k²`` (by ``2πσ²/a`` where σ is clipped to :data:`MIN_SIGMA`), and
  the first render is already a blurred copy of the image;
- the uniform share and ``k`` depend on the density (:func:`default_settings`): 0.1 and 0.7 where
  Gaussians are very sparse, 0.1 and 1 where sparse, 0.3 and 1 where dense; measured, each fits
  better where it is used.

:func:`gradient_init` is jitted (about 0.35 s for 70,000 Gaussians on a 768×512 image on two
shared CPU cores, after a ~3 s compilation) and vmappable over images; :func:`initialize` is
what ``fit`` and ``fit_batch`` call to turn their ``init=`` option into Gaussians.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gi_jax import errors
from gi_jax.gaussians import (CHOLESKY_OFFSET, PARAMETERIZATIONS, SCALE_OFFSET, Gaussians,
                              check_count, init_gaussians)

INIT_MODES = ("random", "gradient")
# gradient_init's (uniform_fraction, scale_factor) by pixels per Gaussian: (from this many
# pixels a Gaussian up, the settings), sparsest first; measured in docs/fitting.md. Where
# Gaussians are sparse, fewer of them in flat regions fit better; narrower ones too, but only
# where they are very sparse: at moderate densities narrower Gaussians leave a smooth image's
# flat regions short. Where they are dense, neither pays.
SETTINGS_BY_DENSITY = ((100.0, (0.1, 0.7)), (30.0, (0.1, 1.0)), (0.0, (0.3, 1.0)))
# Below ~0.3 px a Gaussian falls between pixel centres and renders as noise.
MIN_SIGMA = 0.3
# tanh(u) must stay inside (−1, 1) for atanh; same guard as the random initialisation.
_MEAN_LIMIT = 1.0 - 1e-6


def initialize(init, key: jax.Array, image: jax.Array, num_gaussians: int,
               parameterization: str = "cholesky", **options) -> Gaussians:
  """Turns a ``fit(init=...)`` option into starting Gaussians.

  Args:
    init: ``None`` or ``"random"`` (the paper's initialisation), ``"gradient"``
      (:func:`gradient_init`), or a :class:`Gaussians` used as it is.
    key: PRNG key (unused for a given ``Gaussians``).
    image: [H, W, C] target image in [0, 1].
    num_gaussians: N (ignored for a given ``Gaussians``).
    parameterization: ``"cholesky"`` or ``"rs"``.
    **options: passed to :func:`gradient_init` (e.g. ``uniform_fraction``).

  Returns:
    A validated :class:`Gaussians` of the image's canvas size and channel count (a given set must
    have the image's channels, and the image's size or none).
  """
  height, width, channels = image.shape[-3:]
  if isinstance(init, Gaussians):
    init.validate()
    if init.canvas_size not in (None, (height, width)):
      raise errors.InvalidInputError(
          f"init Gaussians were fitted at {init.canvas_size[0]}×{init.canvas_size[1]}, the image "
          f"is {height}×{width}: rescale them first (render at the new size, or fit afresh)")
    if init.num_channels != channels:
      raise errors.InvalidInputError(f"init Gaussians have {init.num_channels} colour channels, "
                                     f"the image {channels}")
    return init.with_canvas_size(height, width)
  if init is None or (isinstance(init, str) and init == "random"):
    return init_gaussians(key, check_count(num_gaussians), height, width, parameterization,
                          channels=channels)
  if isinstance(init, str) and init == "gradient":
    return gradient_init(key, image, check_count(num_gaussians), parameterization, **options)
  raise errors.InvalidInputError(
      f"init must be one of {INIT_MODES} or a Gaussians, got {init!r}")


def gradient_init(key: jax.Array, image: jax.Array, num_gaussians: int,
                  parameterization: str = "cholesky", *, uniform_fraction: float | None = None,
                  scale_factor: float | None = None, normalize_colors: bool = True) -> Gaussians:
  """Gaussians placed by image-gradient magnitude, sized by local density, coloured by the image.

  Args:
    key: a JAX PRNG key; the same key gives the same Gaussians.
    image: [H, W, C] float image in [0, 1].
    num_gaussians: N >= 1 (static).
    parameterization: ``"cholesky"`` or ``"rs"``.
    uniform_fraction: share of the sampling density that is uniform (the rest follows the gradient
      magnitude); keeps flat regions covered. In [0, 1]. None: by density
      (:func:`default_settings`).
    scale_factor: ``k`` in ``σ = k·sqrt(cell area / π)``; larger gives smoother overlap. None: by
      density (:func:`default_settings`).
    normalize_colors: divide colours by the expected overlap ``2πσ²/a`` (``2k²`` unless σ was
      clipped; right for accumulated summation); False keeps the image colours (for
      α-blending, where the front Gaussian wins).

  Returns:
    A :class:`Gaussians` with ``num_gaussians`` Gaussians.

  Example:
    >>> g = gradient_init(jax.random.key(0), image, 5000)
    >>> gi_jax.render(g, *image.shape[:2])  # already a blurred copy of the image
  """
  num_gaussians = check_count(num_gaussians)
  if image.ndim != 3 or image.shape[-1] < 1:
    raise errors.InvalidInputError(f"image must have shape [H, W, C], got {image.shape}")
  by_density = default_settings(image.shape[0] * image.shape[1] / num_gaussians)
  uniform_fraction = by_density[0] if uniform_fraction is None else uniform_fraction
  scale_factor = by_density[1] if scale_factor is None else scale_factor
  if parameterization not in PARAMETERIZATIONS:
    raise errors.InvalidInputError(
        f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
  if not 0.0 <= uniform_fraction <= 1.0:
    raise errors.InvalidInputError(f"uniform_fraction must lie in [0, 1], got {uniform_fraction}")
  if not scale_factor > 0:
    raise errors.InvalidInputError(f"scale_factor must be > 0, got {scale_factor}")
  return _gradient_init(key, jnp.asarray(image, jnp.float32), num_gaussians, parameterization,
                        float(uniform_fraction), float(scale_factor), bool(normalize_colors))


def default_settings(pixels_per_gaussian: float) -> tuple[float, float]:
  """:func:`gradient_init`'s ``(uniform_fraction, scale_factor)`` for a density.

  From :data:`SETTINGS_BY_DENSITY`: 0.1 and 0.7 from 100 pixels a Gaussian up (a codec's few
  thousand Gaussians on 768×512), 0.1 and 1.0 from 30 (10,000 on 768×512 have 39 px each), else
  0.3 and 1.0 (70,000 have 5.6).
  """
  return next(settings for threshold, settings in SETTINGS_BY_DENSITY
              if pixels_per_gaussian >= threshold)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _gradient_init(key, image, num_gaussians, parameterization, uniform_fraction, scale_factor,
                   normalize_colors):
  xy = sample_positions(key, sampling_density(image, uniform_fraction), num_gaussians)
  return cell_gaussians(xy, image, scale_factor, parameterization, normalize_colors)


def cell_gaussians(xy: jax.Array, image: jax.Array, scale_factor: float,
                   parameterization: str = "cholesky", normalize_colors: bool = True) -> Gaussians:
  """Isotropic Gaussians at ``xy`` that together tile the image and render roughly ``image``.

  Args:
    xy: [N, 2] positions (x, y) in pixels.
    image: [H, W, C] values to colour them with (the image, or a residual).
    scale_factor: ``k``: ``σ = k·sqrt(cell area/π)``.
    parameterization: ``"cholesky"`` or ``"rs"``.
    normalize_colors: divide the cell means by the overlap ``2πσ²/a`` (accumulated summation;
      ``2k²`` unless σ was clipped).

  Returns:
    :class:`Gaussians` coloured by the mean of ``image`` over each point's Voronoi cell.
  """
  height, width = image.shape[:2]
  area, colors = voronoi_cells(xy, image)
  cell_sigma = scale_factor * jnp.sqrt(area / jnp.pi)
  # Below MIN_SIGMA a Gaussian falls between pixel centres; beyond half the image it only costs.
  sigma = jnp.clip(cell_sigma, MIN_SIGMA, 0.5 * max(height, width))
  if normalize_colors:
    # The overlap is 2πσ²/a: 2k² unless the clip changed σ. Where points are denser than
    # MIN_SIGMA allows (N near or above the pixel count) it is far larger, and 2k² would start
    # the sum saturated, where the clipped loss has no gradient. The ratio is exactly 1 where
    # the clip did nothing.
    colors = colors / (2.0 * scale_factor**2 * jnp.square(sigma / cell_sigma)[:, None])
  return from_pixels(xy, sigma, colors, height, width, parameterization)


def gradient_magnitude(image: jax.Array) -> jax.Array:
  """[H, W] Sobel gradient magnitude, root of the sum over channels (edges replicated)."""
  pad = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
  # Sobel: central difference across, [1, 2, 1] smoothing along (less noisy than a difference).
  smooth_y = pad[:-2] + 2.0 * pad[1:-1] + pad[2:]           # [H, W + 2, 3]
  smooth_x = pad[:, :-2] + 2.0 * pad[:, 1:-1] + pad[:, 2:]  # [H + 2, W, 3]
  gx = (smooth_y[:, 2:] - smooth_y[:, :-2]) / 8.0
  gy = (smooth_x[2:] - smooth_x[:-2]) / 8.0
  return jnp.sqrt(jnp.sum(gx * gx + gy * gy, axis=-1))


def sampling_density(image: jax.Array, uniform_fraction: float) -> jax.Array:
  """[H, W] probabilities (summing to 1): ``(1−u)·|∇I|/Σ|∇I| + u/(H·W)``.

  A constant image (no gradient anywhere) gets the uniform density.
  """
  grad = gradient_magnitude(image)
  total = jnp.sum(grad)
  num_pixels = grad.size
  uniform = jnp.full_like(grad, 1.0 / num_pixels)
  by_gradient = jnp.where(total > 0, grad / jnp.where(total > 0, total, 1.0), uniform)
  return (1.0 - uniform_fraction) * by_gradient + uniform_fraction * uniform


def sample_positions(key: jax.Array, density: jax.Array, num: int) -> jax.Array:
  """Draws ``num`` points: a pixel by ``density``, then jittered within it.

  Pixels are drawn by stratified inverse-CDF sampling along a Hilbert curve: sample i takes the
  pixel where the curve's cumulative density crosses ``(i + U_i)/num``. Every stretch of the curve
  holding 1/num of the density gets exactly one sample, and a stretch of a Hilbert curve is a
  compact patch of the image, so the points are spread evenly for their density (blue-noise-like).
  Independent draws would clump; with accumulated summation, clumps render as bright blotches and
  gaps as dark holes.

  Args:
    key: PRNG key.
    density: [H, W] non-negative weights (need not sum to 1).
    num: number of points (static).

  Returns:
    [num, 2] positions (x, y) in pixels; pixel (row i, col j) is the point (j, i), and each point
    lies within ±0.5 of its pixel.
  """
  height, width = density.shape
  key_pixel, key_jitter = jax.random.split(key)
  order = jnp.asarray(hilbert_order(height, width))
  cdf = jnp.cumsum(density.reshape(-1)[order])
  u = (jnp.arange(num, dtype=cdf.dtype) + jax.random.uniform(key_pixel, (num,), cdf.dtype)) / num
  # side="right" never lands on a zero-density pixel (its cdf equals its predecessor's).
  along = jnp.searchsorted(cdf, u * cdf[-1], side="right")
  pixel = order[jnp.minimum(along, cdf.shape[0] - 1)].astype(jnp.int32)
  jitter = jax.random.uniform(key_jitter, (num, 2), minval=-0.5, maxval=0.5)
  return jnp.stack([pixel % width, pixel // width], axis=-1).astype(jnp.float32) + jitter


@functools.lru_cache(maxsize=16)
def hilbert_order(height: int, width: int) -> np.ndarray:
  """[H·W] flat pixel indices (row-major) in the order a Hilbert curve visits them.

  The curve covers the smallest 2^k square holding the image; pixels outside are skipped, which
  keeps consecutive pixels close (jumps only where the curve leaves and re-enters the image).
  """
  side = 1 << max(int(math.ceil(math.log2(max(height, width)))), 0)
  rows, cols = np.divmod(np.arange(height * width, dtype=np.int64), width)
  x, y = cols.copy(), rows.copy()
  d = np.zeros_like(x)
  s = side // 2
  while s > 0:
    # The classic xy→d conversion, vectorised over pixels (Wikipedia, "Hilbert curve").
    rx = (x & s) > 0
    ry = (y & s) > 0
    d += s * s * ((3 * rx) ^ ry)
    flip = ~ry & rx
    x = np.where(flip, s - 1 - x, x)
    y = np.where(flip, s - 1 - y, y)
    swap = ~ry
    x, y = np.where(swap, y, x), np.where(swap, x, y)
    s //= 2
  return np.argsort(d, kind="stable").astype(np.int32)


def voronoi_cells(xy: jax.Array, image: jax.Array):
  """Area and mean colour of each point's Voronoi cell on the pixel grid.

  The cell of a point is the set of pixels nearer to it than to any other point, so its area is
  the area that point has to cover, whatever the local density, and the mean over it is a
  low-noise colour (a single pixel on an edge is often the wrong side of it). Points that share a
  cell (two draws in one pixel) split its area and share its colour.

  Args:
    xy: [N, 2] point positions (x, y) in pixels.
    image: [H, W, C] image.

  Returns:
    ``(area [N] in pixels², colors [N, C])``.
  """
  height, width = image.shape[:2]
  num = xy.shape[0]
  pixel = pixel_of(xy, height, width)
  owner = nearest_point_map(xy, pixel, height, width).reshape(-1)
  area = jax.ops.segment_sum(jnp.ones_like(owner, xy.dtype), owner, num)
  total = jax.ops.segment_sum(image.reshape(-1, image.shape[-1]), owner, num)
  mean = total / jnp.maximum(area, 1.0)[:, None]
  cell = owner[pixel]
  sharing = jax.ops.segment_sum(jnp.ones((num,), xy.dtype), cell, num)
  return area[cell] / sharing[cell], mean[cell]


def pixel_of(xy: jax.Array, height: int, width: int) -> jax.Array:
  """[N] int32 flat index of the nearest pixel to each position (pixel (i, j) is the point
  (j, i)).
  """
  col = jnp.clip(jnp.round(xy[..., 0]), 0, width - 1).astype(jnp.int32)
  row = jnp.clip(jnp.round(xy[..., 1]), 0, height - 1).astype(jnp.int32)
  return row * width + col


def nearest_point_map(xy: jax.Array, pixel: jax.Array, height: int, width: int) -> jax.Array:
  """[H, W] int32 index of the point nearest to each pixel, by jump flooding.

  Jump flooding (Rong & Tan, 2006) propagates seeds with halving strides, so the cost is
  O(H·W·log max(H, W)) instead of O(H·W·N); the result is exact but for rare pixels that get a
  near-nearest point, which is harmless for cell areas and means. One extra stride-1 pass
  ("1+JFA") removes most of those.
  """
  num_pixels = height * width
  rows, cols = jnp.divmod(jnp.arange(num_pixels, dtype=jnp.int32), width)
  # Where several points share a pixel, the largest index seeds it (max keeps this deterministic).
  owner = jnp.full((num_pixels,), -1, jnp.int32).at[pixel].max(
      jnp.arange(xy.shape[0], dtype=jnp.int32))
  offsets = jnp.asarray([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], jnp.int32)

  def distance(candidate):
    point = xy[jnp.maximum(candidate, 0)]
    d = (jnp.square(point[..., 0] - cols.astype(xy.dtype)) +
         jnp.square(point[..., 1] - rows.astype(xy.dtype)))
    return jnp.where(candidate >= 0, d, jnp.inf)

  def flood(owner, stride):
    # All 9 neighbours at this stride at once ([9, H·W]); the centre keeps the current owner.
    r = rows[None] + stride * offsets[:, 0:1]
    c = cols[None] + stride * offsets[:, 1:2]
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    candidate = jnp.where(inside, owner[jnp.clip(r, 0, height - 1) * width +
                                        jnp.clip(c, 0, width - 1)], -1)
    best = jnp.argmin(distance(candidate), axis=0)
    return jnp.take_along_axis(candidate, best[None], axis=0)[0], None

  top = max(int(math.ceil(math.log2(max(height, width)))) - 1, 0)
  strides = jnp.asarray([1 << k for k in range(top, -1, -1)] + [1], jnp.int32)
  owner, _ = jax.lax.scan(flood, owner, strides)
  return owner.reshape(height, width)


def from_pixels(xy: jax.Array, sigma: jax.Array, colors: jax.Array, height: int, width: int,
                parameterization: str = "cholesky") -> Gaussians:
  """Raw Gaussians from pixel positions, isotropic standard deviations and colours.

  Args:
    xy: [..., N, 2] pixel positions (x, y); clamped strictly inside the image.
    sigma: [..., N] standard deviations in pixels.
    colors: [..., N, C] colours.
    height: image height.
    width: image width.
    parameterization: ``"cholesky"`` (``chol_raw = (σ, 0, σ) − (0.5, 0, 0.5)``) or ``"rs"``
      (``scale_raw = σ − 0.5``, ``rot_raw = 0``).

  Returns:
    The :class:`Gaussians` that renders those Gaussians, of canvas size ``(height, width)``.
  """
  size = jnp.asarray([width, height], xy.dtype)
  unit = jnp.clip(2.0 * xy / size - 1.0, -_MEAN_LIMIT, _MEAN_LIMIT)
  means_raw = jnp.arctanh(unit)
  zeros = jnp.zeros_like(sigma)
  if parameterization == "cholesky":
    cov_raw = jnp.stack([sigma, zeros, sigma], axis=-1) - jnp.asarray(CHOLESKY_OFFSET, xy.dtype)
  else:
    cov_raw = jnp.stack([sigma - SCALE_OFFSET, sigma - SCALE_OFFSET, zeros], axis=-1)
  return Gaussians(means_raw, cov_raw, colors.astype(xy.dtype), parameterization, (height, width))
