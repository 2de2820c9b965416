"""Quantizing a Gaussian set for the codec (docs/design.md §5): settings, state, symbols.

Three quantizers turn a fitted :class:`~gi_jax.Gaussians` into a small set of symbols, each in its
own module:

- positions (:mod:`~gi_jax.codec.positions`): ``means_raw`` rounded to float16 (the paper's), or
  (``QuantizerConfig.position_step > 0``) snapped to the centres of a uniform grid of cells about
  ``position_step`` pixels wide, wide Gaussians (``wide_sigma``) on a grid twice as coarse;
- covariance (:mod:`~gi_jax.codec.covariance`): a 6-bit unsigned uniform quantizer per channel
  with a learned scale and offset (:mod:`~gi_jax.codec.uniform`);
- colours: residual vector quantization, 2 stages × 8 codewords of dimension 3, initialised by
  k-means and updated by exponential moving averages (:mod:`~gi_jax.codec.rvq`, the paper's); or
  (``QuantizerConfig.color_bits > 0``) the learned uniform quantizer per colour channel, whose
  entropy-coded codes cost more bits but keep far more colours.

Every rounding is a straight-through estimator with an exact identity derivative
(:mod:`~gi_jax.codec.ste`). The quantizer state is a pytree, so all of this composes with ``jit``,
``grad`` and ``vmap``. This module puts them together: :class:`QuantizerConfig` (static settings),
:class:`Quantizers` (state), :func:`init_quantizers`, :func:`quantize_gaussians` (the
differentiable fake quantization fine-tuning trains through) and :func:`to_quantized`.

:class:`QuantizedGaussians` is what a file holds: the integer symbols and the side information that
turns them back into Gaussians (:meth:`QuantizedGaussians.dequantize`). The encoder's reference
image and the decoder's image both come from that one function, so they agree exactly.

Example::

  from gi_jax.codec.quantize import init_quantizers, quantize_gaussians, to_quantized

  quantizers = init_quantizers(jax.random.key(0), gaussians)
  g_q, aux = quantize_gaussians(gaussians, quantizers)             # differentiable (STE)
  q = to_quantized(gaussians, quantizers)                           # integer symbols
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
from gi_jax.codec.covariance import cov_channels, cov_raw_from_channels
from gi_jax.codec.positions import (MAX_POSITION_CELLS, check_wide_sigma, grid_means_raw,
                                    position_symbols, wide_gaussians)
from gi_jax.codec.rvq import (MAX_CODEWORD_FRACTION_BITS, ResidualVQ, rvq_dequantize,
                              rvq_ema_update, rvq_indices, rvq_init, rvq_quantize, transmitted)
from gi_jax.codec.ste import straight_through
from gi_jax.codec.uniform import (UniformQuantizer, uniform_codes, uniform_dequantize, uniform_init,
                                  uniform_quantize)
from gi_jax.gaussians import Gaussians


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
      :data:`~gi_jax.codec.rvq.MAX_CODEWORD_INT` steps from 0), which a file packs in as few
      bits as each channel's range needs (:func:`~gi_jax.codec.rvq.transmitted`).
    wide_sigma: 0 puts every grid position on the same grid; > 0 (with ``position_step``) puts
      the Gaussians whose smaller standard deviation is at least this many pixels on the even
      cells only (:func:`~gi_jax.codec.positions.wide_gaussians`); a multiple of 1/8 up to
      :data:`~gi_jax.codec.positions.MAX_WIDE_SIGMA`.
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


class Quantizers(NamedTuple):
  """The quantizer state of one Gaussian set (a pytree).

  Attributes:
    cov: :class:`~gi_jax.codec.uniform.UniformQuantizer` of the 3 covariance channels (learned).
    color: :class:`~gi_jax.codec.rvq.ResidualVQ` of the colours (EMA state), or with
      ``color_bits`` a :class:`~gi_jax.codec.uniform.UniformQuantizer` of the 3 colour channels
      (learned).
  """
  cov: UniformQuantizer
  color: ResidualVQ | UniformQuantizer


class QuantizeAux(NamedTuple):
  """What :func:`quantize_gaussians` returns besides the quantized Gaussians."""
  commitment: jax.Array         # [] colour commitment loss (already weighted; 0 if uniform)
  color: ResidualVQ | UniformQuantizer  # the colour state after one EMA update (uniform: as is)
  symbols: "QuantizedGaussians"  # what the quantized Gaussians are, as a file holds them


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
  return _init_quantizers(key, gaussians, config)


# One compiled program per config and N (an eager call would compile each k-means operation).
@functools.partial(jax.jit, static_argnums=2)
def _init_quantizers(key: jax.Array, gaussians: Gaussians, config: QuantizerConfig) -> Quantizers:
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
  g = dataclasses.replace(gaussians, means_raw=means,
                          cov_raw=cov_raw_from_channels(cov_q, gaussians.parameterization),
                          colors=colors)
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
      [N, C] uniform codes of the C colour channels.
    cov_scale: [3] float32 uniform quantizer steps.
    cov_offset: [3] float32 uniform quantizer offsets.
    codebooks: [S, K, C] float32 colour codebooks holding float16 values, or multiples of a
      power of two (see :func:`~gi_jax.codec.rvq.transmitted`); None with ``color_bits``.
    color_scale, color_offset: [C] float32 colour quantizer steps and offsets with
      ``color_bits``; else None.
    parameterization: ``"cholesky"`` or ``"rs"`` (static).
    cov_bits: bits per covariance code (static).
    position_cells: grid cells ``(x, y)`` of grid positions; None for float16 (static).
    color_bits: bits per colour code of uniform colours; 0: residual VQ (static).
    wide_sigma: > 0: the Gaussians :func:`~gi_jax.codec.positions.wide_gaussians` picks with it
      have even grid cells (static; see :class:`QuantizerConfig`).
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

  @property
  def num_channels(self) -> int:
    """C, the colour channels (3 for RGB)."""
    return (self.color_scale if self.color_bits else self.codebooks).shape[-1]

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
  return _to_quantized(gaussians, quantizers, config,
                       None if image_size is None else tuple(map(int, image_size)))


# One compiled program per config, size and N; integer codes, the same as op by op.
@functools.partial(jax.jit, static_argnums=(2, 3))
def _to_quantized(gaussians: Gaussians, quantizers: Quantizers, config: QuantizerConfig,
                  image_size: tuple[int, int] | None) -> QuantizedGaussians:
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
