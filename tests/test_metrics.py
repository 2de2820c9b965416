"""Tests of gi_jax.metrics, with MS-SSIM checked against values computed by pytorch-msssim 1.0.0.

The fixture values come from tests/fixtures/make_ms_ssim_fixtures.py (run once with torch in a
throwaway virtualenv); the inputs are regenerated here from the same NumPy recipes.
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gi_jax import metrics
from gi_jax.errors import GIError, InvalidInputError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "ms_ssim_fixtures.json")
with open(FIXTURES) as _f:
  CASES = json.load(_f)["cases"]


def _load_fixture_maker():
  # The generator imports torch only inside its main(): loading it here needs numpy alone, and
  # the test rebuilds exactly the inputs the fixtures were made from.
  path = os.path.join(os.path.dirname(__file__), "fixtures", "make_ms_ssim_fixtures.py")
  spec = importlib.util.spec_from_file_location("make_ms_ssim_fixtures", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


make_pair = _load_fixture_maker().make_pair


def inputs(case):
  """The case's inputs, after checking they are the ones pytorch-msssim saw."""
  x, y = make_pair(case)
  got = [float(x.astype(np.float64).sum()), float(y.astype(np.float64).sum()),
         float(x.flat[12345]), float(y.flat[54321])]
  np.testing.assert_allclose(got, case["checksum"], rtol=1e-9,
                             err_msg="regenerated inputs differ from the fixture's")
  return x, y


_ms_ssim_jit = jax.jit(metrics.ms_ssim)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_ms_ssim_matches_pytorch_msssim(case):
  x, y = inputs(case)
  got = np.asarray(_ms_ssim_jit(x, y))
  assert got.shape == (len(case["ms_ssim_float64"]),)
  np.testing.assert_allclose(got, case["ms_ssim_float64"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(got, case["ms_ssim_float32"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["first_channel_inverted", "odd_161x171"])
def test_ms_ssim_matches_pytorch_msssim_float64(name):
  # In float64 the only differences left are summation order: agreement must be near-exact.
  case = next(c for c in CASES if c["name"] == name)
  x, y = inputs(case)
  with jax.enable_x64(True):
    got = jax.jit(metrics.ms_ssim)(x.astype(np.float64), y.astype(np.float64))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), case["ms_ssim_float64"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["noise_perturbed", "batch_of_2", "nonsquare_200x168"])
def test_ssim_matches_pytorch_msssim(name):
  case = next(c for c in CASES if c["name"] == name)
  x, y = inputs(case)
  np.testing.assert_allclose(metrics.ssim(x, y), case["ssim_float64"], rtol=0, atol=1e-5)


def test_window_is_the_gaussian():
  i = np.arange(11) - 5
  g = np.exp(-i**2 / (2 * 1.5**2))
  np.testing.assert_allclose(metrics._TORCH_WINDOW, g / g.sum(), rtol=3e-7)


def test_single_image_gives_scalar():
  case = CASES[0]
  x, y = inputs(case)
  got = _ms_ssim_jit(x[0], y[0])
  assert got.shape == ()
  np.testing.assert_allclose(got, case["ms_ssim_float64"][0], atol=1e-5)


def test_identity_is_one():
  x, _ = make_pair(CASES[2])
  np.testing.assert_allclose(_ms_ssim_jit(x, x), [1.0], atol=1e-6)
  np.testing.assert_allclose(metrics.ssim(x, x), [1.0], atol=1e-6)
  assert np.isinf(metrics.psnr(x, x)).all()


def test_psnr_and_mse_of_known_error():
  a = jnp.full((2, 8, 9, 3), 0.25)
  b = a + jnp.array([0.1, 0.01])[:, None, None, None]
  np.testing.assert_allclose(metrics.mse(a, b), [1e-2, 1e-4], rtol=1e-5)
  np.testing.assert_allclose(metrics.psnr(a, b), [20.0, 40.0], rtol=1e-5)
  np.testing.assert_allclose(metrics.psnr(255 * a, 255 * b, max_value=255.0), [20.0, 40.0],
                             rtol=1e-5)
  assert metrics.psnr(a[0], b[0]).shape == ()
  np.testing.assert_allclose(jax.jit(metrics.psnr)(a, b), [20.0, 40.0], rtol=1e-5)


def test_ms_ssim_gradient_matches_finite_difference():
  # The case with channel 0's contrast-structure clamped to 0 by the ReLU (so 0**w appears): the
  # gradient must stay finite there (no inf * 0) and still be right for the other channels.
  # float64, because in float32 the central difference itself is only good to a few percent.
  case = next(c for c in CASES if c["name"] == "first_channel_inverted")
  x, y = inputs(case)
  x, y = x[0, :161, :163].astype(np.float64), y[0, :161, :163].astype(np.float64)
  direction = np.random.default_rng(0).uniform(-1, 1, y.shape)
  with jax.enable_x64(True):
    f = jax.jit(lambda img: metrics.ms_ssim(x, img))
    assert float(f(y)) > 0  # channels 1 and 2 still contribute
    g = np.asarray(jax.jit(jax.grad(f))(y))
    h = 1e-4
    fd = (f(y + h * direction) - f(y - h * direction)) / (2 * h)
  assert np.isfinite(g).all() and np.abs(g).max() > 0
  np.testing.assert_allclose(np.sum(g * direction), fd, rtol=1e-5)


@pytest.mark.parametrize("shape", [(160, 200, 3), (200, 160, 3), (2, 100, 300, 3)])
def test_ms_ssim_too_small_raises(shape):
  x = np.zeros(shape, np.float32)
  with pytest.raises(InvalidInputError, match="161") as info:
    metrics.ms_ssim(x, x)
  assert isinstance(info.value, GIError)


def test_bad_shapes_raise():
  with pytest.raises(InvalidInputError, match="same shape"):
    metrics.ms_ssim(np.zeros((170, 170, 3)), np.zeros((171, 170, 3)))
  with pytest.raises(InvalidInputError, match="same shape"):
    metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 1)))
  with pytest.raises(InvalidInputError):
    metrics.ms_ssim(np.zeros((1, 1, 170, 170, 3)), np.zeros((1, 1, 170, 170, 3)))
