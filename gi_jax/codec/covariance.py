"""The covariance channels the covariance quantizer sees (docs/design.md §5), and back.

A learned 6-bit uniform quantizer (:mod:`gi_jax.codec.uniform`) codes each channel: ``chol_raw``
for Cholesky sets, ``(scale_raw_x, scale_raw_y, θ)`` with ``θ = 2π·sigmoid(rot_raw)`` for RS sets
(the reference quantizes the angle, not ``rot_raw``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gi_jax import errors
from gi_jax.gaussians import Gaussians

# RS angles are turned back into rot_raw = logit(θ / 2π); the clip keeps the logit finite for the
# angles 0 and 2π, a change of at most 2π·1e-6 rad.
_ANGLE_CLIP = 1e-6


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
