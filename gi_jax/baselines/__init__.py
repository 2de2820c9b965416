"""The paper's Table 1 baselines, one module per method, each fitted to one image:

- :mod:`~gi_jax.baselines.siren`: SIREN (sine activations), flax.
- :mod:`~gi_jax.baselines.wire`: WIRE (complex or real Gabor wavelet activations), flax.
- :mod:`~gi_jax.baselines.instant_ngp`: Instant-NGP (multiresolution hash encoding, tiny MLP),
  flax, pure JAX.
- :mod:`~gi_jax.baselines.gs3d`: 3D Gaussian splatting under a fixed camera (59 parameters per
  Gaussian), dense α-blending.

Each module has ``fit(image, steps, seed, ...) -> BaselineFit`` (params and history),
``render(params, height, width)``, ``parameter_count(...)`` (from the settings) and
``num_parameters(params)``, and states in its docstring where each setting comes from.
``experiments/table1.py`` fits them beside GaussianImage. Not imported by ``gi_jax`` itself (flax
is loaded only by those who use the baselines).
"""

from gi_jax.baselines import gs3d, instant_ngp, siren, wire
from gi_jax.baselines.training import BaselineFit, NetworkParams

# Name -> module, in Table 1's order.
METHODS = {module.NAME: module for module in (siren, wire, instant_ngp, gs3d)}

__all__ = ["BaselineFit", "METHODS", "NetworkParams", "gs3d", "instant_ngp", "siren", "wire"]
