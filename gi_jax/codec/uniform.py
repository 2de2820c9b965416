"""The learned uniform quantizer: 6-bit covariance channels (the paper's), and colours with
``QuantizerConfig.color_bits``.

``code = clip(round((x − offset)/scale), 0, 2**bits − 1)`` per channel, with ``scale`` and
``offset`` learned through a straight-through rounding (:func:`uniform_quantize`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


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
