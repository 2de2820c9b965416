"""Decoding cost bounded by what the caller allows (issue 53 items 2 and 8): ``max_pixels``
checked from headers before any work, large images rendered band by band (the same image to the
bit), batches cut by pixels, and payloads that must end exactly where the file does."""

import zlib

import jax
import numpy as np
import pytest

import gi_jax
from gi_jax import codec
from gi_jax.codec import cli
from gi_jax.errors import CodecError, ImageTooLargeError, InvalidInputError

H, W = 40, 56   # partial tiles on both axes: 3 tile rows, 4 tile columns


def random_quantized(n=60, seed=0, height=H, width=W, **config):
  g = gi_jax.init_gaussians(jax.random.key(seed), n, height, width, "cholesky")
  config = codec.QuantizerConfig(**config)
  quantizers = codec.init_quantizers(jax.random.key(seed + 1), g, config)
  return codec.to_quantized(g, quantizers, config, (height, width)).to_numpy()


# -- bands ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "pallas"])
def test_a_banded_render_equals_the_one_piece_render_to_the_bit(backend):
  sets = [codec.canonicalize(random_quantized(seed=s)) for s in (0, 1)]
  whole = np.asarray(codec.render_quantized_batch(sets, H, W, backend, band_rows=0))
  # 3 tile rows: a band of two, then a shorter last one (its last tile row cut at row 40).
  banded = codec.render_quantized_batch(sets, H, W, backend, band_rows=2)
  np.testing.assert_array_equal(np.asarray(banded), whole)
  assert whole.std() > 0.05   # an image, not zeros


def test_decode_renders_large_images_in_bands_and_band_rows_is_checked():
  data = codec.encode(random_quantized(), H, W)
  whole, _ = codec.decode(data, "reference", band_rows=0)
  banded, _ = codec.decode(data, "reference", band_rows=2)
  np.testing.assert_array_equal(banded, whole)
  with pytest.raises(InvalidInputError, match="band_rows"):
    codec.decode(data, "reference", band_rows=-1)
