"""Small bit- and byte-level readers and writers for the file header (all bounds-checked).

Every read past the end, or of a value outside its allowed range, raises
:class:`~gi_jax.errors.CodecError`; no loop runs longer than the data it reads allows.
"""

from __future__ import annotations

import struct

import numpy as np

from gi_jax.errors import CodecError

# Longest Elias-gamma code we accept: values below 2**40.
_MAX_GAMMA_BITS = 40


class BitWriter:
  """Appends bits most-significant first; :meth:`to_bytes` pads the last byte with zeros."""

  def __init__(self):
    self._bits: list[int] = []

  def write(self, value: int, nbits: int) -> None:
    if nbits < 0 or value < 0 or value >> nbits:
      raise ValueError(f"{value} does not fit in {nbits} bits")
    self._bits.extend((value >> i) & 1 for i in range(nbits - 1, -1, -1))

  def gamma(self, value: int) -> None:
    """Elias gamma code of ``value >= 1``: ``len − 1`` zeros, then ``value`` in ``len`` bits."""
    if value < 1:
      raise ValueError(f"Elias gamma codes values >= 1, got {value}")
    n = value.bit_length()
    self.write(0, n - 1)
    self.write(value, n)

  def signed(self, value: int) -> None:
    """A signed integer: zig-zag mapped, then Elias gamma of ``zigzag + 1``."""
    self.gamma((2 * value if value >= 0 else -2 * value - 1) + 1)

  def __len__(self) -> int:
    return len(self._bits)

  def to_bytes(self) -> bytes:
    bits = self._bits + [0] * (-len(self._bits) % 8)
    return np.packbits(np.asarray(bits, np.uint8)).tobytes() if bits else b""


class BitReader:
  """Reads what :class:`BitWriter` wrote."""

  def __init__(self, data: bytes, what: str = "header"):
    # A string of "0"/"1": int(…, 2) and str.find read fields at C speed, where a loop over
    # unpacked bits took half of a small file's decode.
    self._bits = "".join(map("{:08b}".format, data))
    self._pos = 0
    self._what = what

  def read(self, nbits: int) -> int:
    if self._pos + nbits > len(self._bits):
      raise CodecError(f"truncated {self._what}: wanted {nbits} more bits")
    field = self._bits[self._pos:self._pos + nbits]
    self._pos += nbits
    return int(field, 2) if field else 0

  def gamma(self) -> int:
    end = min(len(self._bits), self._pos + _MAX_GAMMA_BITS)
    one = self._bits.find("1", self._pos, end)
    if one < 0:
      if end - self._pos >= _MAX_GAMMA_BITS:
        raise CodecError(f"corrupt {self._what}: integer code longer than {_MAX_GAMMA_BITS} bits")
      raise CodecError(f"truncated {self._what}: unfinished integer code")
    zeros, self._pos = one - self._pos, one
    return self.read(zeros + 1)

  def signed(self) -> int:
    z = self.gamma() - 1
    return z // 2 if z % 2 == 0 else -(z + 1) // 2

  def check_padding(self) -> None:
    """Raises unless only zero padding (< 8 bits) remains."""
    rest = self._bits[self._pos:]
    if len(rest) >= 8 or "1" in rest:
      raise CodecError(f"corrupt {self._what}: unexpected data after its end")


class ByteReader:
  """Sequential little-endian reads from ``bytes`` with bounds checks."""

  def __init__(self, data: bytes, what: str = "file"):
    self.data = data
    self.pos = 0
    self.what = what

  def take(self, n: int) -> bytes:
    if n < 0 or self.pos + n > len(self.data):
      raise CodecError(f"truncated {self.what}: wanted {n} bytes at offset {self.pos}, "
                       f"{len(self.data) - self.pos} left")
    out = self.data[self.pos:self.pos + n]
    self.pos += n
    return out

  def u8(self) -> int:
    return self.take(1)[0]

  def varint(self, limit: int, name: str) -> int:
    """An unsigned LEB128 integer, at most ``limit`` (checked as it is read)."""
    value = shift = 0
    while True:
      byte = self.u8()
      value |= (byte & 0x7F) << shift
      if value > limit:
        raise CodecError(f"{name} is {value} or more, above the limit {limit}")
      if not byte & 0x80:
        return value
      shift += 7
      if shift > 63:
        raise CodecError(f"corrupt {self.what}: {name} runs past 9 bytes")

  def f32(self, count: int) -> np.ndarray:
    return np.frombuffer(self.take(4 * count), "<f4").astype(np.float32)

  def remaining(self) -> int:
    return len(self.data) - self.pos


def varint(value: int) -> bytes:
  """Unsigned LEB128 encoding of ``value >= 0``."""
  if value < 0:
    raise ValueError(f"varint needs a value >= 0, got {value}")
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def f32_bytes(x) -> bytes:
  return np.asarray(x, "<f4").tobytes()


def u32(value: int) -> bytes:
  return struct.pack("<I", value)
