"""The ``.gimg`` container: header fields, flags, size limits and CRC around the model block and
the payload; :func:`encode` and :func:`decode_quantized`.

``docs/file_format.md`` specifies the layout. The decoder checks the magic, version and CRC before
parsing and bounds every size before allocating; every failure is a
:class:`~gi_jax.errors.CodecError`.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

from gi_jax.codec.bitio import BitReader, BitWriter, ByteReader, f32_bytes, u32, varint
from gi_jax.codec.format.codebooks import (MAX_CODEWORD_FRACTION, codebook_fields,
                                           codebooks_in_fixed_point, holds_float16,
                                           read_fixed_point_codebooks)
from gi_jax.codec.format.entropy import StreamModel, fit_stream_model
from gi_jax.codec.format.payload import (decode_payload, encode_payload, payload_bytes,
                                         payload_words)
from gi_jax.codec.format.prediction import PREDICTOR_SIZE, predicted_if_shorter, unpredict
from gi_jax.codec.format.streams import (COLOR_COLUMN, COV_COLUMN, Layout, alphabets,
                                         canonical_order, canonicalize, color_alphabets,
                                         from_streams, halve_positions, on_even_cells,
                                         stream_symbols, table_streams, to_streams, wide_rule)
from gi_jax.codec.positions import MAX_POSITION_CELLS, check_wide_sigma
from gi_jax.codec.quantize import QuantizedGaussians
from gi_jax.codec.rvq import MAX_CODEWORD_INT
from gi_jax.errors import CodecError
from gi_jax.gaussians import PARAMETERIZATIONS

MAGIC = b"GIMG"
VERSION = 1
FLAG_RS = 1
FLAG_BITS_BACK = 2
FLAG_POSITION_GRID = 4
FLAG_COV_PREDICTION = 8
FLAG_UNIFORM_COLORS = 16
FLAG_COLOR_PREDICTION = 32  # with FLAG_UNIFORM_COLORS only
FLAG_FIXED_POINT_CODEBOOKS = 64  # without FLAG_UNIFORM_COLORS only
FLAG_WIDE_POSITIONS = 128  # with FLAG_POSITION_GRID only
MAX_GAUSSIANS = 1 << 22
MAX_SIDE = 1 << 15
MAX_PIXELS = 1 << 26
MAX_INTERSECTIONS = 1 << 27
# The colour channel count C rides in the high nibble of the header's stages byte (whose values,
# stages 1-4 or colour bits 1-8, fit the low nibble): 0 there means 3, so RGB files, the only kind
# before channel counts, keep every byte; other C from 1 to 15 are written as themselves.
MAX_CHANNELS = 15
_CHANNEL_SHIFT = 4
CRC_BYTES = 4
# Padding symbols every payload ends in, at least (§7). An ANS stack has no end of its own: popped
# empty, it yields the lowest symbols and stays empty, so a payload cut short (or empty) would
# decode to a full table. The first symbol the encoder pushes, a pad byte, leaves the stack
# non-empty, so the decoder pops it last from exactly its value, and a payload that ran out
# early pops a wrong pad instead. It costs one byte a file.
MIN_PAD = 1
# magic, version, flags, 4 one-byte varints, 3 config bytes, 6 floats, models_length, crc: a
# lower bound of any file's length (codebooks come on top).
_MIN_FILE = 4 + 1 + 1 + 4 + 3 + 24 + 1 + CRC_BYTES


class Header(NamedTuple):
  """What the header of a file says."""
  height: int
  width: int
  num_gaussians: int
  parameterization: str
  bits_back: bool
  cov_bits: int
  stages: int          # colour streams: RVQ stages, or C with uniform colours
  codebook_size: int   # colour alphabet: codewords per stage, or 2**color_bits
  pad: int
  position_cells: tuple[int, int] | None  # grid positions; None: float16
  cov_predictor: np.ndarray | None  # [5] (a10, b1, a20, a21, b2) float16 values; None: none
  header_bytes: int    # bytes before the payload
  payload_bytes: int   # ANS payload bytes
  color_bits: int = 0  # bits per uniform colour code; 0: residual VQ (stages, codebook_size)
  color_predictor: np.ndarray | None = None  # [5] like cov_predictor, for uniform colour codes
  fixed_point_codebooks: bool = False  # codewords in fixed point (else float16, or none)
  version: int = VERSION  # the format version (the only one there is)
  wide_sigma: float = 0.0  # > 0: Gaussians this wide (px) sit on even grid cells
  channels: int = 3    # C, colour channels per Gaussian


def _channel_code(channels: int) -> int:
  """The high nibble of the stages byte for ``channels`` colour channels."""
  return 0 if channels == 3 else channels << _CHANNEL_SHIFT


def check_format_limits(height: int, width: int, num_gaussians: int | None = None) -> None:
  """Raises CodecError unless a file can hold an image of this size (and this many Gaussians).

  The encoder calls it before fitting, so an impossible request fails at once, not after the fit.
  """
  for name, value in (("height", height), ("width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
        1 <= value <= MAX_SIDE):
      raise CodecError(f"{name} must be an integer in [1, {MAX_SIDE}], got {value!r}")
  if height * width > MAX_PIXELS:
    raise CodecError(f"{height}×{width} exceeds the format's {MAX_PIXELS} pixels")
  if num_gaussians is not None and not 1 <= num_gaussians <= MAX_GAUSSIANS:
    raise CodecError(f"a file holds 1 to {MAX_GAUSSIANS} Gaussians, asked for {num_gaussians}")


def _check_encodable(q: QuantizedGaussians, height: int, width: int) -> QuantizedGaussians:
  """Checks a set against the format (on its values as given); returns it as NumPy arrays."""
  if q.parameterization not in PARAMETERIZATIONS:
    raise CodecError(f"unknown parameterization {q.parameterization!r}")
  color_bits = q.color_bits
  if not (isinstance(color_bits, (int, np.integer)) and 0 <= color_bits <= 8):
    raise CodecError(f"color_bits must be an integer in [0, 8], got {color_bits!r}")
  side_fields = q.side_fields
  if any(getattr(q, name) is None for name in side_fields):
    raise CodecError(f"a quantized set with color_bits={color_bits} needs "
                     f"{', '.join(side_fields)}")
  arrays = {name: np.asarray(getattr(q, name))
            for name in ("position_codes", "cov_codes", "color_indices") + side_fields}
  if arrays["position_codes"].ndim != 2:
    raise CodecError(f"position_codes must be [N, 2], got {arrays['position_codes'].shape}")
  n = arrays["position_codes"].shape[0]
  check_format_limits(height, width, n)
  if color_bits:
    channels = arrays["color_scale"].shape[-1] if arrays["color_scale"].ndim == 1 else 0
    stages, k = channels, 1 << color_bits
    colors_ok = arrays["color_scale"].shape == arrays["color_offset"].shape == (channels,)
  else:
    codebooks = arrays["codebooks"]
    stages, k, channels = (codebooks.shape if codebooks.ndim == 3 else (0, 0, 0))
    colors_ok = 1 <= stages <= 4 and 2 <= k <= 256
  if not 1 <= channels <= MAX_CHANNELS:
    raise CodecError(f"a file holds 1 to {MAX_CHANNELS} colour channels, the set has {channels}")
  if not (isinstance(q.cov_bits, (int, np.integer)) and 1 <= q.cov_bits <= 8 and colors_ok and
          arrays["cov_scale"].shape == (3,) and arrays["cov_offset"].shape == (3,) and
          arrays["cov_codes"].shape == (n, 3) and arrays["color_indices"].shape == (n, stages)):
    raise CodecError("inconsistent quantized set: shapes or settings outside the format")
  for name in ("position_codes", "cov_codes", "color_indices"):
    if not np.issubdtype(arrays[name].dtype, np.integer):
      raise CodecError(f"{name} must hold integers, got {arrays[name].dtype}")
  side = np.concatenate([arrays[name].reshape(-1) for name in side_fields])
  if not np.isfinite(side).all():
    raise CodecError("side information (quantizer scales, offsets or codebooks) is not finite")
  if not color_bits and not holds_float16(arrays["codebooks"]) and (
      codebooks_in_fixed_point(arrays["codebooks"]) is None):
    raise CodecError(f"codebooks must hold float16 values or multiples of 2**-e (e <= "
                     f"{MAX_CODEWORD_FRACTION}, at most {MAX_CODEWORD_INT} steps from 0), as "
                     "to_quantized makes them")
  if ((arrays["cov_codes"] < 0) | (arrays["cov_codes"] >= (1 << q.cov_bits))).any() or (
      (arrays["color_indices"] < 0) | (arrays["color_indices"] >= k)).any() or (
      (arrays["position_codes"] < 0) | (arrays["position_codes"] > 0xFFFF)).any():
    raise CodecError("a symbol lies outside its alphabet")
  cells = q.position_cells
  if cells is None:
    if ((arrays["position_codes"] & 0x7C00) == 0x7C00).any():
      raise CodecError("a float16 position is infinite or NaN")
  else:
    if not (len(cells) == 2 and all(isinstance(c, (int, np.integer)) and
                                    1 <= c <= MAX_POSITION_CELLS for c in cells)):
      raise CodecError(f"position grid {cells} outside [1, {MAX_POSITION_CELLS}] cells per side")
    if (arrays["position_codes"] >= np.asarray(cells)).any():
      raise CodecError("a grid position code lies outside its grid")
  check_wide_sigma(q.wide_sigma, cells is not None, CodecError)
  return q.to_numpy()


def encode(q: QuantizedGaussians, height: int, width: int, *, bits_back: bool = True) -> bytes:
  """Writes a quantized set as a ``.gimg`` file.

  Args:
    q: the symbols (e.g. ``finetune(...).quantized``).
    height: image height in pixels.
    width: image width in pixels.
    bits_back: code the Gaussians' order with bits-back (saves about log2(N!) bits).

  Returns:
    The file's bytes; its rate is ``8·len(data)/(height·width)`` bits per pixel.

  Raises:
    CodecError: the set or size cannot be written in this format.
  """
  q = _check_encodable(q, height, width)
  if q.wide_sigma:
    q = on_even_cells(q)
  q = canonicalize(q)
  table, cov_predictor = predicted_if_shorter(to_streams(q), q.cov_bits, COV_COLUMN)
  color_predictor = None
  if q.color_bits and q.num_channels == 3:  # the colour predictor is for a triple
    table, color_predictor = predicted_if_shorter(table, q.color_bits, COLOR_COLUMN)
  return _write(q, table, height, width, bits_back, cov_predictor, color_predictor)


def _write(q: QuantizedGaussians, table: np.ndarray, height: int, width: int, bits_back: bool,
           predictor: np.ndarray | None, color_predictor: np.ndarray | None) -> bytes:
  """The file of a canonical set whose stream table is ``table``, with the residuals of the
  predictions given (None: that triple is sent plain)."""
  n = q.num_gaussians
  fixed_point = None
  channels = q.num_channels
  if q.color_bits:
    stages, k = q.color_bits, 1  # the header's colour bytes read "color_bits, 0" (the layout)
    colors = f32_bytes(q.color_scale) + f32_bytes(q.color_offset) + (
        b"" if color_predictor is None else np.asarray(color_predictor, "<f2").tobytes())
    streams = color_alphabets(0, 0, q.color_bits, color_predictor is not None, channels)
  else:
    stages, k = q.codebooks.shape[:2]
    colors, fixed_point = codebook_fields(q.codebooks)
    streams = color_alphabets(stages, k)
  rule = wide_rule(dict(
      wide_sigma=q.wide_sigma, cov_bits=q.cov_bits, cov_scale=q.cov_scale,
      cov_offset=q.cov_offset, parameterization=q.parameterization), predictor)
  stream_alphabets = alphabets(q.cov_bits, streams, predictor is not None)
  wide = None
  if rule is not None:
    wide = rule(table)
    table = halve_positions(table, wide)
  models = [fit_stream_model(stream_symbols(table, s, wide), stream_alphabets[s[0]])
            for s in table_streams(table.shape[1], wide is not None)]
  layout = Layout.of(models, table.shape[1], rule)
  bits = BitWriter() if fixed_point is None else fixed_point
  for model in models:
    model.write(bits)
  model_bytes = bits.to_bytes()
  flags = ((FLAG_RS if q.parameterization == "rs" else 0) | (FLAG_BITS_BACK if bits_back else 0) |
           (FLAG_POSITION_GRID if q.position_cells is not None else 0) |
           (FLAG_COV_PREDICTION if predictor is not None else 0) |
           (FLAG_UNIFORM_COLORS if q.color_bits else 0) |
           (FLAG_COLOR_PREDICTION if color_predictor is not None else 0) |
           (FLAG_FIXED_POINT_CODEBOOKS if fixed_point is not None else 0) |
           (FLAG_WIDE_POSITIONS if rule is not None else 0))
  grid = b"" if q.position_cells is None else b"".join(varint(c - 1) for c in q.position_cells)
  if rule is not None:
    grid += bytes([round(8 * q.wide_sigma)])
  side = f32_bytes(q.cov_scale) + f32_bytes(q.cov_offset) + (
      b"" if predictor is None else np.asarray(predictor, "<f2").tobytes())
  pad = MIN_PAD
  while True:
    head = b"".join([
        MAGIC, bytes([VERSION, flags]), varint(height), varint(width), varint(n), varint(pad),
        grid, bytes([q.cov_bits, stages | _channel_code(channels), k - 1]), side, colors,
        varint(len(model_bytes)),
        model_bytes])
    payload = payload_bytes(encode_payload(table, layout, bits_back, pad))
    body = head + payload
    data = body + u32(zlib.crc32(body))
    # The decoder bounds N by the file length (>= 1 bit per Gaussian); a set that compresses
    # below that (say, all Gaussians equal) is padded with bytes at the bottom of the stack.
    if 8 * len(data) >= n:
      return data
    if pad > n // 8 + 8:  # each pad symbol adds 8 bits, so this cannot happen
      raise CodecError("internal error: padding does not lengthen the payload")
    pad += max(1, -(-(n - 8 * len(data)) // 8))


def _check_size_fields(height, width, n, pad, length):
  if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
    raise CodecError(f"image size {height}×{width} outside [1, {MAX_SIDE}]")
  if height * width > MAX_PIXELS:
    raise CodecError(f"image size {height}×{width} above the limit of {MAX_PIXELS} pixels")
  if not 1 <= n <= min(MAX_GAUSSIANS, 8 * length):
    raise CodecError(f"the header claims {n} Gaussians; a {length}-byte file holds 1 to "
                     f"{min(MAX_GAUSSIANS, 8 * length)}")
  if pad < MIN_PAD:
    raise CodecError(f"corrupt header: {pad} padding symbols; a payload ends in at least "
                     f"{MIN_PAD}, its end marker")
  if pad > n // 8 + 16:
    raise CodecError(f"corrupt header: {pad} bytes of padding for {n} Gaussians")


def read_header(data: bytes) -> tuple[Header, dict, list[StreamModel], np.ndarray]:
  """Validates and parses a file up to its payload.

  Args:
    data: a ``.gimg`` file.

  Returns:
    ``(header, side, models, payload words)``: ``side`` holds the side-information fields of
    :class:`QuantizedGaussians`.

  Raises:
    CodecError: wrong magic or version, truncated, corrupted, or a size outside the limits.
  """
  header, side, layout, words = read_file(data)
  return header, side, layout.models, words


def read_file(data: bytes) -> tuple[Header, dict, Layout, np.ndarray]:
  """:func:`read_header` with the models in the layout the payload is coded in."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise CodecError(f"decode needs bytes, got {type(data).__name__}")
  data = bytes(data)
  if data[:4] != MAGIC:
    if len(data) < 4 and MAGIC.startswith(data):
      raise CodecError(f"truncated file: {len(data)} bytes")
    raise CodecError(f"not a GaussianImage file: starts with {data[:4]!r}, expected {MAGIC!r}")
  if len(data) < 5:
    raise CodecError(f"truncated file: {len(data)} bytes")
  if data[4] != VERSION:
    raise CodecError(f"unsupported format version {data[4]} (this decoder reads version "
                     f"{VERSION})")
  if len(data) < _MIN_FILE:
    raise CodecError(f"truncated file: {len(data)} bytes, a valid one has at least {_MIN_FILE}")
  body, crc = data[:-CRC_BYTES], int.from_bytes(data[-CRC_BYTES:], "little")
  if zlib.crc32(body) != crc:
    raise CodecError("corrupted or truncated file: checksum mismatch")

  r = ByteReader(body)
  r.take(5)
  flags = r.u8()
  if (flags & FLAG_COLOR_PREDICTION and not flags & FLAG_UNIFORM_COLORS) or (
      flags & FLAG_FIXED_POINT_CODEBOOKS and flags & FLAG_UNIFORM_COLORS) or (
      flags & FLAG_WIDE_POSITIONS and not flags & FLAG_POSITION_GRID):
    raise CodecError(f"corrupt header: inconsistent flags {flags:#04x}")
  height = r.varint(MAX_SIDE, "height")
  width = r.varint(MAX_SIDE, "width")
  n = r.varint(MAX_GAUSSIANS, "the number of Gaussians")
  pad = r.varint(MAX_GAUSSIANS, "padding")
  _check_size_fields(height, width, n, pad, len(data))
  cells = None
  if flags & FLAG_POSITION_GRID:
    cells = tuple(r.varint(MAX_POSITION_CELLS - 1, "the position grid") + 1 for _ in range(2))
  wide_sigma = 0.0
  if flags & FLAG_WIDE_POSITIONS:
    wide_sigma = r.u8() / 8
    if not wide_sigma:
      raise CodecError("corrupt header: wide positions with a threshold of 0 pixels")
  cov_bits, stages, k = r.u8(), r.u8(), r.u8() + 1
  channel_code, stages = stages >> _CHANNEL_SHIFT, stages & ((1 << _CHANNEL_SHIFT) - 1)
  if channel_code == 3:  # RGB is written as 0, so each file has one spelling
    raise CodecError("corrupt header: 3 colour channels written as a channel count")
  channels = channel_code or 3
  if flags & FLAG_COLOR_PREDICTION and channels != 3:
    raise CodecError(f"corrupt header: colour prediction with {channels} colour channels")
  color_bits = stages if flags & FLAG_UNIFORM_COLORS else 0
  if not (1 <= cov_bits <= 8 and ((1 <= color_bits <= 8 and k == 1) if color_bits else
                                  (1 <= stages <= 4 and k >= 2))):
    raise CodecError(f"corrupt header: cov_bits={cov_bits}, colour bytes {stages}, {k - 1}")
  side = dict(cov_scale=r.f32(3), cov_offset=r.f32(3))
  predictor = _read_predictor(r, flags & FLAG_COV_PREDICTION, "covariance")
  color_predictor = None
  if color_bits:
    side.update(codebooks=None, color_scale=r.f32(channels), color_offset=r.f32(channels))
    color_predictor = _read_predictor(r, flags & FLAG_COLOR_PREDICTION, "colour")
    streams = color_alphabets(0, 0, color_bits, color_predictor is not None, channels)
  else:
    if not flags & FLAG_FIXED_POINT_CODEBOOKS:  # else they open the model block
      codebooks = np.frombuffer(r.take(2 * stages * k * channels), "<f2").astype(np.float32)
      side.update(codebooks=codebooks.reshape(stages, k, channels))
    streams = color_alphabets(stages, k)
  side.update(cov_bits=cov_bits, position_cells=cells, color_bits=color_bits,
              parameterization="rs" if flags & FLAG_RS else "cholesky", wide_sigma=wide_sigma)
  for name in ("cov_scale", "cov_offset", "codebooks", "color_scale", "color_offset"):
    if side.get(name) is not None and not np.isfinite(side[name]).all():
      raise CodecError(f"corrupt header: {name} is not finite")
  model_length = r.varint(r.remaining(), "the model block length")
  bits = BitReader(r.take(model_length), "model block")
  if flags & FLAG_FIXED_POINT_CODEBOOKS:
    side.update(codebooks=read_fixed_point_codebooks(bits, stages, k, channels))
  stream_alphabets = alphabets(cov_bits, streams, predictor is not None)
  models = [StreamModel.read(bits, stream_alphabets[column])
            for column, _ in table_streams(len(stream_alphabets), bool(wide_sigma))]
  bits.check_padding()
  header_bytes = r.pos
  payload = r.take(r.remaining())
  if color_bits:
    stages, k = channels, 1 << color_bits
  header = Header(height, width, n, side["parameterization"], bool(flags & FLAG_BITS_BACK),
                  cov_bits, stages, k, pad, cells, predictor, header_bytes, len(payload),
                  color_bits, color_predictor, bool(flags & FLAG_FIXED_POINT_CODEBOOKS),
                  VERSION, wide_sigma, channels)
  layout = Layout.of(models, len(stream_alphabets), wide_rule(side, predictor))
  return header, side, layout, payload_words(payload)


def _read_predictor(r: ByteReader, present: int, what: str) -> np.ndarray | None:
  if not present:
    return None
  coef = np.frombuffer(r.take(2 * PREDICTOR_SIZE), "<f2").astype(np.float32)
  if not np.isfinite(coef).all():
    raise CodecError(f"corrupt header: the {what} predictor is not finite")
  return coef


def decode_table(data: bytes) -> tuple[Header, dict, Layout, np.ndarray, np.ndarray | None]:
  """A file's header, side information, layout, stream table as coded (wide Gaussians' positions
  halved, predicted codes as residuals; transmission order) and which Gaussians are wide (None:
  no wide positions)."""
  header, side, layout, words = read_file(data)
  table = decode_payload(words, layout, header.num_gaussians, header.bits_back, header.pad)
  return header, side, layout, table, None if layout.wide is None else layout.wide(table)


def decode_quantized(data: bytes) -> tuple[QuantizedGaussians, Header]:
  """Parses and entropy-decodes a file into its quantized set (canonical order); renders nothing.

  Args:
    data: a ``.gimg`` file.

  Returns:
    ``(quantized set, header)``.

  Raises:
    CodecError: for any malformed input (see :func:`read_header`), a payload that does not decode
      exactly, or values that are not finite.
  """
  header, side, layout, table, wide = decode_table(data)
  if wide is not None:
    table = halve_positions(table, wide, halve=False)
  if header.cov_predictor is not None:
    table = unpredict(table, header.cov_predictor, header.cov_bits, COV_COLUMN)
  if header.color_predictor is not None:
    table = unpredict(table, header.color_predictor, header.color_bits, COLOR_COLUMN)
  q = from_streams(table, side)
  if header.position_cells is None:
    if ((q.position_codes & 0x7C00) == 0x7C00).any():
      raise CodecError("corrupt payload: a position is infinite or NaN")
  elif (q.position_codes >= np.asarray(header.position_cells)).any():
    raise CodecError("corrupt payload: a position lies outside the grid")
  # Bits-back files list the Gaussians in the order the stack chose; canonical order makes the
  # result (and the image's summation order) independent of how the file was coded.
  return q.permute(canonical_order(table)), header
