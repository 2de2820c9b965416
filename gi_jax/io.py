"""Reading and writing images as float32 arrays [H, W, C] in [0, 1].

PNG (8 and 16 bits per channel) and JPEG are read; every failure (missing file, directory, corrupt
or truncated data, another format) is one :class:`~gi_jax.errors.ImageFileError` that names the path
and the problem. By default (``channels=3``) grayscale and palette images are expanded to RGB and
transparent images are composited on white (or refused with ``alpha="error"``); ``channels=None``
keeps what the file has (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA), ``channels=1`` and ``4`` convert
to grayscale or RGBA. Pillow reduces 16-bit RGB PNGs to 8 bits, so those are
read with pypng to keep their full precision.

Writing quantizes to 8 bits (PNG or JPEG) or 16 bits (PNG) and is atomic: the file appears complete
or not at all. :func:`quantize_8bit` gives, without a file, exactly what an 8-bit PNG reads back as,
so metrics can be taken on what is written to disk. :func:`sample_image_path` names the image that
ships with the package, for examples, tests and default runs.

Example::

  from gi_jax import io

  target = io.load_image("kodim23.png")         # float32 [512, 768, 3]
  io.save_image("out/render.png", rendered)     # 8-bit PNG, parent folders created
  on_disk = io.quantize_8bit(rendered)          # == io.load_image("out/render.png")
"""

import os
import secrets
import struct
import warnings
import zlib
from importlib import resources

import numpy as np
import jax
import jax.numpy as jnp
import png  # pypng
from PIL import Image, UnidentifiedImageError

from gi_jax.errors import ImageFileError, ImageTooLargeError, InvalidInputError, GIError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Offset of the bit-depth byte in a PNG: signature (8), IHDR length (4) and type (4), width and
# height (4 each). IHDR must be the first chunk, so this byte is always there in a valid PNG.
_PNG_BIT_DEPTH_OFFSET = 24
_READ_FORMATS = ("PNG", "JPEG")
# load_image's default size limit: Pillow's decompression-bomb threshold (about 89 million pixels),
# applied to every format from the header, 16-bit PNGs (decoded by pypng) included.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
_ALPHA_MODES = ("white", "error")
# load_image's channel choices (None: what the file has).
CHANNELS = (None, 1, 3, 4)
# ITU-R BT.601 luma, Pillow's own RGB → L weights, for channels=1.
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)
# The channel counts save_image writes, with the Pillow mode an 8-bit file gets.
_MODES_8BIT = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
# float32(k) / float32(255), the values load_image gives an 8-bit sample k.
_LEVELS_8BIT = np.arange(256, dtype=np.float32) / np.float32(255)
# What the decoders raise on damaged data; ImageFileError (a ValueError) is re-raised before these.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error,
                  png.Error)


def sample_image_path() -> str:
  """The bundled sample image: Kodak kodim23, a 768×512 8-bit PNG shipped as package data.

  Returns:
    Its path, for :func:`load_image`.
  """
  return str(resources.files("gi_jax") / "data" / "kodim23.png")


def _fail(path, problem: str) -> ImageFileError:
  return ImageFileError(f"cannot read image {path!r}: {problem}")


def _read_header(path: str) -> bytes:
  """The first bytes of the file, after checking it is a readable regular file."""
  if not os.path.lexists(path):
    raise _fail(path, "no such file")
  if os.path.isdir(path):
    raise _fail(path, "it is a directory, not an image file")
  try:
    with open(path, "rb") as f:
      return f.read(_PNG_BIT_DEPTH_OFFSET + 1)
  except OSError as e:
    raise _fail(path, e.strerror or str(e)) from e


def _image_size(path: str, header: bytes) -> tuple[int, int]:
  """(width, height) from the file's header, without decoding any pixel."""
  if header.startswith(_PNG_SIGNATURE) and header[12:16] == b"IHDR" and len(header) >= 24:
    return struct.unpack(">II", header[16:24])
  with warnings.catch_warnings():
    # Pillow's own bomb check warns or raises on open; the limit here is load_image's.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    with Image.open(path) as im:
      return im.size


def _check_pixels(path: str, header: bytes, max_pixels: int | None) -> None:
  """Refuses an image over ``max_pixels`` from its header, before its pixels are decoded."""
  if max_pixels is None:
    return
  try:
    width, height = _image_size(path, header)
  except (UnidentifiedImageError, *_DECODE_ERRORS):
    return  # unreadable headers are reported by the decoder, with its reason
  if width * height > max_pixels:
    raise ImageTooLargeError(
        f"cannot read image {path!r}: {width}x{height} is {width * height:,} pixels, over the "
        f"limit of {max_pixels:,} (load_image's max_pixels; a guard against decompression bombs)")


def _load_png16(path: str):
  """A 16-bit PNG with pypng: (colour [H, W, 1 or 3], alpha [H, W] or None), floats in [0, 1]."""
  with open(path, "rb") as f:
    # asDirect expands palettes and tRNS colour keys to an alpha plane, so every PNG ends up as
    # grey / grey+alpha / RGB / RGBA with one sample per plane.
    width, height, rows, info = png.Reader(file=f).asDirect()
    planes = info["planes"]
    data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])  # rows are lazy: read here
  if data.shape != (height, width * planes):
    raise ValueError(f"decoded {data.shape[0]} rows of {data.shape[1]} samples, "
                     f"expected {height} of {width * planes}")
  # sBIT can make asDirect rescale to fewer bits; the reported bit depth is what the samples use.
  maximum = np.float32(2**info["bitdepth"] - 1)
  data = data.reshape(height, width, planes).astype(np.float32) / maximum
  if info["alpha"]:
    return data[..., :-1], data[..., -1]
  return data, None


def _load_pillow(path: str):
  """A PNG or JPEG with Pillow: (colour [H, W, 1 or 3], alpha [H, W] or None) in [0, 1]."""
  with Image.open(path) as im:
    if im.format not in _READ_FORMATS:
      raise _fail(path, f"unsupported format {im.format}; gi_jax reads PNG and JPEG")
    im.load()  # decodes now, so a truncated file fails here rather than later
    mode = im.mode
    if mode == "1":
      im, mode = im.convert("L"), "L"
    elif mode in ("P", "PA") or (mode in ("L", "RGB") and "transparency" in im.info):
      # Palette entries (and tRNS colour keys) may carry transparency; RGBA keeps it.
      has_alpha = mode == "PA" or "transparency" in im.info
      mode = "RGBA" if has_alpha else "RGB"
      im = im.convert(mode)
    elif mode in ("CMYK", "YCbCr", "RGBX"):
      im, mode = im.convert("RGB"), "RGB"
    if mode in ("L", "LA", "RGB", "RGBA"):
      data = np.asarray(im, dtype=np.uint8).astype(np.float32) / np.float32(255)
    elif mode in ("I;16", "I;16B", "I;16L"):
      data = np.asarray(im).astype(np.float32) / np.float32(65535)
    else:
      raise _fail(path, f"unsupported image mode {mode!r}")
  if data.ndim == 2:
    data = data[..., None]
  if mode in ("LA", "RGBA"):
    return data[..., :-1], data[..., -1]
  return data, None


def load_image(path, alpha: str = "white", max_pixels: int | None = MAX_PIXELS, *,
               channels: int | None = 3) -> np.ndarray:
  """Reads a PNG or JPEG file as a float32 array [H, W, C] in [0, 1].

  8-bit files map to ``value / 255`` and 16-bit PNGs to ``value / 65535`` (full precision).
  Palette images are expanded. EXIF orientation is not applied: pixels come in stored order, as in
  the reference code.

  Example::

    image = load_image("kodim23.png")            # float32 [512, 768, 3]
    image = load_image("logo.png", alpha="error")  # refuse transparent images
    gray = load_image("scan.png", channels=None)   # [H, W, 1] for a grayscale file
    rgba = load_image("logo.png", channels=4)      # alpha kept as a fourth channel

  Args:
    path: the file (str or os.PathLike). The format is read from the content, not the name.
    alpha: what to do with transparent pixels (RGBA, LA, or a palette with transparency) where
      the alpha is not kept (``channels`` 1 or 3): ``"white"`` composites them on a white
      background; ``"error"`` raises. A fully opaque alpha channel is dropped either way.
    max_pixels: the largest width × height read, checked from the file's header before any pixel
      is decoded (a small file can claim a huge image); the default, :data:`MAX_PIXELS`, is
      Pillow's decompression-bomb limit; ``None`` reads any size Pillow opens.
    channels: ``3`` (default): RGB, grayscale repeated over the three channels. ``None``: what
      the file has: 1 (grayscale), 2 (grayscale + alpha), 3 (RGB) or 4 (RGBA), alpha kept as it
      is even where opaque. ``1``: grayscale (RGB by BT.601 luma, Pillow's weights). ``4``: RGBA
      (grayscale repeated, alpha 1 where the file has none), alpha not composited.

  Returns:
    A float32 array [H, W, C] with values in [0, 1], finite.

  Raises:
    ImageFileError: the file is missing, a directory, unreadable, corrupt or truncated, not PNG or
      JPEG, of an unsupported mode, or (``alpha="error"``) transparent.
    ImageTooLargeError: the header gives more than ``max_pixels`` pixels.
    InvalidInputError: ``alpha`` is not one of "white", "error", ``max_pixels`` not a positive
      integer or None, or ``channels`` not one of None, 1, 3, 4.
  """
  if alpha not in _ALPHA_MODES:
    raise InvalidInputError(f"alpha must be one of {_ALPHA_MODES}, got {alpha!r}")
  if isinstance(channels, bool) or channels not in CHANNELS:
    raise InvalidInputError(f"channels must be one of {CHANNELS}, got {channels!r}")
  if max_pixels is not None and (isinstance(max_pixels, bool) or
                                   not isinstance(max_pixels, int) or max_pixels < 1):
    raise InvalidInputError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
  path = os.fspath(path)
  header = _read_header(path)
  _check_pixels(path, header, max_pixels)
  is_png16 = (header.startswith(_PNG_SIGNATURE) and header[12:16] == b"IHDR" and
              len(header) > _PNG_BIT_DEPTH_OFFSET and header[_PNG_BIT_DEPTH_OFFSET] == 16)
  try:
    colour, opacity = _load_png16(path) if is_png16 else _load_pillow(path)
  except GIError:
    raise
  except Image.DecompressionBombError as e:
    raise ImageTooLargeError(f"cannot read image {path!r}: {e}") from e
  except UnidentifiedImageError as e:
    raise _fail(path, "not a PNG or JPEG image (unrecognised or corrupt data)") from e
  except _DECODE_ERRORS as e:
    kind = "16-bit PNG" if is_png16 else "image"
    detail = str(e)
    if not detail.startswith(type(e).__name__):  # pypng's messages already name their class
      detail = f"{type(e).__name__}: {detail}"
    raise _fail(path, f"corrupt or truncated {kind} data ({detail})") from e

  if colour.shape[0] == 0 or colour.shape[1] == 0:
    raise _fail(path, f"empty image ({colour.shape[1]}x{colour.shape[0]})")
  if channels is None:
    planes = colour if opacity is None else np.concatenate([colour, opacity[..., None]], -1)
    return _finite(path, planes)
  if channels == 4:
    colour = np.repeat(colour, 3, axis=-1) if colour.shape[-1] == 1 else colour
    opacity = np.ones(colour.shape[:-1], np.float32) if opacity is None else opacity
    return _finite(path, np.concatenate([colour, opacity[..., None]], -1))
  if colour.shape[-1] == 1 and channels == 3:
    colour = np.repeat(colour, 3, axis=-1)
  if opacity is not None and (opacity < 1).any():
    if alpha == "error":
      raise _fail(path, f"{int((opacity < 1).sum())} pixels are transparent (alpha < 1); "
                  "pass alpha='white' to composite them on white")
    a = opacity[..., None]
    # The clip only absorbs a last-ulp overshoot of c·a + (1 − a) above 1.
    colour = np.clip(colour * a + (1 - a), 0, 1)
  if channels == 1 and colour.shape[-1] == 3:
    colour = np.clip(colour @ _LUMA, 0, 1)[..., None]
  return _finite(path, colour)


def _finite(path: str, image: np.ndarray) -> np.ndarray:
  image = np.ascontiguousarray(image, dtype=np.float32)
  if not np.isfinite(image).all():  # cannot happen from integer samples; guards the contract
    raise _fail(path, "decoded to NaN or infinite values")
  return image


def quantize_8bit(image):
  """The image exactly as an 8-bit file of it reads back: ``round(clip(x, 0, 1)·255) / 255``.

  Uses the same float32 arithmetic as :func:`save_image` and :func:`load_image`, so
  ``quantize_8bit(x) == load_image(p)`` bit for bit after ``save_image(p, x)`` to PNG. Rounding is
  half to even. A JAX array (also inside ``jit``) gives a JAX array; anything else a NumPy array.

  Args:
    image: float image of any shape, e.g. [H, W, 3].

  Returns:
    A float32 array of the same shape, each value a multiple of 1/255 in [0, 1].
  """
  if isinstance(image, jax.Array):
    x = jnp.clip(image.astype(jnp.float32), 0, 1)
    levels = jnp.round(x * jnp.float32(255)).astype(jnp.int32)
    # A table rather than `/ 255`: XLA's float32 division is not always correctly rounded (on CPU it
    # is 1 ulp off for many levels), and the contract is bit equality with what load_image returns.
    return jnp.asarray(_LEVELS_8BIT)[levels]
  x = np.clip(np.asarray(image).astype(np.float32), 0, 1)
  return np.round(x * np.float32(255)) / np.float32(255)


# Rows save_image converts at a time: its float temporaries are a block's, not a whole image's
# (four of them would be 48 bytes a pixel, four times the image itself).
_BLOCK_ROWS = 64


def _row_blocks(image: np.ndarray):
  return (image[start:start + _BLOCK_ROWS] for start in range(0, image.shape[0], _BLOCK_ROWS))


def _quantize(image: np.ndarray, bits: int) -> np.ndarray:
  """Clipped, rounded integer samples; float32 arithmetic shared with quantize_8bit."""
  samples = np.empty(image.shape, np.uint8 if bits == 8 else np.uint16)
  scale = np.float32(255 if bits == 8 else 65535)
  for start, block in zip(range(0, image.shape[0], _BLOCK_ROWS), _row_blocks(image)):
    x = np.clip(block.astype(np.float32), 0, 1)
    samples[start:start + _BLOCK_ROWS] = np.round(x * scale)   # whole numbers: exact casts
  return samples


def _check_image(image) -> np.ndarray:
  """A NumPy float array [H, W, C] (C in 1-4) with no NaN or infinity, or InvalidInputError."""
  image = np.asarray(image)
  if (image.ndim != 3 or image.shape[-1] not in _MODES_8BIT or image.shape[0] < 1 or
      image.shape[1] < 1):
    raise InvalidInputError("save_image expects an image [H, W, C] with C = 1 (grayscale), 2 "
                            f"(grayscale + alpha), 3 (RGB) or 4 (RGBA), got shape {image.shape}")
  if not np.issubdtype(image.dtype, np.floating):
    raise InvalidInputError(
        f"save_image expects floats in [0, 1], got dtype {image.dtype} (scale integers first)")
  if not all(np.isfinite(block).all() for block in _row_blocks(image)):
    bad = sum(int((~np.isfinite(block)).sum()) for block in _row_blocks(image))
    raise InvalidInputError(f"save_image: image contains {bad} NaN or infinite values")
  return image


def save_image(path, image, bits: int = 8, *, jpeg_quality: int = 95) -> None:
  """Writes a float image [H, W, C] as an 8-bit PNG or JPEG, or a 16-bit PNG, atomically.

  C is 1 (grayscale), 2 (grayscale + alpha), 3 (RGB) or 4 (RGBA); JPEG holds 1 or 3, and
  ``load_image(path, channels=None)`` reads back the channels written.

  Values are clipped to [0, 1] and rounded (half to even) to ``2**bits − 1`` levels. The file is
  written to a temporary name in the same folder and renamed over ``path``, so a failure leaves
  neither a partial file nor a temporary one (and an existing file at ``path`` stays as it was).
  Missing parent folders are created.

  Example::

    save_image("out/render.png", image)              # 8-bit PNG
    save_image("out/render16.png", image, bits=16)   # 16-bit PNG (via pypng)
    save_image("out/render.jpg", image)              # JPEG, quality 95

  Args:
    path: destination; the extension picks the format: .png, .jpg or .jpeg (any case).
    image: float array [H, W, C] (NumPy or JAX), nominally in [0, 1]; NaN and infinity are refused.
    bits: 8, or 16 for PNG only.
    jpeg_quality: Pillow's JPEG quality (1-95) when writing JPEG.

  Raises:
    InvalidInputError: bad shape, non-float dtype, NaN or infinity, unknown extension, bits not 8
      or 16 (or 16 for JPEG), or an alpha channel for JPEG.
    ImageFileError: the folder cannot be created or the file cannot be written.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext not in _WRITE_FORMATS:
    raise InvalidInputError(f"save_image writes .png, .jpg or .jpeg files, got {path!r}")
  fmt = _WRITE_FORMATS[ext]
  if bits not in (8, 16):
    raise InvalidInputError(f"save_image: bits must be 8 or 16, got {bits!r}")
  if bits == 16 and fmt != "PNG":
    raise InvalidInputError(f"save_image: 16 bits per channel needs a .png file, got {path!r}")
  samples = _quantize(_check_image(image), bits)
  height, width, channels = samples.shape
  if fmt == "JPEG" and channels not in (1, 3):
    raise InvalidInputError(f"save_image: JPEG holds 1 or 3 channels, not {channels}; "
                            f"write {path!r} as .png")

  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise ImageFileError(f"cannot write image {path!r}: it is a directory")
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ImageFileError(f"cannot write image {path!r}: cannot create folder {folder!r} "
                         f"({e.strerror or e})") from e
  # A hidden name in the destination folder: os.replace is atomic only within one file system.
  tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
  try:
    with open(tmp, "xb") as f:
      if bits == 16:
        png.Writer(width=width, height=height, greyscale=channels < 3, alpha=channels in (2, 4),
                   bitdepth=16).write(f, samples.reshape(height, width * channels))
      elif fmt == "PNG":
        Image.fromarray(_pillow_samples(samples)).save(f, format="PNG")
      else:
        Image.fromarray(_pillow_samples(samples)).save(f, format="JPEG", quality=int(jpeg_quality))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    try:
      os.remove(tmp)
    except FileNotFoundError:
      pass
    if isinstance(e, OSError):
      raise ImageFileError(f"cannot write image {path!r}: {e.strerror or e}") from e
    raise


def _pillow_samples(samples: np.ndarray) -> np.ndarray:
  """Pillow makes mode L of an [H, W] array, not of [H, W, 1] (2, 3, 4 channels: LA, RGB, RGBA)."""
  return samples[..., 0] if samples.shape[-1] == 1 else samples
