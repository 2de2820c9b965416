"""Instant-NGP (Müller et al., SIGGRAPH 2022) for images: a multiresolution hash encoding of the
pixel position, bilinearly interpolated at each of L levels, concatenated and decoded by a tiny
MLP. Pure JAX (no tiny-cuda-nn). A row of the paper's Table 1.

Settings and where they come from:

- Encoding: L = 16 levels of F = 2 features, coarsest resolution N_min = 16 (instant-ngp's
  ``configs/image/base.json``: ``n_levels 16, n_features_per_level 2, base_resolution 16``).
  Level l has resolution ``floor(N_min·b^l)`` with the paper's growth factor
  ``b = exp((ln N_max − ln N_min)/(L − 1))`` (Eq. 3); we take N_max = the image's longer side
  (one cell per pixel at the finest level, a guess: the image config leaves ``per_level_scale``
  at tiny-cuda-nn's default of 2, meant for gigapixel images). A level whose
  ``(res+1)²`` vertices fit in the table is stored densely (one entry per vertex), as in
  tiny-cuda-nn; a finer one is hashed with the paper's ``(x·1 ⊕ y·2654435761) mod T``.
- Table size T = 2^14 per level: the image config's ``log2_hashmap_size`` is 24 (for gigapixel
  images); GaussianImage's paper does not print its I-NGP's, so 2^14 is our guess at a
  parameter budget comparable with the other INRs (315,110 parameters at 768×512).
- Entries start from U(-1e-4, 1e-4) (the paper, Sec. 4).
- MLP: 2 hidden layers of 64 ReLU units, linear output, no biases (``FullyFusedMLP``,
  ``n_neurons 64, n_hidden_layers 2``; tiny-cuda-nn's fully fused MLP has no bias terms). Its
  weights start from flax's default (LeCun normal), a guess.
- Optimiser: Adam, lr 1e-2, β1 0.9, β2 0.99, ε 1e-15, L2 regularisation 1e-6 added to the
  gradient of every parameter (the config's ``l2_reg``), the rate times 0.33 every 10,000 steps
  from step 20,000 (``ExponentialDecay``); MSE loss (``"L2"``). :data:`PAPER_STEPS` is a guess,
  as for the other baselines.
"""

from __future__ import annotations

import math
from typing import Callable

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gi_jax import errors
from gi_jax.baselines import training
from gi_jax.baselines.training import BaselineFit, NetworkParams

NAME = "instant_ngp"
LEVELS = 16
FEATURES_PER_LEVEL = 2
LOG2_TABLE_SIZE = 14
BASE_RESOLUTION = 16
HIDDEN_FEATURES = 64
HIDDEN_LAYERS = 2
LEARNING_RATE = 1e-2
L2_REG = 1e-6
DECAY_START, DECAY_INTERVAL, DECAY_BASE = 20_000, 10_000, 0.33
# Not printed for Table 1's baselines: GaussianImage's own step count, our guess.
PAPER_STEPS = 50_000
# The paper's spatial hash primes (the first is 1: x is used as it is).
_PRIME_Y = np.uint32(2654435761)
# A cell's vertices as (dx, dy) offsets from its lower corner.
_CORNERS = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.uint32)


def growth_factor(height: int, width: int, levels: int = LEVELS,
                  base_resolution: int = BASE_RESOLUTION) -> float:
  """The paper's b for N_max = the image's longer side (1 with a single level or a small
  image)."""
  finest = max(height, width, base_resolution)
  return math.exp((math.log(finest) - math.log(base_resolution)) / max(levels - 1, 1))


def level_resolutions(levels: int, base_resolution: int, per_level_scale: float) -> list[int]:
  """Cells per side of each level: ``floor(N_min·b^l)``."""
  return [int(math.floor(base_resolution * per_level_scale**level)) for level in range(levels)]


def level_table_sizes(levels: int, base_resolution: int, per_level_scale: float,
                      log2_table_size: int) -> list[int]:
  """Entries of each level's table: its ``(res+1)²`` vertices, or T where they do not fit."""
  return [min(2**log2_table_size, (res + 1)**2)
          for res in level_resolutions(levels, base_resolution, per_level_scale)]


class HashEncoding(nn.Module):
  """The multiresolution hash encoding: positions [..., 2] in [-1, 1] → features [..., L·F]."""
  levels: int = LEVELS
  features_per_level: int = FEATURES_PER_LEVEL
  log2_table_size: int = LOG2_TABLE_SIZE
  base_resolution: int = BASE_RESOLUTION
  per_level_scale: float = 2.0

  @nn.compact
  def __call__(self, coords: jax.Array) -> jax.Array:
    unit = jnp.clip((coords + 1.0) * 0.5, 0.0, 1.0)
    resolutions = level_resolutions(self.levels, self.base_resolution, self.per_level_scale)
    sizes = level_table_sizes(self.levels, self.base_resolution, self.per_level_scale,
                              self.log2_table_size)
    encoded = []
    for level, (res, size) in enumerate(zip(resolutions, sizes)):
      table = self.param(f"level_{level}", training.uniform_init(1e-4),
                         (size, self.features_per_level))
      position = unit * res
      # The last cell owns the far edge, so every position has four vertices in the grid.
      corner = jnp.minimum(jnp.floor(position), res - 1).astype(jnp.uint32)
      frac = position - corner.astype(position.dtype)
      # The cell's four vertices at once: one gather per level.
      x = corner[..., None, 0] + _CORNERS[:, 0]
      y = corner[..., None, 1] + _CORNERS[:, 1]
      if (res + 1)**2 <= size:
        index = x + y * np.uint32(res + 1)
      else:
        index = (x ^ (y * _PRIME_Y)) % np.uint32(size)
      fx, fy = frac[..., None, 0], frac[..., None, 1]
      weight = (jnp.where(_CORNERS[:, 0] == 1, fx, 1.0 - fx)
                * jnp.where(_CORNERS[:, 1] == 1, fy, 1.0 - fy))
      value = jnp.einsum("...k,...kf->...f", weight, table[index.astype(jnp.int32)])
      encoded.append(value)
    return jnp.concatenate(encoded, axis=-1)


class InstantNGP(nn.Module):
  """Hash encoding and a bias-free ReLU MLP: coordinates [..., 2] → RGB [..., 3] (unclipped)."""
  levels: int = LEVELS
  features_per_level: int = FEATURES_PER_LEVEL
  log2_table_size: int = LOG2_TABLE_SIZE
  base_resolution: int = BASE_RESOLUTION
  per_level_scale: float = 2.0
  hidden_features: int = HIDDEN_FEATURES
  hidden_layers: int = HIDDEN_LAYERS

  @nn.compact
  def __call__(self, coords: jax.Array) -> jax.Array:
    x = HashEncoding(self.levels, self.features_per_level, self.log2_table_size,
                     self.base_resolution, self.per_level_scale)(coords)
    for _ in range(self.hidden_layers):
      x = nn.relu(nn.Dense(self.hidden_features, use_bias=False)(x))
    return nn.Dense(3, use_bias=False)(x)


def parameter_count(height: int, width: int, levels: int = LEVELS,
                    features_per_level: int = FEATURES_PER_LEVEL,
                    log2_table_size: int = LOG2_TABLE_SIZE,
                    base_resolution: int = BASE_RESOLUTION, hidden_features: int = HIDDEN_FEATURES,
                    hidden_layers: int = HIDDEN_LAYERS) -> int:
  """Real parameters of the model :func:`fit` builds for an image of this size."""
  scale = growth_factor(height, width, levels, base_resolution)
  tables = sum(level_table_sizes(levels, base_resolution, scale, log2_table_size))
  mlp_in = levels * features_per_level
  mlp = (mlp_in * hidden_features + (hidden_layers - 1) * hidden_features**2
         + hidden_features * 3) if hidden_layers else mlp_in * 3
  return tables * features_per_level + mlp


def learning_rate_schedule(learning_rate: float = LEARNING_RATE) -> optax.Schedule:
  """The config's ``ExponentialDecay``: ×0.33 every 10,000 updates from update 20,000."""
  def schedule(count):
    decays = jnp.where(count >= DECAY_START, (count - DECAY_START) // DECAY_INTERVAL + 1, 0)
    return learning_rate * DECAY_BASE**decays.astype(jnp.float32)
  return schedule


def fit(image, steps: int, seed: int = 0, *, levels: int = LEVELS,
        features_per_level: int = FEATURES_PER_LEVEL, log2_table_size: int = LOG2_TABLE_SIZE,
        base_resolution: int = BASE_RESOLUTION, per_level_scale: float | None = None,
        hidden_features: int = HIDDEN_FEATURES, hidden_layers: int = HIDDEN_LAYERS,
        learning_rate: float = LEARNING_RATE, steps_per_call: int | None = None,
        progress: Callable[[dict], None] | None = None) -> BaselineFit:
  """Fits an Instant-NGP hash encoding and MLP to ``image`` (full-batch MSE, Adam).

  Args:
    image: [H, W, 3] in [0, 1].
    steps: optimisation steps (>= 0).
    seed: PRNG seed of the initialisation.
    levels, features_per_level, log2_table_size, base_resolution: the encoding (L, F, log2 T,
      N_min).
    per_level_scale: the growth factor b (default: :func:`growth_factor` of the image's size).
    hidden_features, hidden_layers: the MLP.
    learning_rate: Adam's initial rate.
    steps_per_call: steps per device call, the history interval (default: steps/50).
    progress: called with each history record.

  Returns:
    A :class:`~gi_jax.baselines.training.BaselineFit`; ``params`` is a
    :class:`~gi_jax.baselines.training.NetworkParams` for :func:`render`.

  Raises:
    errors.InvalidInputError: a bad image, step count or setting (before any work).
  """
  target = training.check_image(image)
  for value, name in ((levels, "levels"), (features_per_level, "features_per_level"),
                      (log2_table_size, "log2_table_size"), (base_resolution, "base_resolution"),
                      (hidden_features, "hidden_features")):
    training.check_positive(value, name)
  training.check_positive(hidden_layers + 1, "hidden_layers + 1")
  training.check_positive(learning_rate, "learning_rate", float)
  if log2_table_size > 30:
    raise errors.InvalidInputError(
        f"log2_table_size must be <= 30 (indices are 32-bit), got {log2_table_size}")
  height, width = int(target.shape[0]), int(target.shape[1])
  if per_level_scale is None:
    per_level_scale = growth_factor(height, width, levels, base_resolution)
  training.check_positive(per_level_scale, "per_level_scale", float)
  model = InstantNGP(levels, features_per_level, log2_table_size, base_resolution,
                     float(per_level_scale), hidden_features, hidden_layers)
  schedule = learning_rate_schedule(learning_rate)
  optimizer = optax.chain(optax.add_decayed_weights(L2_REG),
                          optax.scale_by_adam(b1=0.9, b2=0.99, eps=1e-15),
                          optax.scale_by_learning_rate(schedule))
  return training.fit_network(NAME, model, target, steps, seed, optimizer, schedule,
                              steps_per_call, progress)


def render(params: NetworkParams, height: int, width: int) -> jax.Array:
  """The fitted image at ``height``×``width``, [H, W, 3] clipped to [0, 1]."""
  return training.render_network(params, height, width)


def num_parameters(params: NetworkParams) -> int:
  """Real parameters in a fitted Instant-NGP (hash tables and MLP)."""
  return training.count_parameters(params)
