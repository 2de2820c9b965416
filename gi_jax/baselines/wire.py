"""WIRE (Saragadam et al., CVPR 2023): an MLP whose activation is a Gabor wavelet,
``exp(i·ω0·z − |s0·z|²)`` of the layer's affine output z (complex), or its real form
``cos(ω0·z)·exp(−(s0·z')²)``. A row of the paper's Table 1.

Settings and where they come from (WIRE's repository, ``vishwa91/wire``):

- Complex Gabor activations by default ("All results in the paper were with the default complex
  'gabor' nonlinearity", ``modules/wire.py``); ``real=True`` gives ``RealGaborLayer``'s form, with
  a second linear map for the Gaussian's scale.
- ω0 = 20 and s0 = 30 for image representation (the repository's advice in
  ``wire_image_denoise.py``: "omega0=20, sigma0=30 for image representation"), in every layer.
- Width: ``int(256/√2) = 181`` complex features (the reference divides its width by √2 "since
  complex numbers are two real numbers") in a first real-weighted Gabor layer, 2 complex hidden
  Gabor layers and a complex linear output whose real part is the colour (``hidden_layers=2``,
  ``hidden_features=256`` as in ``wire_image_denoise.py``). Complex weights are held as real and
  imaginary parts (two real parameters each, as the table counts them); they start from
  PyTorch's ``nn.Linear`` default, U(-1/√fan_in, 1/√fan_in), drawn for each part (how torch
  draws a complex tensor's parts is our guess).
- Optimiser: Adam at 5e-3 (the repository: "WIRE works best at 5e-3 to 2e-2"), decayed to 0.1×
  over the run (``LambdaLR(0.1**min(step/steps, 1))``), MSE. The reference samples 256² pixels per
  step and scales the rate by ``min(1, 256²/(H·W))``; we fit every pixel each step at the
  unscaled rate (the same on images up to 256×256). GaussianImage's paper does not print its
  WIRE settings: these are the reference's, a guess at Table 1's, as is :data:`PAPER_STEPS`.
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

NAME = "wire"
# The reference's nominal width, divided by √2 for complex features.
NOMINAL_FEATURES = 256
HIDDEN_LAYERS = 2
OMEGA_0 = 20.0
SIGMA_0 = 30.0
LEARNING_RATE = 5e-3
# Not printed for Table 1's baselines: GaussianImage's own step count, our guess.
PAPER_STEPS = 50_000


def complex_features(nominal: int) -> int:
  """The reference's complex width for a nominal real width: ``int(nominal/√2)``."""
  return int(nominal / math.sqrt(2))


class ComplexDense(nn.Module):
  """``z W + b`` with complex W and b held as real and imaginary parts (PyTorch's default
  initialisation for each part). Real inputs give the first layer's product with real weights only
  when ``real_weights``."""
  features: int
  real_weights: bool = False

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    fan_in = z.shape[-1]
    init = training.uniform_init(1.0 / math.sqrt(fan_in))
    kernel = self.param("kernel", init, (fan_in, self.features))
    bias = self.param("bias", init, (self.features,))
    if self.real_weights:
      return z @ kernel + bias
    kernel = kernel + 1j * self.param("kernel_imag", init, (fan_in, self.features))
    bias = bias + 1j * self.param("bias_imag", init, (self.features,))
    return z @ kernel + bias


class Wire(nn.Module):
  """The WIRE network: coordinates [..., 2] → RGB [..., 3] (the real part, unclipped).

  Attributes:
    nominal_features: the reference's ``hidden_features``; complex layers get
      ``int(nominal/√2)`` features, real ones (``real=True``) the nominal count.
    hidden_layers: Gabor layers after the first.
    omega_0, sigma_0: the wavelet's frequency and the Gaussian's scale.
    real: real Gabor wavelets (``cos(ω0·z)·exp(−(s0·z')²)``, z' a second linear map) instead of
      complex ones.
  """
  nominal_features: int = NOMINAL_FEATURES
  hidden_layers: int = HIDDEN_LAYERS
  omega_0: float = OMEGA_0
  sigma_0: float = SIGMA_0
  real: bool = False

  @nn.compact
  def __call__(self, coords: jax.Array) -> jax.Array:
    if self.real:
      return self._real(coords)
    width = complex_features(self.nominal_features)
    z = coords
    for layer in range(self.hidden_layers + 1):
      # The first layer's weights are real (the reference's is_first), the rest complex.
      z = ComplexDense(width, real_weights=layer == 0)(z)
      # |s0·z|² as re² + im²: abs's square root has no gradient at 0.
      scaled = self.sigma_0 * z
      z = jnp.exp(1j * self.omega_0 * z - (jnp.square(jnp.real(scaled))
                                           + jnp.square(jnp.imag(scaled))))
    return jnp.real(ComplexDense(3)(z))

  def _real(self, coords: jax.Array) -> jax.Array:
    x = coords
    for _ in range(self.hidden_layers + 1):
      fan_in = x.shape[-1]
      init = dict(kernel_init=training.uniform_init(1.0 / math.sqrt(fan_in)),
                  bias_init=training.uniform_init(1.0 / math.sqrt(fan_in)))
      freq = nn.Dense(self.nominal_features, **init)(x)
      scale = nn.Dense(self.nominal_features, **init)(x)
      x = jnp.cos(self.omega_0 * freq) * jnp.exp(-jnp.square(self.sigma_0 * scale))
    bound = 1.0 / math.sqrt(self.nominal_features)
    return nn.Dense(3, kernel_init=training.uniform_init(bound),
                    bias_init=training.uniform_init(bound))(x)


def parameter_count(nominal_features: int = NOMINAL_FEATURES, hidden_layers: int = HIDDEN_LAYERS,
                    real: bool = False) -> int:
  """Real parameters of a :class:`Wire` (a complex weight counts two)."""
  if real:
    width = nominal_features
    return 2 * (2 * width + width) + hidden_layers * 2 * (width * width + width) + width * 3 + 3
  width = complex_features(nominal_features)
  return (2 * width + width) + hidden_layers * 2 * (width * width + width) + 2 * (width * 3 + 3)


def fit(image, steps: int, seed: int = 0, *, nominal_features: int = NOMINAL_FEATURES,
        hidden_layers: int = HIDDEN_LAYERS, omega_0: float = OMEGA_0, sigma_0: float = SIGMA_0,
        real: bool = False, learning_rate: float = LEARNING_RATE,
        steps_per_call: int | None = None,
        progress: Callable[[dict], None] | None = None) -> BaselineFit:
  """Fits a WIRE network to ``image`` (full-batch MSE, Adam decayed to 0.1× over the run).

  Args:
    image: [H, W, 3] in [0, 1].
    steps: optimisation steps (>= 0).
    seed: PRNG seed of the initialisation.
    nominal_features, hidden_layers, omega_0, sigma_0, real: the network (see :class:`Wire`).
    learning_rate: Adam's initial rate.
    steps_per_call: steps per device call, the history interval (default: steps/50).
    progress: called with each history record.

  Returns:
    A :class:`~gi_jax.baselines.training.BaselineFit`; ``params`` is a
    :class:`~gi_jax.baselines.training.NetworkParams` for :func:`render`.

  Raises:
    errors.InvalidInputError: a bad image, step count or setting (before any work).
  """
  training.check_positive(complex_features(nominal_features) if not real else nominal_features,
                          "nominal_features (complex width int(n/√2))")
  training.check_positive(hidden_layers + 1, "hidden_layers + 1")
  for value, name in ((omega_0, "omega_0"), (sigma_0, "sigma_0"),
                      (learning_rate, "learning_rate")):
    training.check_positive(value, name, float)
  steps, steps_per_call = training.check_steps(steps, steps_per_call)
  total = max(steps, 1)
  # The reference's LambdaLR(0.1 ** min(step / steps, 1)).
  schedule = lambda count: learning_rate * 0.1**jnp.minimum(count / total, 1.0)
  model = Wire(nominal_features, hidden_layers, omega_0, sigma_0, real)
  return training.fit_network(NAME, model, image, steps, seed, optax.adam(schedule), schedule,
                              steps_per_call, progress)


def render(params: NetworkParams, height: int, width: int) -> jax.Array:
  """The fitted image at ``height``×``width``, [H, W, 3] clipped to [0, 1]."""
  return training.render_network(params, height, width)


def num_parameters(params: NetworkParams) -> int:
  """Real parameters in a fitted WIRE network."""
  return training.count_parameters(params)
