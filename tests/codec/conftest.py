"""Fixtures of the codec's tests: a 32×32 crop of the sample, a fitted and fine-tuned set of it,
random quantized sets and small files of every layout.
"""

import pytest

import gi_jax
from gi_jax import codec, io
from gi_jax.io import sample_image_path
from tests.codec.helpers import H, W, random_quantized, wide_quantized, correlated_quantized


@pytest.fixture(scope="module")
def quantized():
  return random_quantized()


@pytest.fixture(scope="module")
def target():
  image = io.load_image(sample_image_path())
  return image[200:200 + H, 300:300 + W]


@pytest.fixture(scope="module")
def tuned(target):
  fitted = gi_jax.fit(target, 64, 30, progress=False, steps_per_call=30)
  return fitted, codec.finetune(fitted, target, steps=20, progress=False, steps_per_call=10)


@pytest.fixture(scope="module")
def mixed_files():
  """Files of two N, two layouts and two sizes, interleaved: decode_batch must regroup them."""
  sets = [(random_quantized(64, seed=1), H, W), (random_quantized(96, seed=2), H, W),
          (random_quantized(64, seed=3), H, W), (random_quantized(64, seed=4), 20, 40),
          (random_quantized(64, seed=5, position_step=0.25), H, W),
          (random_quantized(64, seed=6), H, W)]
  return [codec.encode(q, h, w) for q, h, w in sets]


@pytest.fixture(scope="module")
def small_files():
  q = random_quantized(40, seed=3)
  grid = random_quantized(40, seed=3, position_step=0.5)
  files = [codec.encode(q, H, W, bits_back=b) for b in (True, False)] + [
      codec.encode(grid, H, W), codec.encode(random_quantized(40, seed=3, color_bits=6), H, W),
      codec.encode(correlated_quantized(200, seed=3, color_bits=4), H, W),
      codec.encode(random_quantized(40, seed=3, codeword_fraction_bits=10), H, W)]
  assert codec.read_header(files[-1])[0].fixed_point_codebooks
  header = codec.read_header(files[-2])[0]
  assert header.cov_predictor is not None and header.color_predictor is not None
  files.append(codec.encode(wide_quantized(60, seed=3), H, W))
  assert codec.read_header(files[-1])[0].wide_sigma == 0.5
  return files
