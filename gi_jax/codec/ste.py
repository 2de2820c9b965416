"""Straight-through estimators: roundings whose value is exact and whose derivative is the identity.

The codec trains through its quantizers with these (docs/design.md §5): every rounding's forward
value is bit for bit the one the decoder computes, so a training render and a decoder render agree,
and the gradient passes as if nothing had been rounded (the reference's residual VQ doubles the
colour gradient; docs/design.md §6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
