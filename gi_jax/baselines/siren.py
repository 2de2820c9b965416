"""SIREN (Sitzmann et al., NeurIPS 2020): an MLP with sine activations, ``sin(ω0·(Wx + b))``, fitted
to an image as a function of pixel coordinates. A row of the paper's Table 1.

Settings and where they come from:

- Architecture: coordinates (x, y) in [-1, 1] → ``hidden_layers + 1`` sine layers of
  ``hidden_features`` → a linear RGB output ("outermost_linear"). ω0 = 30 in the first layer and
  in the hidden ones (SIREN's paper, Sec. 3.2, and its image-fitting code; WIRE's repository
  ``modules/siren.py`` keeps the same defaults).
- Initialisation (SIREN's paper, Sec. 3.2 and supplement 1.5): first-layer weights
  U(-1/fan_in, 1/fan_in); later weights, the output layer's included,
  U(-√(6/fan_in)/ω0, √(6/fan_in)/ω0); biases keep PyTorch's ``nn.Linear`` default
  U(-1/√fan_in, 1/√fan_in), as the reference code never re-initialises them.
- Width 256 and 3 hidden layers (5 linear layers in all): SIREN's image-fitting notebook
  (``explore_siren``: ``hidden_features=256, hidden_layers=3``). GaussianImage's paper does not
  print its SIREN's width or depth; we use the reference's and report the parameter count it gives
  (198,915), so this width is a guess at Table 1's budget.
- Optimiser: Adam at 1e-4, constant, full-batch MSE (SIREN's image fitting). The number of steps
  is the caller's; :data:`PAPER_STEPS` (50,000, GaussianImage's own count) is our guess at
  Table 1's, which the paper does not print for its baselines.
"""

from __future__ import annotations

import math
from typing import Callable

from flax import linen as nn
import jax
import jax.numpy as jnp
import optax

from gi_jax.baselines import training
from gi_jax.baselines.training import BaselineFit, NetworkParams

NAME = "siren"
HIDDEN_FEATURES = 256
HIDDEN_LAYERS = 3
OMEGA_0 = 30.0
LEARNING_RATE = 1e-4
# Not printed for Table 1's baselines: GaussianImage's own step count, our guess (see above).
PAPER_STEPS = 50_000


def _bias_init(fan_in: int):
  # PyTorch's nn.Linear bias default, which the reference keeps.
  return training.uniform_init(1.0 / math.sqrt(fan_in))


class Siren(nn.Module):
  """The SIREN network: coordinates [..., 2] → RGB [..., 3] (unclipped).

  Attributes:
    hidden_features: width of every sine layer.
    hidden_layers: sine layers after the first.
    first_omega_0, hidden_omega_0: ω0 of the first layer and of the others.
  """
  hidden_features: int = HIDDEN_FEATURES
  hidden_layers: int = HIDDEN_LAYERS
  first_omega_0: float = OMEGA_0
  hidden_omega_0: float = OMEGA_0

  @nn.compact
  def __call__(self, coords: jax.Array) -> jax.Array:
    x = coords
    fan_in = x.shape[-1]
    x = nn.Dense(self.hidden_features, kernel_init=training.uniform_init(1.0 / fan_in),
                 bias_init=_bias_init(fan_in))(x)
    x = jnp.sin(self.first_omega_0 * x)
    hidden_bound = math.sqrt(6.0 / self.hidden_features) / self.hidden_omega_0
    for _ in range(self.hidden_layers):
      x = nn.Dense(self.hidden_features, kernel_init=training.uniform_init(hidden_bound),
                   bias_init=_bias_init(self.hidden_features))(x)
      x = jnp.sin(self.hidden_omega_0 * x)
    return nn.Dense(3, kernel_init=training.uniform_init(hidden_bound),
                    bias_init=_bias_init(self.hidden_features))(x)


def parameter_count(hidden_features: int = HIDDEN_FEATURES,
                    hidden_layers: int = HIDDEN_LAYERS) -> int:
  """Real parameters of a :class:`Siren` (weights and biases of its linear layers)."""
  width = hidden_features
  return (2 * width + width) + hidden_layers * (width * width + width) + (width * 3 + 3)


def fit(image, steps: int, seed: int = 0, *, hidden_features: int = HIDDEN_FEATURES,
        hidden_layers: int = HIDDEN_LAYERS, omega_0: float = OMEGA_0,
        learning_rate: float = LEARNING_RATE, steps_per_call: int | None = None,
        progress: Callable[[dict], None] | None = None) -> BaselineFit:
  """Fits a SIREN to ``image`` (full-batch MSE, Adam at a constant rate).

  Args:
    image: [H, W, 3] in [0, 1].
    steps: optimisation steps (>= 0).
    seed: PRNG seed of the initialisation.
    hidden_features, hidden_layers, omega_0: the network (see :class:`Siren`).
    learning_rate: Adam's rate.
    steps_per_call: steps per device call, the history interval (default: steps/50).
    progress: called with each history record.

  Returns:
    A :class:`~gi_jax.baselines.training.BaselineFit`; ``params`` is a
    :class:`~gi_jax.baselines.training.NetworkParams` for :func:`render`.

  Raises:
    errors.InvalidInputError: a bad image, step count or setting (before any work).
  """
  training.check_positive(hidden_features, "hidden_features")
  training.check_positive(hidden_layers + 1, "hidden_layers + 1")
  training.check_positive(omega_0, "omega_0", float)
  training.check_positive(learning_rate, "learning_rate", float)
  model = Siren(hidden_features, hidden_layers, omega_0, omega_0)
  return training.fit_network(NAME, model, image, steps, seed, optax.adam(learning_rate),
                              optax.constant_schedule(learning_rate), steps_per_call, progress)


def render(params: NetworkParams, height: int, width: int) -> jax.Array:
  """The fitted image at ``height``×``width``, [H, W, 3] clipped to [0, 1]."""
  return training.render_network(params, height, width)


def num_parameters(params: NetworkParams) -> int:
  """Real parameters in a fitted SIREN."""
  return training.count_parameters(params)
