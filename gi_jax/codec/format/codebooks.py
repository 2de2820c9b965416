"""Colour codebooks in the file: float16 in the header, or fixed point where that is shorter.

Codebooks trained on a grid of ``2**-e`` (``QuantizerConfig.codeword_fraction_bits``) are sent as
integers: per stage and channel the smallest and fixed-width offsets from it
(``docs/file_format.md``, "Fixed-point codebooks").
"""

from __future__ import annotations

import numpy as np

from gi_jax.codec.bitio import BitReader, BitWriter
from gi_jax.codec.rvq import MAX_CODEWORD_INT
from gi_jax.errors import CodecError

# The finest grid (every float16 value lies on 2**-24) and the widest field.
MAX_CODEWORD_FRACTION = 24
_MAX_CODEWORD_WIDTH = 26
_WIDTH_BITS = 5


def holds_float16(x: np.ndarray) -> bool:
  """Whether every value of ``x`` survives a round trip through float16."""
  return np.array_equal(np.asarray(x, np.float16).astype(np.float32), x)


def codebooks_in_fixed_point(codebooks: np.ndarray) -> tuple[int, np.ndarray] | None:
  """``(e, ints)`` with ``codebooks == ints·2**-e``, e as small as possible (≤ 24) and every
  ``|int| ≤ 2**24``; None where the codebooks lie on no such grid."""
  c = np.asarray(codebooks, np.float64)
  for e in range(MAX_CODEWORD_FRACTION + 1):
    ints = c * float(1 << e)
    if np.array_equal(ints, np.round(ints)):
      return (e, ints.astype(np.int64)) if np.abs(ints).max() <= MAX_CODEWORD_INT else None
  return None


def write_fixed_point_codebooks(bits: BitWriter, e: int, ints: np.ndarray) -> None:
  """Appends ``ints`` [S, K, C] (codewords ``ints·2**-e``) to ``bits``, each channel of each stage
  as its smallest value and fixed-width offsets from it."""
  bits.gamma(e + 1)
  for column in np.moveaxis(ints, -1, 1).reshape(-1, ints.shape[1]):  # (stage, channel) rows
    lo = int(column.min())
    width = int(column.max() - lo).bit_length()
    bits.signed(lo)
    bits.write(width, _WIDTH_BITS)
    for value in column - lo:
      bits.write(int(value), width)


def read_fixed_point_codebooks(bits: BitReader, stages: int, k: int, channels: int = 3
                               ) -> np.ndarray:
  """The [S, K, C] float32 codebooks :func:`write_fixed_point_codebooks` wrote (C = ``channels``).

  Raises:
    CodecError: a grid finer than ``2**-24``, a field wider than 26 bits or a codeword beyond
      ``±2**24`` steps.
  """
  e = bits.gamma() - 1
  if e > MAX_CODEWORD_FRACTION:
    raise CodecError(f"corrupt header: codewords in steps of 2**-{e}, finer than "
                     f"2**-{MAX_CODEWORD_FRACTION}")
  columns = []
  for _ in range(stages * channels):
    lo = bits.signed()
    width = bits.read(_WIDTH_BITS)
    if width > _MAX_CODEWORD_WIDTH:
      raise CodecError(f"corrupt header: a {width}-bit codeword field")
    column = lo + np.asarray([bits.read(width) for _ in range(k)], np.int64)
    if np.abs(column).max() > MAX_CODEWORD_INT:
      raise CodecError(f"corrupt header: a fixed-point codeword beyond ±{MAX_CODEWORD_INT}")
    columns.append(column)
  ints = np.moveaxis(np.stack(columns).reshape(stages, channels, k), 1, -1)
  return (ints / float(1 << e)).astype(np.float32)


def codebook_fields(codebooks: np.ndarray) -> tuple[bytes, BitWriter | None]:
  """``(header bytes, model-block bits)`` of the codebooks: float16 in the header, or fixed point
  at the start of the model block where that is shorter (or float16 cannot hold them)."""
  half = np.asarray(codebooks, "<f2").tobytes()
  grid = codebooks_in_fixed_point(codebooks)
  if grid is None:
    return half, None
  bits = BitWriter()
  write_fixed_point_codebooks(bits, *grid)
  if holds_float16(codebooks) and len(bits) >= 8 * len(half):
    return half, None
  return b"", bits
