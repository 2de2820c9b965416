"""Any channel count: grayscale (1), RGBA (4, alpha fitted as a channel) and multispectral C."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gi_jax
from gi_jax import binning, codec, errors, io, metrics
from gi_jax.codec.format import decode_quantized
from gi_jax.codec.quantize import QuantizedGaussians
from gi_jax.raster_dense import rasterize_dense

H, W = 16, 32


def _scene(channels):
  g = gi_jax.init_gaussians(jax.random.key(channels), 24, H, W, channels=channels)
  # Wider Gaussians and dimmer colours than the random init: overlaps, and sums inside [0, 1].
  return gi_jax.Gaussians(g.means_raw, g.cov_raw + 1.5, 0.3 * g.colors, "cholesky", (H, W))


def _dense(g):
  return jnp.clip(rasterize_dense(binning.project(g, binning.TileGrid(H, W)), H, W), 0.0, 1.0)


# Three channels against the oracle on every backend: test_render.py's TestScenes.
@pytest.mark.parametrize("channels", [1, 4, 5])
@pytest.mark.parametrize("backend", ["reference", "pallas"])
def test_render_and_gradients_match_the_dense_oracle(backend, channels):
  g = _scene(channels)
  image = gi_jax.render(g, H, W, backend)
  assert image.shape == (H, W, channels)
  np.testing.assert_allclose(np.asarray(image), np.asarray(_dense(g)), atol=1e-5)
  weights = jax.random.normal(jax.random.key(7), (H, W, channels))
  grad = jax.grad(lambda g: jnp.sum(gi_jax.render(g, H, W, backend, capacity=4096) * weights))(g)
  want = jax.grad(lambda g: jnp.sum(_dense(g) * weights))(g)
  for name in ("means_raw", "cov_raw", "colors"):
    np.testing.assert_allclose(np.asarray(getattr(grad, name)), np.asarray(getattr(want, name)),
                               atol=1e-4, rtol=1e-4, err_msg=name)


def test_colours_of_the_wrong_shape_are_refused():
  g = _scene(3)
  with pytest.raises(errors.GIError, match="colors"):
    gi_jax.render(gi_jax.Gaussians(g.means_raw, g.cov_raw, g.colors[:, :0]), H, W)
  with pytest.raises(errors.GIError, match="channels"):
    gi_jax.init_gaussians(jax.random.key(0), 5, H, W, channels=0)


def _smooth(channels, seed=0):
  y, x = np.mgrid[0:16, 0:16] / 15.0
  phases = np.random.default_rng(seed).random(channels) * 6.0
  planes = [0.5 + 0.4 * np.sin(3.0 * x + 2.0 * y + p) for p in phases]
  return np.stack(planes, -1).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 4])
def test_fit_grayscale_and_rgba(channels):
  image = _smooth(channels)
  result = gi_jax.fit(image, 40, 60, learning_rate=0.02, backend="reference", progress=False)
  assert result.gaussians.colors.shape == (40, channels)
  assert result.render("reference").shape == (16, 16, channels)
  start = gi_jax.render(gi_jax.init_gaussians(jax.random.key(0), 40, 16, 16, channels=channels),
                        16, 16, "reference")
  assert result.history[-1]["loss"] < 0.5 * float(metrics.mse(start, image))


def test_fit_batch_of_grayscale_images():
  images = [_smooth(1, seed) for seed in (0, 1)]
  results = gi_jax.fit_batch(images, 30, 3, backend="reference", progress=False)
  assert [r.gaussians.colors.shape for r in results] == [(30, 1)] * 2
  with pytest.raises(errors.GIError, match="one size"):
    gi_jax.fit_batch([_smooth(1), _smooth(3)], 30, 3, progress=False)


def test_gradient_init_and_metrics_take_any_channel_count():
  image = _smooth(5)
  g = gi_jax.init.gradient_init(jax.random.key(0), image, 30)
  assert g.colors.shape == (30, 5) and g.canvas_size == (16, 16)
  other = _smooth(5, seed=3)
  assert np.isfinite(float(metrics.psnr(image, other)))
  assert np.isfinite(float(metrics.ssim(image, other)))


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_round_trip_keeps_the_channels(tmp_path, channels, bits):
  image = np.random.default_rng(channels).random((5, 7, channels)).astype(np.float32)
  path = tmp_path / "x.png"
  io.save_image(path, image, bits=bits)
  back = io.load_image(path, channels=None)
  assert back.shape == image.shape
  np.testing.assert_allclose(back, image, atol=0.5 / (2**bits - 1) + 1e-7)


def test_load_image_converts_channels(tmp_path):
  rgba = np.random.default_rng(0).random((4, 6, 4)).astype(np.float32)
  rgba[0, 0, 3] = 0.0                                  # one transparent pixel
  path = tmp_path / "rgba.png"
  io.save_image(path, rgba)
  on_disk = io.quantize_8bit(rgba)
  # channels=3 (the default) composites on white, as before.
  a = on_disk[..., 3:]
  np.testing.assert_allclose(io.load_image(path), np.clip(on_disk[..., :3] * a + 1 - a, 0, 1),
                             atol=1e-6)
  np.testing.assert_array_equal(io.load_image(path, channels=4), on_disk)
  gray = io.load_image(path, channels=1)
  assert gray.shape == (4, 6, 1)
  with pytest.raises(errors.ImageFileError, match="transparent"):
    io.load_image(path, channels=1, alpha="error")
  rgb_path = tmp_path / "rgb.png"
  io.save_image(rgb_path, rgba[..., :3])
  np.testing.assert_array_equal(io.load_image(rgb_path, channels=4)[..., 3], 1.0)
  luma = io.load_image(rgb_path, channels=1)[..., 0]
  expected = io.quantize_8bit(rgba[..., :3]) @ np.asarray([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(luma, expected, atol=1e-6)
  gray_path = tmp_path / "gray.png"
  io.save_image(gray_path, rgba[..., :1])
  assert io.load_image(gray_path).shape == (4, 6, 3)            # the default stays RGB
  assert io.load_image(gray_path, channels=None).shape == (4, 6, 1)


def test_bad_channel_requests_are_refused(tmp_path):
  with pytest.raises(errors.InvalidInputError, match="channels"):
    io.load_image(io.sample_image_path(), channels=2)
  with pytest.raises(errors.InvalidInputError, match="JPEG"):
    io.save_image(tmp_path / "x.jpg", np.zeros((4, 4, 4), np.float32))
  with pytest.raises(errors.InvalidInputError, match="C = 1"):
    io.save_image(tmp_path / "x.png", np.zeros((4, 4, 5), np.float32))
  assert list(tmp_path.iterdir()) == []


# -- the codec -------------------------------------------------------------------------------------

def _quantized(channels, color_bits, n=12):
  rng = np.random.default_rng(channels)
  extra = (dict(codebooks=None, color_scale=np.full((channels,), 0.01, np.float32),
                color_offset=np.zeros((channels,), np.float32),
                color_indices=rng.integers(0, 1 << color_bits, (n, channels)).astype(np.uint8))
           if color_bits else
           dict(codebooks=rng.random((2, 8, channels)).astype(np.float16).astype(np.float32),
                color_indices=rng.integers(0, 8, (n, 2)).astype(np.uint8)))
  return QuantizedGaussians(
      position_codes=rng.integers(0, 64, (n, 2)).astype(np.uint16),
      cov_codes=rng.integers(0, 64, (n, 3)).astype(np.uint8),
      cov_scale=np.full((3,), 0.05, np.float32), cov_offset=np.zeros((3,), np.float32),
      position_cells=(64, 64), color_bits=color_bits, **extra)


@pytest.mark.parametrize("color_bits", [0, 6])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_files_record_the_channel_count(channels, color_bits):
  q = _quantized(channels, color_bits)
  data = codec.encode(q, 20, 30)
  back, header = decode_quantized(data)
  assert header.channels == back.num_channels == channels
  order = np.lexsort(np.concatenate([q.position_codes, q.cov_codes, q.color_indices], 1).T[::-1])
  np.testing.assert_array_equal(back.color_indices, q.color_indices[order])
  for name in back.side_fields:
    np.testing.assert_array_equal(getattr(back, name), getattr(q, name))
  # The stages byte follows magic, version, flags, four one-byte varints, two grid varints and
  # cov_bits; RGB is written as before channel counts (high nibble 0), others as C.
  stages = color_bits or 2
  assert data[13] == stages | (0 if channels == 3 else channels << 4)


def test_codec_round_trip_of_a_grayscale_image():
  image = _smooth(1)
  encoded = codec.encode_image(image, 40, 20, 5, backend="reference")
  decoded, info = codec.decode(encoded.data, backend="reference")
  assert decoded.shape == (16, 16, 1)
  assert info["gaussians"].canvas_size == (16, 16)
  assert abs(float(metrics.psnr(decoded, image)) - encoded.tuned.psnr) < 1e-3


def test_a_channel_count_of_three_in_the_header_is_corrupt():
  data = bytearray(codec.encode(_quantized(3, 0), 20, 30))
  data[13] |= 3 << 4                                  # RGB has one spelling: a zero nibble
  data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")
  with pytest.raises(errors.CodecError, match="channel count"):
    decode_quantized(bytes(data))


def test_fit_dataset_batches_each_channel_count_apart():
  results = gi_jax.fit_dataset([_smooth(1), _smooth(3), _smooth(1, seed=2)], 20, 2,
                               backend="reference", progress=False)
  assert [r.gaussians.num_channels for r in results] == [1, 3, 1]


def test_fit_dataset_reads_files_with_the_channels_asked_for(tmp_path):
  io.save_image(tmp_path / "gray.png", _smooth(1))
  io.save_image(tmp_path / "rgb.png", _smooth(3))
  paths = [tmp_path / "gray.png", tmp_path / "rgb.png"]
  as_files = gi_jax.fit_dataset(paths, 20, 1, channels=None, backend="reference", progress=False)
  assert [r.gaussians.num_channels for r in as_files] == [1, 3]
  as_gray = gi_jax.fit_dataset(paths, 20, 1, channels=1, backend="reference", progress=False)
  assert [r.gaussians.num_channels for r in as_gray] == [1, 1]
  with pytest.raises(errors.InvalidInputError, match="channels"):
    gi_jax.fit_dataset(paths, 20, 1, channels=2, progress=False)
