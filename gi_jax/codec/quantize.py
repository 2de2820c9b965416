"""Quantizers of the GaussianImage codec (docs/design.md §5), as pure functions of pytrees.

Three quantizers turn a fitted :class:`~gi_jax.Gaussians` into a small set of symbols:

- positions: ``means_raw`` rounded to float16 (:func:`half_ste`, the paper's), or
  (``QuantizerConfig.position_step > 0``) snapped to the centres of a uniform grid of cells about
  ``position_step`` pixels wide (:func:`grid_ste`); with bits-back ordering a grid position costs
  about ``log2(cells/N) + 1.44`` bits against float16's ~28. With ``wide_sigma > 0`` the Gaussians
  whose smaller standard deviation is at least that many pixels (:func:`wide_gaussians`, from their
  quantized covariance, which the decoder reads first) sit on the even cells only, a grid twice
  as coarse: such a Gaussian barely changes when it moves by a fraction of a pixel, and each of
  its coordinates then costs a bit less;
- covariance: a 6-bit unsigned uniform quantizer per channel with a learned scale and offset
  (:class:`UniformQuantizer`), on ``chol_raw`` for Cholesky sets and on ``(scale_raw_x,
  scale_raw_y, θ)`` with ``θ = 2π·sigmoid(rot_raw)`` for RS sets;
- colours: residual vector quantization, 2 stages × 8 codewords of dimension 3
  (:class:`ResidualVQ`), initialised by k-means and updated by exponential moving averages (the
  paper's); or (``QuantizerConfig.color_bits > 0``) the covariance's learned uniform quantizer per
  colour channel, whose entropy-coded codes cost more bits but keep far more colours.

Every rounding is a straight-through estimator with an exact identity derivative (the reference's
residual VQ doubles the colour gradient; docs/design.md §6). The quantizer state is a pytree, so all of
this composes with ``jit``, ``grad`` and ``vmap``.

:class:`QuantizedGaussians` is what a file holds: the integer symbols and the side information that
turns them back into Gaussians (:meth:`QuantizedGaussians.dequantize`). The encoder's reference
image and the decoder's image both come from that one function, so they agree exactly.

Example::

  from gi_jax import codec

  quantizers = codec.init_quantizers(jax.random.key(0), gaussians)
  g_q, aux = codec.quantize_gaussians(gaussians, quantizers)       # differentiable (STE)
  q = codec.to_quantized(gaussians, quantizers)                     # integer symbols
  image = gi_jax.render(q.dequantize(), height, width)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gi_jax import errors
from gi_jax.gaussians import CHOLESKY_OFFSET, SCALE_OFFSET, Gaussians

# vector_quantize_pytorch's Laplace smoothing of the EMA cluster sizes (its default eps).
EMA_EPS = 1e-5
# RS angles are turned back into rot_raw = logit(θ / 2π); the clip keeps the logit finite for the
# angles 0 and 2π, a change of at most 2π·1e-6 rad.
_ANGLE_CLIP = 1e-6
# Grid position codes are 16-bit symbols.
MAX_POSITION_CELLS = 1 << 16
MAX_WIDE_SIGMA = 255 / 8  # a file stores it in eighths of a pixel, in one byte
# Fixed-point codewords: ``i · 2**-e`` with ``|i| <= MAX_CODEWORD_INT`` (float32 holds every such
# ``i`` exactly) and ``e <= 20``.
MAX_CODEWORD_FRACTION_BITS = 20
MAX_CODEWORD_INT = 1 << 24


def check_wide_sigma(wide_sigma, grid: bool, error: type[Exception]) -> None:
  """Raises ``error`` unless ``wide_sigma`` is 0, or a multiple of 1/8 in (0, MAX_WIDE_SIGMA] on a
  position grid."""
  if wide_sigma == 0:
    return
  if isinstance(wide_sigma, bool) or not (
      isinstance(wide_sigma, (int, float, np.integer, np.floating)) and
          0 < wide_sigma <= MAX_WIDE_SIGMA and float(wide_sigma) * 8 == round(wide_sigma * 8)):
    raise error(f"wide_sigma must be 0 or a multiple of 1/8 in (0, {MAX_WIDE_SIGMA}] pixels, got "
                f"{wide_sigma!r}")
  if not grid:
    raise error("wide_sigma > 0 needs grid positions (position_step > 0)")


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
  """Static settings of the quantizers (the paper's values by default).

  Attributes:
    cov_bits: bits per covariance channel (1..8); 6 in the paper.
    stages: residual VQ stages for colours (1..4); 2 in the paper.
    codebook_size: codewords per stage (2..256); 8 in the paper.
    kmeans_iters: k-means iterations of the codebook initialisation; 5 in the paper.
    decay: EMA decay of the codebook updates; 0.8 in the paper.
    commitment_weight: weight of the commitment loss; 1 in the paper.
    position_step: 0 keeps positions as float16 (the paper); > 0 quantizes them to a uniform grid
      of cells this many pixels wide (rounded so that cells tile the image exactly), at most
      65,536 cells per side.
    color_bits: 0 quantizes colours with the residual VQ (``stages``, ``codebook_size``; the
      paper); 1..8 with a learned uniform quantizer of this many bits per channel instead.
    codeword_fraction_bits: 0 stores the residual VQ's codewords as float16 (the paper); 1..20
      rounds them to multiples of ``2**-codeword_fraction_bits`` (fixed point, at most
      :data:`MAX_CODEWORD_INT` steps from 0), which a file packs in as few bits as each
      channel's range needs (:func:`transmitted`).
    wide_sigma: 0 puts every grid position on the same grid; > 0 (with ``position_step``) puts
      the Gaussians whose smaller standard deviation is at least this many pixels on the even
      cells only (:func:`wide_gaussians`); a multiple of 1/8 up to :data:`MAX_WIDE_SIGMA`.
  """
  cov_bits: int = 6
  stages: int = 2
  codebook_size: int = 8
  kmeans_iters: int = 5
  decay: float = 0.8
  commitment_weight: float = 1.0
  position_step: float = 0.0
  color_bits: int = 0
  codeword_fraction_bits: int = 0
  wide_sigma: float = 0.0

  def __post_init__(self):
    for name, lo, hi in (("cov_bits", 1, 8), ("stages", 1, 4), ("codebook_size", 2, 256),
                         ("kmeans_iters", 0, 1000), ("color_bits", 0, 8),
                         ("codeword_fraction_bits", 0, MAX_CODEWORD_FRACTION_BITS)):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
          or not lo <= value <= hi):
        raise errors.InvalidInputError(
            f"QuantizerConfig.{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not 0.0 <= self.decay < 1.0:
      raise errors.InvalidInputError(f"QuantizerConfig.decay must lie in [0, 1), got {self.decay}")
    if not (math.isfinite(self.commitment_weight) and self.commitment_weight >= 0):
      raise errors.InvalidInputError(
          f"QuantizerConfig.commitment_weight must be a finite number >= 0, got "
          f"{self.commitment_weight}")
    if not (math.isfinite(self.position_step) and self.position_step >= 0):
      raise errors.InvalidInputError(
          f"QuantizerConfig.position_step must be 0 (float16) or a positive number of pixels, "
          f"got {self.position_step}")
    check_wide_sigma(self.wide_sigma, self.position_step > 0, errors.InvalidInputError)

  def position_cells(self, height: int, width: int) -> tuple[int, int] | None:
    """Grid cells ``(x, y)`` for an image of this size; None for float16 positions."""
    if not self.position_step:
      return None
    cells = (max(1, math.ceil(width / self.position_step)),
             max(1, math.ceil(height / self.position_step)))
    if max(cells) > MAX_POSITION_CELLS:
      raise errors.InvalidInputError(
          f"position_step {self.position_step} gives {cells} grid cells on a {height}×{width} "
          f"image; at most {MAX_POSITION_CELLS} per side")
    return cells

  @property
  def cov_levels(self) -> int:
    """Number of covariance symbols, ``2**cov_bits``."""
    return 1 << self.cov_bits


def wide_gaussians(cov_codes, cov_scale, cov_offset, parameterization: str, wide_sigma: float,
                   xp=jnp):
  """[N] bool: which Gaussians have a smaller standard deviation of at least ``wide_sigma`` pixels.

  Read from the quantized covariance (``code·scale + offset``, the decoder's values), so a
  decoder knows it before the positions. With ``xp=np`` it runs in float64 on the host: the
  file's rule, which encoder and decoder evaluate identically (``jnp``: float32, which can differ
  from it only at the threshold's edge; the encoder then follows the file's rule).
  """
  dtype = xp.float64 if xp is np else xp.float32
  channels = (xp.asarray(cov_codes).astype(dtype) * xp.asarray(cov_scale).astype(dtype) +
              xp.asarray(cov_offset).astype(dtype))
  if parameterization == "rs":
    sigma = xp.minimum(xp.abs(channels[..., 0] + SCALE_OFFSET),
                       xp.abs(channels[..., 1] + SCALE_OFFSET))
    return sigma >= wide_sigma
  # Cholesky: the smaller singular value of L = [[l11, 0], [l21, l22]], from
  # σ² = 2·det² / (tr + sqrt(tr² − 4·det²)) with tr = |L|², det = l11·l22 (no cancellation).
  l11, l21, l22 = (channels[..., i] + CHOLESKY_OFFSET[i] for i in range(3))
  trace = l11 * l11 + l21 * l21 + l22 * l22
  det = l11 * l22
  root = xp.sqrt(xp.maximum(trace * trace - 4 * det * det, 0))
  sigma_sq = 2 * det * det / xp.maximum(trace + root, xp.finfo(dtype).tiny)
  return sigma_sq >= wide_sigma * wide_sigma


# -- straight-through estimators -------------------------------------------------------------------

@jax.custom_jvp
def straight_through(x: jax.Array, y: jax.Array) -> jax.Array:
  """Returns ``y`` (exactly); its derivative is the identity in ``x`` and zero in ``y``.

  ``y`` is a quantized version of ``x`` (same shape and dtype). Unlike ``x + stop_gradient(y - x)``
  the forward value is bit-exact ``y``, so a training render and a decoder render agree.
  """
  del x
  return y


@straight_through.defjvp
def _straight_through_jvp(primals, tangents):
  x, y = primals
  dx, _ = tangents
  return straight_through(x, y), dx


def round_ste(x: jax.Array) -> jax.Array:
  """``round(x)`` (half to even) with an identity derivative."""
  return straight_through(x, jnp.round(x))


def to_half(x: jax.Array) -> jax.Array:
  """``x`` rounded to float16 (kept in ``x``'s dtype); clipped to float16's finite range first."""
  limit = float(np.finfo(np.float16).max)
  return jnp.clip(x, -limit, limit).astype(jnp.float16).astype(x.dtype)


def half_ste(x: jax.Array) -> jax.Array:
  """:func:`to_half` with an identity derivative (the reference's ``FakeQuantizationHalf``)."""
  return straight_through(x, to_half(x))


def grid_codes(means_raw: jax.Array, cells: tuple[int, int]) -> jax.Array:
  """[..., 2] int32 grid cell of each position (x, y), in ``[0, cells)`` (no gradient).

  The image is split into ``cells`` equal cells per axis, on the normalised position
  ``(tanh(means_raw) + 1)/2`` in (0, 1).
  """
  at, m = _cell_coordinate(means_raw, cells)
  return jnp.clip(jnp.floor(at), 0, m - 1).astype(jnp.int32)


def _cell_coordinate(means_raw: jax.Array, cells: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """``(u·cells, cells)``: the position in cell widths (cell c spans [c, c + 1)) on the normalised
  position ``u = (tanh(means_raw) + 1)/2``, and the cells as an array."""
  m = jnp.asarray(cells, means_raw.dtype)
  return 0.5 * (jnp.tanh(means_raw) + 1.0) * m, m


def grid_means_raw(codes: jax.Array, cells: tuple[int, int]) -> jax.Array:
  """``means_raw`` of each cell's centre (the decoder's formula; never at the image border)."""
  m = jnp.asarray(cells, jnp.float32)
  u = (codes.astype(jnp.float32) + 0.5) / m
  return jnp.arctanh(2.0 * u - 1.0)


def grid_ste(means_raw: jax.Array, cells: tuple[int, int]) -> jax.Array:
  """Positions snapped to their grid cell's centre, with an identity derivative."""
  values = position_symbols(jax.lax.stop_gradient(means_raw), cells)[1]
  return straight_through(means_raw, values)


def even_grid_codes(means_raw: jax.Array, cells: tuple[int, int]) -> jax.Array:
  """Like :func:`grid_codes`, but the nearest even cell (a grid twice as coarse)."""
  at, m = _cell_coordinate(means_raw, cells)
  even = 2.0 * jnp.round((at - 0.5) / 2.0)  # cell c's centre sits at u·m − 0.5 = c
  return jnp.clip(even, 0, 2.0 * jnp.floor((m - 1) / 2.0)).astype(jnp.int32)


def position_symbols(means_raw: jax.Array, cells: tuple[int, int] | None,
                     wide: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(codes, values)``: the [..., 2] uint16 position symbols (float16 bit patterns, or with
  ``cells`` grid cells) and the ``means_raw`` the decoder reads from them (no gradient).

  ``wide`` ([...] bool, grid positions only): these Gaussians take the nearest even cell.
  """
  if cells is None:
    values = to_half(means_raw)
    return jax.lax.bitcast_convert_type(values.astype(jnp.float16), jnp.uint16), values
  codes = grid_codes(means_raw, cells)
  if wide is not None:
    codes = jnp.where(wide[..., None], even_grid_codes(means_raw, cells), codes)
  return codes.astype(jnp.uint16), grid_means_raw(codes, cells).astype(means_raw.dtype)


# -- learned uniform quantizer ---------------------------------------------------------------------

class UniformQuantizer(NamedTuple):
  """Per-channel uniform quantizer: ``code = clip(round((x − offset)/scale), 0, 2**bits − 1)``.

  Both fields are learned (they get gradients through :func:`uniform_quantize`).

  Attributes:
    scale: [C] step sizes.
    offset: [C] value of code 0.
  """
  scale: jax.Array
  offset: jax.Array


def uniform_init(x: jax.Array, bits: int) -> UniformQuantizer:
  """The reference initialisation: ``offset = min``, ``scale = (max − min)/(2**bits − 1)``
  per channel.

  Args:
    x: [N, C] values.
    bits: bits per symbol.

  Returns:
    A :class:`UniformQuantizer` with [C] fields (a zero range gets a tiny positive scale).
  """
  lo = jnp.min(x, axis=-2)
  hi = jnp.max(x, axis=-2)
  scale = (hi - lo) / ((1 << bits) - 1)
  # A constant channel has no range; any positive step reproduces it exactly (all codes 0).
  scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
  return UniformQuantizer(scale=scale, offset=lo)


def _safe_scale(scale: jax.Array) -> jax.Array:
  # A learned scale could reach 0 only by accident; keep the division finite.
  tiny = jnp.finfo(scale.dtype).tiny
  return jnp.where(jnp.abs(scale) < tiny, tiny, scale)


def uniform_codes(quantizer: UniformQuantizer, x: jax.Array, bits: int) -> jax.Array:
  """[N, C] int32 codes in ``[0, 2**bits)`` (no gradient)."""
  code = jnp.clip((x - quantizer.offset) / _safe_scale(quantizer.scale), 0, (1 << bits) - 1)
  return jnp.round(code).astype(jnp.int32)


def uniform_dequantize(quantizer: UniformQuantizer, codes: jax.Array) -> jax.Array:
  """Values of ``codes``: ``code·scale + offset`` (the decoder's formula)."""
  return codes.astype(quantizer.scale.dtype) * quantizer.scale + quantizer.offset


def uniform_quantize(quantizer: UniformQuantizer, x: jax.Array, bits: int) -> jax.Array:
  """Fake-quantizes ``x`` [N, C]: the decoder's values, differentiable by straight-through rounding.

  Derivatives (those of ``round_ste(clip(c))·scale + offset`` with ``c = (x − offset)/scale``,
  written out so that the one in ``x`` is exactly 1, not ``scale/scale``): inside the range
  (``0 <= c <= 2**bits − 1``) ``∂/∂x = 1``, ``∂/∂scale = round(c) − c`` (LSQ) and ``∂/∂offset = 0``;
  where the code is clipped to ``k`` ``∂/∂x = 0``, ``∂/∂scale = k`` and ``∂/∂offset = 1``.
  """
  return _fake_quantize(quantizer.scale, quantizer.offset, x, bits)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _fake_quantize(scale, offset, x, bits):
  code = jnp.round(jnp.clip((x - offset) / _safe_scale(scale), 0, (1 << bits) - 1))
  return code * scale + offset


@_fake_quantize.defjvp
def _fake_quantize_jvp(bits, primals, tangents):
  scale, offset, x = primals
  d_scale, d_offset, dx = tangents
  levels = (1 << bits) - 1
  c = (x - offset) / _safe_scale(scale)
  code = jnp.round(jnp.clip(c, 0, levels))
  inside = (c >= 0) & (c <= levels)
  dy = jnp.where(inside, dx + (code - c) * d_scale, code * d_scale + d_offset)
  return code * scale + offset, dy


# -- residual vector quantization ------------------------------------------------------------------

class ResidualVQ(NamedTuple):
  """Residual VQ codebooks with their EMA statistics (state, not gradient-trained).

  Attributes:
    codebooks: [S, K, D] codewords of each stage.
    ema_sum: [S, K, D] EMA of the sum of the vectors assigned to each codeword.
    ema_count: [S, K] EMA of the number of vectors assigned to each codeword.
  """
  codebooks: jax.Array
  ema_sum: jax.Array
  ema_count: jax.Array


def nearest(x: jax.Array, codebook: jax.Array) -> jax.Array:
  """[N] int32 index of the nearest codeword (squared Euclidean; ties to the lowest index)."""
  d = jnp.sum(jnp.square(x[..., :, None, :] - codebook[..., None, :, :]), axis=-1)
  return jnp.argmin(d, axis=-1).astype(jnp.int32)


def kmeans(key: jax.Array, x: jax.Array, k: int, iters: int) -> tuple[jax.Array, jax.Array]:
  """Lloyd's k-means as vector_quantize_pytorch initialises codebooks.

  Centres start at ``k`` distinct random rows of ``x`` (with repetition only if ``N < k``); a
  centre that loses all its points keeps its position.

  Args:
    key: PRNG key.
    x: [N, D] vectors.
    k: number of centres.
    iters: Lloyd iterations.

  Returns:
    ``(centres [k, D], counts [k])``: the centres and how many rows are nearest to each.
  """
  n = x.shape[0]
  centres = x[jax.random.choice(key, n, (k,), replace=n < k)]

  def counts_and_sums(centres):
    onehot = jax.nn.one_hot(nearest(x, centres), k, dtype=x.dtype)
    return onehot.sum(0), onehot.T @ x

  def step(_, centres):
    counts, sums = counts_and_sums(centres)
    updated = sums / jnp.maximum(counts, 1)[:, None]
    return jnp.where((counts > 0)[:, None], updated, centres)

  centres = jax.lax.fori_loop(0, iters, step, centres)
  return centres, counts_and_sums(centres)[0]


def rvq_init(key: jax.Array, x: jax.Array, stages: int, codebook_size: int,
             kmeans_iters: int) -> ResidualVQ:
  """Initialises each stage by k-means on the residual left by the stages before it.

  The EMA statistics start consistent with the codebooks (``ema_sum = centre · count``), so the
  first EMA updates move codewords smoothly.
  """
  codebooks, counts = [], []
  residual = x
  for key_s in jax.random.split(key, stages):
    centres, count = kmeans(key_s, residual, codebook_size, kmeans_iters)
    residual = residual - centres[nearest(residual, centres)]
    codebooks.append(centres)
    counts.append(count)
  codebooks = jnp.stack(codebooks)
  counts = jnp.stack(counts)
  return ResidualVQ(codebooks=codebooks, ema_sum=codebooks * counts[..., None], ema_count=counts)


def transmitted(codebooks: jax.Array, fraction_bits: int = 0) -> jax.Array:
  """The codebooks as a file stores them (values kept in float32).

  Training quantizes with these too, so its renders are the decoder's.

  Args:
    codebooks: [..., K, D] codewords.
    fraction_bits: 0 rounds to float16 (the paper's; 16 bits a value, at a colour error below
      1/2000 of the value); ``e > 0`` rounds to the nearest multiple of ``2**-e``, clipped to
      ``±MAX_CODEWORD_INT·2**-e``. At ``e = 10`` the error is below 1/2000 of full intensity, and
      a codebook's channels span 7 to 13 bits instead of 16.

  Returns:
    The rounded codebooks, same shape and dtype.
  """
  if not fraction_bits:
    return to_half(codebooks)
  scale = float(1 << fraction_bits)
  return jnp.clip(jnp.round(codebooks * scale), -MAX_CODEWORD_INT, MAX_CODEWORD_INT) / scale


def rvq_indices(codebooks: jax.Array, x: jax.Array) -> jax.Array:
  """[N, S] int32 codeword index of each stage (greedy residual search; no gradient)."""
  indices = []
  residual = x
  for s in range(codebooks.shape[0]):
    index = nearest(residual, codebooks[s])
    residual = residual - codebooks[s][index]
    indices.append(index)
  return jnp.stack(indices, axis=-1)


def rvq_dequantize(codebooks: jax.Array, indices: jax.Array) -> jax.Array:
  """[N, D] sum over stages of the indexed codewords (the decoder's formula)."""
  out = codebooks[0][indices[..., 0]]
  for s in range(1, codebooks.shape[0]):
    out = out + codebooks[s][indices[..., s]]
  return out


def rvq_quantize(rvq: ResidualVQ, x: jax.Array,
                 fraction_bits: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Fake-quantizes ``x`` [N, D] with the residual VQ (its :func:`transmitted` codebooks, with
  ``fraction_bits`` as there).

  Returns:
    ``(quantized, indices, commitment)``: the decoder's values with an identity derivative in
    ``x``; the [N, S] indices; and the commitment loss ``Σ_s MSE(q_s, r_s)`` where ``r_s = x −
    Σ_{t<s} q_t`` (codewords held constant, so it pulls only ``x``).
  """
  codebooks = transmitted(jax.lax.stop_gradient(rvq.codebooks), fraction_bits)
  indices = rvq_indices(codebooks, jax.lax.stop_gradient(x))
  commitment = jnp.zeros((), x.dtype)
  residual = x
  for s in range(codebooks.shape[0]):
    q = codebooks[s][indices[..., s]]
    commitment = commitment + jnp.mean(jnp.square(q - residual))
    residual = residual - q
  return straight_through(x, rvq_dequantize(codebooks, indices)), indices, commitment


def rvq_ema_update(rvq: ResidualVQ, x: jax.Array, indices: jax.Array, decay: float,
                   fraction_bits: int = 0) -> ResidualVQ:
  """One EMA codebook update (vector_quantize_pytorch's ``EuclideanCodebook``), all stages.

  Each stage's statistics are updated with the residuals it quantized (``x`` minus the codewords of
  the stages before it, with the codebooks that chose ``indices``); a codeword is the smoothed EMA
  mean ``ema_sum / ema_count``.

  Args:
    rvq: the state that produced ``indices``.
    x: [N, D] the quantized vectors.
    indices: [N, S] from :func:`rvq_indices`.
    decay: EMA decay (0.8 in the paper).
    fraction_bits: how the codebooks that chose ``indices`` were transmitted.

  Returns:
    The updated :class:`ResidualVQ` (no gradient flows through it).
  """
  rvq = jax.tree.map(jax.lax.stop_gradient, rvq)
  x = jax.lax.stop_gradient(x)
  used = transmitted(rvq.codebooks, fraction_bits)  # what chose ``indices``
  k = rvq.codebooks.shape[1]
  residual = x
  sums, counts = [], []
  for s in range(rvq.codebooks.shape[0]):
    onehot = jax.nn.one_hot(indices[..., s], k, dtype=x.dtype)
    counts.append(onehot.sum(0))
    sums.append(onehot.T @ residual)
    residual = residual - used[s][indices[..., s]]
  ema_count = decay * rvq.ema_count + (1 - decay) * jnp.stack(counts)
  ema_sum = decay * rvq.ema_sum + (1 - decay) * jnp.stack(sums)
  total = jnp.sum(ema_count, axis=-1, keepdims=True)
  smoothed = (ema_count + EMA_EPS) / (total + k * EMA_EPS) * total
  return ResidualVQ(codebooks=ema_sum / smoothed[..., None], ema_sum=ema_sum, ema_count=ema_count)


# -- Gaussian-level quantization -------------------------------------------------------------------

class Quantizers(NamedTuple):
  """The quantizer state of one Gaussian set (a pytree).

  Attributes:
    cov: :class:`UniformQuantizer` of the 3 covariance channels (learned).
    color: :class:`ResidualVQ` of the colours (EMA state), or with ``color_bits`` a
      :class:`UniformQuantizer` of the 3 colour channels (learned).
  """
  cov: UniformQuantizer
  color: ResidualVQ | UniformQuantizer


class QuantizeAux(NamedTuple):
  """What :func:`quantize_gaussians` returns besides the quantized Gaussians."""
  commitment: jax.Array         # [] colour commitment loss (already weighted; 0 if uniform)
  color: ResidualVQ | UniformQuantizer  # the colour state after one EMA update (uniform: as is)
  symbols: "QuantizedGaussians"  # what the quantized Gaussians are, as a file holds them


def cov_channels(gaussians: Gaussians) -> jax.Array:
  """[N, 3] the covariance values the uniform quantizer sees (docs/design.md §5).

  ``chol_raw`` for Cholesky sets; ``(scale_raw_x, scale_raw_y, θ)`` with ``θ = 2π·sigmoid(rot_raw)``
  for RS sets (the reference quantizes the angle, not ``rot_raw``).
  """
  if gaussians.parameterization == "cholesky":
    return gaussians.cov_raw
  if gaussians.parameterization == "rs":
    theta = 2.0 * jnp.pi * jax.nn.sigmoid(gaussians.cov_raw[..., 2:])
    return jnp.concatenate([gaussians.cov_raw[..., :2], theta], axis=-1)
  raise errors.InvalidInputError(f"unknown parameterization {gaussians.parameterization!r}")


def cov_raw_from_channels(channels: jax.Array, parameterization: str) -> jax.Array:
  """Inverse of :func:`cov_channels`: the ``cov_raw`` whose channels are ``channels``."""
  if parameterization == "cholesky":
    return channels
  if parameterization == "rs":
    p = jnp.clip(channels[..., 2:] / (2.0 * jnp.pi), _ANGLE_CLIP, 1.0 - _ANGLE_CLIP)
    return jnp.concatenate([channels[..., :2], jnp.log(p) - jnp.log1p(-p)], axis=-1)
  raise errors.InvalidInputError(f"unknown parameterization {parameterization!r}")


def init_quantizers(key: jax.Array, gaussians: Gaussians,
                    config: QuantizerConfig = QuantizerConfig()) -> Quantizers:
  """Initialises the quantizers from a fitted set (reference initialisation; k-means for colours).

  Args:
    key: PRNG key of the k-means initialisation.
    gaussians: one fitted set [N].
    config: quantizer settings.

  Returns:
    :class:`Quantizers`.

  Raises:
    InvalidInputError: concrete Gaussians with NaN or infinite values.
  """
  gaussians.validate()  # NaNs would give NaN steps and codebooks (checked only outside jit)
  cov = uniform_init(cov_channels(gaussians), config.cov_bits)
  if config.color_bits:
    return Quantizers(cov=cov, color=uniform_init(gaussians.colors, config.color_bits))
  color = rvq_init(key, gaussians.colors, config.stages, config.codebook_size, config.kmeans_iters)
  return Quantizers(cov=cov, color=color)


def quantize_gaussians(gaussians: Gaussians, quantizers: Quantizers,
                       config: QuantizerConfig = QuantizerConfig(),
                       image_size: tuple[int, int] | None = None
                       ) -> tuple[Gaussians, QuantizeAux]:
  """Fake-quantizes a set for quantization-aware training.

  The returned Gaussians hold the values the decoder will reconstruct; gradients pass straight
  through every rounding (identity), and reach the covariance quantizer's scale and offset.

  Args:
    gaussians: one set [N].
    quantizers: the quantizer state.
    config: quantizer settings.
    image_size: ``(height, width)``; needed when ``config.position_step > 0``.

  Returns:
    ``(quantized Gaussians, QuantizeAux)``; ``aux.color`` is the colour state after this step's EMA
    update (to be carried to the next step); ``aux.symbols`` equals
    ``to_quantized(gaussians, quantizers, config, image_size)``, from the same computation.
  """
  sg = jax.lax.stop_gradient
  cells = _cells(config, image_size)
  channels = cov_channels(gaussians)
  cov_q = uniform_quantize(quantizers.cov, channels, config.cov_bits)
  cov_codes = uniform_codes(sg(quantizers.cov), sg(channels), config.cov_bits)
  position_codes, position_values = position_symbols(
      sg(gaussians.means_raw), cells, _wide(cov_codes, sg(quantizers.cov), config,
                                            gaussians.parameterization))
  means = straight_through(gaussians.means_raw, position_values)
  if config.color_bits:
    colors = uniform_quantize(quantizers.color, gaussians.colors, config.color_bits)
    indices = uniform_codes(sg(quantizers.color), sg(gaussians.colors), config.color_bits)
    commitment, color_state = jnp.zeros((), colors.dtype), sg(quantizers.color)
  else:
    colors, indices, commitment = rvq_quantize(quantizers.color, gaussians.colors,
                                               config.codeword_fraction_bits)
    color_state = rvq_ema_update(quantizers.color, gaussians.colors, indices, config.decay,
                                 config.codeword_fraction_bits)
  g = Gaussians(means, cov_raw_from_channels(cov_q, gaussians.parameterization), colors,
                gaussians.parameterization)
  symbols = _symbols(position_codes, cov_codes, indices, jax.tree.map(sg, quantizers), config,
                     cells, gaussians.parameterization)
  return g, QuantizeAux(config.commitment_weight * commitment, color_state, symbols)


def _cells(config: QuantizerConfig, image_size) -> tuple[int, int] | None:
  if not config.position_step:
    return None
  if image_size is None:
    raise errors.InvalidInputError("grid positions (position_step > 0) need image_size=(H, W)")
  return config.position_cells(*image_size)


def _wide(cov_codes, cov: UniformQuantizer, config: QuantizerConfig, parameterization: str):
  if not config.wide_sigma:
    return None
  return wide_gaussians(cov_codes, cov.scale, cov.offset, parameterization, config.wide_sigma)


# -- the symbols a file holds ----------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedGaussians:
  """A quantized Gaussian set: integer symbols plus side information; what a file stores.

  Attributes:
    position_codes: [N, 2] uint16: the float16 bit patterns of ``means_raw`` (x, y), or with
      ``position_cells`` their grid cells.
    cov_codes: [N, 3] uint8 covariance codes in ``[0, 2**cov_bits)``.
    color_indices: [N, S] uint8 colour codeword indices, one per stage; with ``color_bits`` the
      [N, 3] uniform codes of the colour channels.
    cov_scale: [3] float32 uniform quantizer steps.
    cov_offset: [3] float32 uniform quantizer offsets.
    codebooks: [S, K, 3] float32 colour codebooks holding float16 values, or multiples of a
      power of two (see :func:`transmitted`); None with ``color_bits``.
    color_scale, color_offset: [3] float32 colour quantizer steps and offsets with
      ``color_bits``; else None.
    parameterization: ``"cholesky"`` or ``"rs"`` (static).
    cov_bits: bits per covariance code (static).
    position_cells: grid cells ``(x, y)`` of grid positions; None for float16 (static).
    color_bits: bits per colour code of uniform colours; 0: residual VQ (static).
    wide_sigma: > 0: the Gaussians :func:`wide_gaussians` picks with it have even grid cells
      (static; see :class:`QuantizerConfig`).
  """
  position_codes: jax.Array
  cov_codes: jax.Array
  color_indices: jax.Array
  cov_scale: jax.Array
  cov_offset: jax.Array
  codebooks: jax.Array | None
  color_scale: jax.Array | None = None
  color_offset: jax.Array | None = None
  parameterization: str = dataclasses.field(default="cholesky", metadata=dict(static=True))
  cov_bits: int = dataclasses.field(default=6, metadata=dict(static=True))
  position_cells: tuple[int, int] | None = dataclasses.field(default=None,
                                                             metadata=dict(static=True))
  color_bits: int = dataclasses.field(default=0, metadata=dict(static=True))
  wide_sigma: float = dataclasses.field(default=0.0, metadata=dict(static=True))

  @property
  def num_gaussians(self) -> int:
    return self.position_codes.shape[-2]

  def dequantize(self) -> Gaussians:
    """The Gaussians these symbols stand for (the decoder's reconstruction)."""
    if self.position_cells is None:
      means = jax.lax.bitcast_convert_type(jnp.asarray(self.position_codes, jnp.uint16),
                                           jnp.float16)
    else:
      means = grid_means_raw(jnp.asarray(self.position_codes, jnp.int32), self.position_cells)
    quantizer = UniformQuantizer(jnp.asarray(self.cov_scale, jnp.float32),
                                 jnp.asarray(self.cov_offset, jnp.float32))
    channels = uniform_dequantize(quantizer, jnp.asarray(self.cov_codes, jnp.int32))
    indices = jnp.asarray(self.color_indices, jnp.int32)
    if self.color_bits:
      colors = uniform_dequantize(UniformQuantizer(jnp.asarray(self.color_scale, jnp.float32),
                                                   jnp.asarray(self.color_offset, jnp.float32)),
                                  indices)
    else:
      colors = rvq_dequantize(jnp.asarray(self.codebooks, jnp.float32), indices)
    return Gaussians(means.astype(jnp.float32),
                     cov_raw_from_channels(channels, self.parameterization), colors,
                     self.parameterization)

  def to_numpy(self) -> QuantizedGaussians:
    """The same symbols as NumPy arrays with the file's dtypes."""
    side = lambda x: None if x is None else np.asarray(x, np.float32)
    return dataclasses.replace(
        self, position_codes=np.asarray(self.position_codes, np.uint16),
        cov_codes=np.asarray(self.cov_codes, np.uint8),
        color_indices=np.asarray(self.color_indices, np.uint8),
        cov_scale=side(self.cov_scale), cov_offset=side(self.cov_offset),
        codebooks=side(self.codebooks), color_scale=side(self.color_scale),
        color_offset=side(self.color_offset))

  @property
  def side_fields(self) -> tuple[str, ...]:
    """Names of the float side-information fields this set uses."""
    return ("cov_scale", "cov_offset") + (
        ("color_scale", "color_offset") if self.color_bits else ("codebooks",))

  def permute(self, order) -> QuantizedGaussians:
    """The same set with its Gaussians in ``order`` (side information unchanged)."""
    return dataclasses.replace(self, position_codes=self.position_codes[order],
                               cov_codes=self.cov_codes[order],
                               color_indices=self.color_indices[order])


def to_quantized(gaussians: Gaussians, quantizers: Quantizers,
                 config: QuantizerConfig = QuantizerConfig(),
                 image_size: tuple[int, int] | None = None) -> QuantizedGaussians:
  """The symbols of a set under ``quantizers`` (jittable; no gradient).

  ``to_quantized(g, q, c, s).dequantize()`` has the values of ``quantize_gaussians(g, q, c, s)[0]``;
  ``image_size`` ``(height, width)`` is needed for grid positions. Concrete Gaussians with NaN or
  infinite values raise InvalidInputError (a NaN would silently become some code).
  """
  gaussians.validate()
  cells = _cells(config, image_size)
  if config.color_bits:
    color_codes = uniform_codes(quantizers.color, gaussians.colors, config.color_bits)
  else:
    color_codes = rvq_indices(
        transmitted(quantizers.color.codebooks, config.codeword_fraction_bits), gaussians.colors)
  cov_codes = uniform_codes(quantizers.cov, cov_channels(gaussians), config.cov_bits)
  wide = _wide(cov_codes, quantizers.cov, config, gaussians.parameterization)
  return _symbols(position_symbols(gaussians.means_raw, cells, wide)[0], cov_codes, color_codes,
                  quantizers, config, cells, gaussians.parameterization)


def _symbols(position_codes, cov_codes, color_indices, quantizers: Quantizers,
             config: QuantizerConfig, cells, parameterization: str) -> QuantizedGaussians:
  """The file's symbols and side information, with the file's dtypes."""
  if config.color_bits:
    color = dict(codebooks=None, color_scale=quantizers.color.scale.astype(jnp.float32),
                 color_offset=quantizers.color.offset.astype(jnp.float32))
  else:
    codebooks = transmitted(quantizers.color.codebooks, config.codeword_fraction_bits)
    color = dict(codebooks=codebooks.astype(jnp.float32))
  return QuantizedGaussians(
      position_codes=position_codes, cov_codes=cov_codes.astype(jnp.uint8),
      color_indices=color_indices.astype(jnp.uint8),
      cov_scale=quantizers.cov.scale.astype(jnp.float32),
      cov_offset=quantizers.cov.offset.astype(jnp.float32), **color,
      parameterization=parameterization, cov_bits=config.cov_bits, position_cells=cells,
      color_bits=config.color_bits, wide_sigma=float(config.wide_sigma))


def fixed_length_bits(num_gaussians: int, config: QuantizerConfig = QuantizerConfig()) -> int:
  """The paper's fixed-length count: per Gaussian 32 + 3·cov_bits + stages·log2(K) bits (56);
  3·color_bits for uniform colours."""
  color = (3 * config.color_bits if config.color_bits
           else config.stages * math.ceil(math.log2(config.codebook_size)))
  per = 32 + 3 * config.cov_bits + color
  return per * num_gaussians
