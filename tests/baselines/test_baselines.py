"""Table 1's baselines (gi_jax.baselines): each fit improves on its start in a few steps, parameter
counts are exact, renders have the image's shape, 3D-GS has 59 parameters per Gaussian, and bad
input is one clear error before any work."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gi_jax import errors
from gi_jax.baselines import METHODS, gs3d, instant_ngp, siren, training, wire
from gi_jax.io import load_image, sample_image_path

STEPS = 20


@pytest.fixture(scope="module")
def crop():
  """A 16×16 piece of kodim23 with an edge in it."""
  return load_image(sample_image_path())[200:216, 300:316]


# Small settings keep each fit's compile and steps within seconds; the counts are checked at the
# full settings below.
SMALL = {
    "siren": dict(hidden_features=32, hidden_layers=2),
    "wire": dict(nominal_features=32, hidden_layers=1),
    "instant_ngp": dict(levels=4, log2_table_size=6, hidden_features=16),
    "gs3d": dict(num_gaussians=40, learning_rate=1e-2),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fit_improves_the_image_and_renders_its_shape(crop, name):
  module = METHODS[name]
  result = module.fit(crop, STEPS, seed=0, steps_per_call=STEPS // 2, **SMALL[name])
  first, last = result.history[0]["psnr"], result.history[-1]["psnr"]
  assert last > first, result.history
  assert [r["step"] for r in result.history] == [STEPS // 2, STEPS]
  assert result.method == name and result.steps == STEPS and result.fit_seconds > 0
  image = module.render(result.params, 16, 16)
  assert image.shape == (16, 16, 3)
  assert float(jnp.min(image)) >= 0 and float(jnp.max(image)) <= 1
  assert result.num_parameters == module.num_parameters(result.params)


def test_parameter_counts_are_exact():
  coords = jnp.zeros((1, 2))
  # Shapes only: nothing is computed.
  counted = lambda model: training.count_parameters(
      jax.eval_shape(model.init, jax.random.key(0), coords))
  assert counted(siren.Siren()) == siren.parameter_count() == 198_915
  assert counted(wire.Wire()) == wire.parameter_count() == 133_403
  assert counted(wire.Wire(real=True)) == wire.parameter_count(real=True)
  for height, width in ((512, 768), (64, 48)):
    scale = instant_ngp.growth_factor(height, width)
    model = instant_ngp.InstantNGP(per_level_scale=scale)
    assert counted(model) == instant_ngp.parameter_count(height, width)
  assert instant_ngp.parameter_count(512, 768) == 315_110


def test_gs3d_has_59_parameters_per_gaussian():
  gaussians = gs3d.init_gaussians(jax.random.key(1), 7)
  assert gs3d.num_parameters(gaussians) == gs3d.parameter_count(7) == 59 * 7
  assert gaussians.sh.shape == (7, 16, 3) and gaussians.quats.shape == (7, 4)
  # Random unit quaternions, scales from neighbour distances, opacity 0.1, DC colour in [0, 1].
  np.testing.assert_allclose(jnp.linalg.norm(gaussians.quats, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jax.nn.sigmoid(gaussians.opacity_logits), 0.1, rtol=1e-5)
  assert bool(jnp.all(jnp.isfinite(gaussians.log_scales)))
  assert not bool(jnp.any(gaussians.sh[:, 1:]))


def test_gs3d_blends_front_to_back():
  # Two opaque-ish Gaussians at the image centre, one red in front, one green behind: the pixel
  # is mostly red whichever comes first in the arrays; with no Gaussians it is the white background.
  render = jax.jit(gs3d.render, static_argnums=(1, 2))
  sh = jnp.zeros((2, 16, 3))
  # Colour = C0·dc + 0.5, so dc = (c − 0.5)/C0 gives colour c.
  red, green = ((jnp.array(c) - 0.5) / gs3d._C0 for c in ([1.0, 0, 0], [0, 1.0, 0]))
  for front, back in ((0, 1), (1, 0)):
    means = jnp.zeros((2, 3)).at[front, 2].set(-1.0).at[back, 2].set(1.0)
    g = gs3d.Gaussians3D(means=means, log_scales=jnp.full((2, 3), 1.0),
                         quats=jnp.tile(jnp.array([1.0, 0, 0, 0]), (2, 1)),
                         opacity_logits=jnp.full((2, 1), 10.0),
                         sh=sh.at[front, 0].set(red).at[back, 0].set(green))
    centre = render(g, 16, 16)[8, 8]
    assert centre[0] > 0.95 and centre[1] < 0.05, centre
  empty = g.replace(opacity_logits=jnp.full((2, 1), -30.0))
  np.testing.assert_allclose(render(empty, 16, 16), 1.0)


@pytest.mark.parametrize("call, message", [
    (lambda img: siren.fit(img[..., :2], 1), "image must be [H, W, 3]"),
    (lambda img: wire.fit(img, -1), "steps must be an integer >= 0"),
    (lambda img: instant_ngp.fit(img, 1, levels=0), "levels must be an integer > 0"),
    (lambda img: gs3d.fit(img, 1, num_gaussians=0), "num_gaussians must be an integer > 0"),
    (lambda img: gs3d.fit(img[:8, :8], 1, num_gaussians=4), "at least 11×11"),
    (lambda img: siren.fit(img, 1, learning_rate=float("nan")), "learning_rate must be a number"),
])
def test_bad_input_is_one_clear_error(crop, call, message):
  with pytest.raises(errors.InvalidInputError, match=re.escape(message)):
    call(crop)


@pytest.mark.parametrize("log2_table_size", [10, 3])  # 25 vertices stored densely, or hashed into 8
def test_hash_encoding_interpolates_its_table(log2_table_size):
  encoding = instant_ngp.HashEncoding(levels=1, features_per_level=2,
                                      log2_table_size=log2_table_size, base_resolution=4)
  variables = encoding.init(jax.random.key(0), jnp.zeros((1, 2)))
  table = variables["params"]["level_0"]
  size = table.shape[0]
  assert size == min(25, 2**log2_table_size)

  def entry(x, y):
    if size == 25:
      return table[x + 5 * y]
    return table[((x ^ (y * 2654435761)) & 0xFFFFFFFF) % size]  # the uint32 hash

  vertices = [(0, 0), (3, 1), (4, 4), (2, 4)]
  coords = jnp.array([[2 * x / 4 - 1, 2 * y / 4 - 1] for x, y in vertices])
  np.testing.assert_allclose(encoding.apply(variables, coords),
                             np.stack([entry(x, y) for x, y in vertices]), atol=1e-9)
  # The centre of cell (1, 2) is the mean of its four vertices.
  centre = encoding.apply(variables, jnp.array([[2 * 1.5 / 4 - 1, 2 * 2.5 / 4 - 1]]))[0]
  expected = np.mean([entry(1, 2), entry(2, 2), entry(1, 3), entry(2, 3)], axis=0)
  np.testing.assert_allclose(centre, expected, rtol=1e-5, atol=1e-9)
