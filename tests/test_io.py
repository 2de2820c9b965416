"""Tests of gi_jax.io: round trips, modes, alpha, formats, and the errors for bad files."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import png
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from gi_jax import io
from gi_jax.errors import GIError, ImageFileError, ImageTooLargeError, InvalidInputError

SAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "gi_jax", "data", "kodim23.png")


def random_image(h=13, w=17, seed=0):
  return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def smooth_image(h=48, w=64):
  ii, jj = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
  return np.stack([ii, jj, 0.5 + 0.4 * np.sin(6 * ii * jj)], -1).astype(np.float32)


def write_png16(path, samples, greyscale=False, alpha=False):
  """Writes uint16 samples [H, W, planes] as a 16-bit PNG with pypng."""
  h, w, planes = samples.shape
  with open(path, "wb") as f:
    png.Writer(width=w, height=h, greyscale=greyscale, alpha=alpha, bitdepth=16).write(
        f, samples.reshape(h, w * planes))


def leftovers(folder):
  return sorted(os.listdir(folder))


# Round trips.


def test_8bit_png_round_trip_equals_quantize(tmp_path):
  x = random_image() * 1.4 - 0.2  # also exercises clipping
  path = tmp_path / "a.png"
  io.save_image(path, x)
  y = io.load_image(path)
  assert y.dtype == np.float32 and y.shape == x.shape
  np.testing.assert_array_equal(y, io.quantize_8bit(x))
  np.testing.assert_array_equal(y, np.round(np.clip(x, 0, 1) * 255) / 255)
  with Image.open(path) as im:
    assert (im.format, im.mode) == ("PNG", "RGB")


def test_save_accepts_jax_arrays_and_quantize_is_exact_under_jit(tmp_path):
  x = jnp.asarray(random_image(seed=1))
  io.save_image(str(tmp_path / "j.png"), x)
  loaded = io.load_image(str(tmp_path / "j.png"))
  q = jax.jit(io.quantize_8bit)(x)
  assert isinstance(q, jax.Array)
  np.testing.assert_array_equal(np.asarray(q), loaded)  # bit-exact, not just close
  np.testing.assert_array_equal(np.asarray(io.quantize_8bit(x)), loaded)


def test_quantize_hits_every_level_exactly():
  levels = np.arange(256, dtype=np.float32)
  x = levels / np.float32(255)
  np.testing.assert_array_equal(io.quantize_8bit(x), x)
  np.testing.assert_array_equal(np.asarray(io.quantize_8bit(jnp.asarray(x))), x)


def test_16bit_png_round_trip_keeps_precision(tmp_path):
  x = random_image(seed=2)
  path = tmp_path / "deep.png"
  io.save_image(path, x, bits=16)
  with open(path, "rb") as f:
    info = png.Reader(file=f).read()[3]
  assert info["bitdepth"] == 16 and info["planes"] == 3
  y = io.load_image(path)
  assert y.dtype == np.float32
  np.testing.assert_allclose(y, x, atol=0.5 / 65535 + 1e-7)
  assert np.abs(y - io.quantize_8bit(x)).max() > 1e-4  # not truncated to 8 bits


def test_16bit_png_rgb_from_pypng_exact_values(tmp_path):
  samples = np.random.default_rng(3).integers(0, 65536, (5, 7, 3)).astype(np.uint16)
  write_png16(tmp_path / "s.png", samples)
  np.testing.assert_array_equal(io.load_image(tmp_path / "s.png"),
                                samples.astype(np.float32) / np.float32(65535))


@settings(max_examples=15, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=3, max_dims=3, max_side=6).map(
    lambda s: s[:2] + (3,)), elements=st.floats(-0.5, 1.5, width=32)))
def test_round_trip_property(tmp_path_factory, x):
  path = tmp_path_factory.mktemp("prop") / "p.png"
  io.save_image(path, x)
  np.testing.assert_array_equal(io.load_image(path), io.quantize_8bit(x))


# Modes.


def test_grayscale_8bit_expands_to_three_channels(tmp_path):
  g = np.random.default_rng(4).integers(0, 256, (6, 9)).astype(np.uint8)
  Image.fromarray(g).save(tmp_path / "g.png")
  y = io.load_image(tmp_path / "g.png")
  assert y.shape == (6, 9, 3)
  for c in range(3):
    np.testing.assert_array_equal(y[..., c], g / np.float32(255))


def test_grayscale_16bit(tmp_path):
  g = np.random.default_rng(5).integers(0, 65536, (6, 9, 1)).astype(np.uint16)
  write_png16(tmp_path / "g16.png", g, greyscale=True)
  with Image.open(tmp_path / "g16.png") as im:
    assert im.mode.startswith("I")  # what Pillow would have used
  y = io.load_image(tmp_path / "g16.png")
  np.testing.assert_array_equal(y, np.repeat(g, 3, -1) / np.float32(65535))


def test_bilevel_image(tmp_path):
  bits = np.random.default_rng(6).integers(0, 2, (5, 8)).astype(bool)
  Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
  np.testing.assert_array_equal(io.load_image(tmp_path / "b.png"),
                                np.repeat(bits[..., None], 3, -1).astype(np.float32))


def test_palette_image(tmp_path):
  rgb = (random_image(seed=7) * 255).astype(np.uint8)
  im = Image.fromarray(rgb).quantize(colors=16)
  assert im.mode == "P"
  im.save(tmp_path / "p.png")
  want = np.asarray(im.convert("RGB")).astype(np.float32) / 255
  np.testing.assert_array_equal(io.load_image(tmp_path / "p.png"), want)


def test_palette_with_transparency_composites_on_white(tmp_path):
  im = Image.new("P", (4, 3), 0)
  im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
  im.putpixel((1, 1), 1)
  im.info["transparency"] = 1
  im.save(tmp_path / "pt.png", transparency=1)
  y = io.load_image(tmp_path / "pt.png")
  np.testing.assert_array_equal(y[0, 0], [1, 0, 0])
  np.testing.assert_array_equal(y[1, 1], [1, 1, 1])  # transparent index -> white
  with pytest.raises(ImageFileError, match="transparent"):
    io.load_image(tmp_path / "pt.png", alpha="error")


# Alpha.


def test_rgba_composites_on_white(tmp_path):
  rgba = np.zeros((2, 3, 4), np.uint8)
  rgba[..., :3] = [51, 102, 204]
  rgba[..., 3] = [[255, 128, 0], [255, 255, 255]]
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  y = io.load_image(tmp_path / "a.png")
  c = np.array([51, 102, 204], np.float32) / 255
  a = np.float32(128) / 255
  np.testing.assert_allclose(y[0, 0], c, rtol=1e-7)
  np.testing.assert_allclose(y[0, 1], c * a + (1 - a), rtol=1e-6)
  np.testing.assert_array_equal(y[0, 2], [1, 1, 1])
  assert y.shape == (2, 3, 3) and y.max() <= 1


def test_rgba_refused_with_alpha_error(tmp_path):
  rgba = np.full((2, 3, 4), 200, np.uint8)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  with pytest.raises(ImageFileError, match=r"a\.png.*6 pixels are transparent"):
    io.load_image(tmp_path / "a.png", alpha="error")


def test_opaque_alpha_is_dropped_even_with_alpha_error(tmp_path):
  rgba = np.full((2, 3, 4), 255, np.uint8)
  rgba[..., 0] = 10
  Image.fromarray(rgba, "RGBA").save(tmp_path / "o.png")
  y = io.load_image(tmp_path / "o.png", alpha="error")
  np.testing.assert_array_equal(y[..., 0], np.float32(10) / 255)


def test_la_and_16bit_rgba(tmp_path):
  la = np.zeros((2, 2, 2), np.uint8)
  la[..., 0], la[..., 1] = 0, [[255, 0], [255, 255]]
  Image.fromarray(la, "LA").save(tmp_path / "la.png")
  np.testing.assert_array_equal(io.load_image(tmp_path / "la.png")[..., 0], [[0, 1], [0, 0]])

  rgba = np.zeros((1, 2, 4), np.uint16)
  rgba[..., 3] = [65535, 32768]
  write_png16(tmp_path / "rgba16.png", rgba, alpha=True)
  y = io.load_image(tmp_path / "rgba16.png")
  np.testing.assert_allclose(y[0, 1], 1 - np.float32(32768) / 65535, rtol=1e-6)
  np.testing.assert_array_equal(y[0, 0], 0)
  with pytest.raises(ImageFileError, match="transparent"):
    io.load_image(tmp_path / "rgba16.png", alpha="error")


def test_bad_alpha_argument():
  with pytest.raises(InvalidInputError, match="alpha"):
    io.load_image(SAMPLE, alpha="black")


# JPEG.


def test_jpeg_round_trip(tmp_path):
  x = smooth_image()
  io.save_image(tmp_path / "s.jpg", x)
  io.save_image(tmp_path / "s.JPEG", x, jpeg_quality=50)
  with Image.open(tmp_path / "s.jpg") as im:
    assert im.format == "JPEG"
  y = io.load_image(tmp_path / "s.jpg")
  assert y.shape == x.shape and y.dtype == np.float32
  psnr = 10 * np.log10(1 / np.mean((y - x)**2))
  assert psnr > 35
  assert 25 < 10 * np.log10(1 / np.mean((io.load_image(tmp_path / "s.JPEG") - x)**2)) < psnr


def test_jpeg_grayscale_and_cmyk(tmp_path):
  g = (smooth_image()[..., 0] * 255).astype(np.uint8)
  Image.fromarray(g).save(tmp_path / "g.jpg")
  y = io.load_image(tmp_path / "g.jpg")
  assert y.shape == g.shape + (3,)
  np.testing.assert_array_equal(y[..., 0], y[..., 2])
  Image.fromarray((smooth_image() * 255).astype(np.uint8)).convert("CMYK").save(tmp_path / "c.jpg")
  assert io.load_image(tmp_path / "c.jpg").shape == (48, 64, 3)


def test_sample_image_loads():
  y = io.load_image(SAMPLE)
  assert y.shape == (512, 768, 3) and y.dtype == np.float32
  assert 0 <= y.min() and y.max() <= 1


# Bad files: one ImageFileError naming the path and the problem.


def assert_file_error(path, match):
  with pytest.raises(ImageFileError, match=match) as info:
    io.load_image(path)
  assert str(path) in str(info.value)
  assert isinstance(info.value, GIError) and isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
  assert_file_error(tmp_path / "nope.png", "no such file")


def test_directory(tmp_path):
  assert_file_error(tmp_path, "directory")


def test_corrupt_and_empty_files(tmp_path):
  (tmp_path / "junk.png").write_bytes(np.random.default_rng(8).bytes(500))
  assert_file_error(tmp_path / "junk.png", "not a PNG or JPEG")
  (tmp_path / "empty.png").write_bytes(b"")
  assert_file_error(tmp_path / "empty.png", "not a PNG or JPEG")
  # A valid signature and header followed by garbage.
  good = (tmp_path / "good.png")
  io.save_image(good, random_image())
  data = good.read_bytes()
  (tmp_path / "bad.png").write_bytes(data[:60] + b"\x00" * 200 + data[260:])
  assert_file_error(tmp_path / "bad.png", "corrupt")


@pytest.mark.parametrize("name,bits", [("t.png", 8), ("t16.png", 16), ("t.jpg", 8)])
def test_truncated_files(tmp_path, name, bits):
  path = tmp_path / name
  io.save_image(path, random_image(64, 64, seed=9), bits=bits)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  assert_file_error(path, "truncated")


@pytest.mark.parametrize("fmt,ext", [("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tif")])
def test_unsupported_formats(tmp_path, fmt, ext):
  path = tmp_path / f"x.{ext}"
  Image.fromarray((random_image() * 255).astype(np.uint8)).save(path, format=fmt)
  assert_file_error(path, f"unsupported format {fmt}")
  # The content decides, not the name.
  os.rename(path, tmp_path / "x.png")
  assert_file_error(tmp_path / "x.png", f"unsupported format {fmt}")


# save_image refusals and atomicity.


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_save_refuses_nan_and_inf(tmp_path, bad):
  x = random_image()
  x[3, 4, 1] = bad
  with pytest.raises(InvalidInputError, match="NaN or infinite"):
    io.save_image(tmp_path / "n.png", x)
  assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kwargs,match", [
    (dict(path="a.bmp", image=np.zeros((2, 2, 3))), r"\.png, \.jpg or \.jpeg"),
    (dict(path="a.png", image=np.zeros((2, 2))), "shape"),
    (dict(path="a.png", image=np.zeros((2, 2, 5))), "shape"),
    (dict(path="a.png", image=np.zeros((0, 2, 3))), "shape"),
    (dict(path="a.png", image=np.zeros((2, 2, 3), np.uint8)), "dtype"),
    (dict(path="a.png", image=np.zeros((2, 2, 3)), bits=12), "bits"),
    (dict(path="a.jpg", image=np.zeros((2, 2, 3)), bits=16), "16 bits"),
])
def test_save_refuses_bad_arguments(tmp_path, kwargs, match):
  kwargs["path"] = tmp_path / kwargs["path"]
  with pytest.raises(InvalidInputError, match=match):
    io.save_image(**kwargs)
  assert leftovers(tmp_path) == []


def test_save_creates_parent_folders(tmp_path):
  path = tmp_path / "a" / "b" / "c.png"
  io.save_image(path, random_image())
  assert path.is_file() and leftovers(path.parent) == ["c.png"]


def test_save_onto_directory_fails(tmp_path):
  (tmp_path / "d.png").mkdir()
  with pytest.raises(ImageFileError, match="directory"):
    io.save_image(tmp_path / "d.png", random_image())


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
  path = tmp_path / "out.png"
  io.save_image(path, random_image(seed=10))
  before = path.read_bytes()

  def broken_save(self, fp, *args, **kwargs):
    fp.write(b"\x89PNG partial")  # something half-written, then a failure
    raise RuntimeError("disk on fire")

  monkeypatch.setattr(Image.Image, "save", broken_save)
  with pytest.raises(RuntimeError, match="disk on fire"):
    io.save_image(path, random_image(seed=11))
  assert path.read_bytes() == before
  with pytest.raises(RuntimeError):
    io.save_image(tmp_path / "new.png", random_image())
  assert leftovers(tmp_path) == ["out.png"]


def test_os_error_while_writing_is_image_file_error(tmp_path, monkeypatch):
  def full_disk(self, fp, *args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(Image.Image, "save", full_disk)
  with pytest.raises(ImageFileError, match="No space left"):
    io.save_image(tmp_path / "f.png", random_image())
  assert leftovers(tmp_path) == []


def test_overwrite_replaces_content(tmp_path):
  path = tmp_path / "o.png"
  io.save_image(path, np.zeros((3, 3, 3)))
  io.save_image(path, np.ones((3, 3, 3)))
  np.testing.assert_array_equal(io.load_image(path), 1)
  assert leftovers(tmp_path) == ["o.png"]


def _png_header_only(path, width, height, bit_depth):
  """A PNG signature and IHDR chunk claiming a size, and no pixel data."""
  import struct
  import zlib
  ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
  chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
  chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk)


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_huge_size_is_refused_from_the_header(tmp_path, bit_depth):
  # A file of a few bytes claiming 12000x12000 pixels: refused by its header, whatever decodes it
  # (16-bit PNGs bypass Pillow's own decompression-bomb check).
  path = tmp_path / "bomb.png"
  _png_header_only(path, 12000, 12000, bit_depth)
  with pytest.raises(ImageTooLargeError, match="144,000,000 pixels"):
    io.load_image(path)


@pytest.mark.parametrize("kind", ["png8", "png16", "jpeg"])
def test_max_pixels_is_checked_before_decoding(tmp_path, monkeypatch, kind):
  path = tmp_path / ("a.jpg" if kind == "jpeg" else "a.png")
  if kind == "png16":
    write_png16(path, np.zeros((32, 48, 3), np.uint16))
  else:
    io.save_image(path, random_image(32, 48))
  def no_decoding(*args):
    raise AssertionError("pixels decoded")
  monkeypatch.setattr(io, "_load_png16", no_decoding)
  monkeypatch.setattr(io, "_load_pillow", no_decoding)
  with pytest.raises(ImageTooLargeError, match="48x32"):
    io.load_image(path, max_pixels=32 * 48 - 1)
  monkeypatch.undo()
  assert io.load_image(path, max_pixels=32 * 48).shape == (32, 48, 3)
  assert io.load_image(path, max_pixels=None).shape == (32, 48, 3)
  for bad in (0, -5, 2.5, True):
    with pytest.raises(InvalidInputError, match="max_pixels"):
      io.load_image(path, max_pixels=bad)


def test_the_bundled_sample_is_kodim23():
  path = io.sample_image_path()
  assert os.path.basename(path) == "kodim23.png"
  assert io.load_image(path).shape == (512, 768, 3)
