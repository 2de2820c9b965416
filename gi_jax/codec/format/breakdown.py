"""Where a file's bits go: header, each stream's model and payload, padding, order, CRC; and what
bits-back ordering saves."""

from __future__ import annotations

import math

import numpy as np

from gi_jax.codec.format.container import CRC_BYTES, Header, decode_table, encode
from gi_jax.codec.format.entropy import model_bits, payload_bits
from gi_jax.codec.format.streams import stream_symbols, to_streams
from gi_jax.codec.quantize import QuantizedGaussians


def bits_per_pixel(num_bytes: int, height: int, width: int) -> float:
  """The rate of a file: ``8·bytes / (H·W)``."""
  return 8.0 * num_bytes / (height * width)


def log2_factorial(n: int) -> float:
  """log2(n!), the information in the order of n distinct items."""
  return math.lgamma(n + 1) / math.log(2)


def bits_back_report(q: QuantizedGaussians, height: int, width: int,
                     encoded: bytes | None = None) -> dict:
  """Encodes ``q`` with and without bits-back and reports the saving against the bounds.

  Args:
    q: the quantized set.
    height: image height in pixels.
    width: image width in pixels.
    encoded: ``encode(q, height, width)`` (with bits-back) where the caller has it already.

  Returns:
    A dict: ``bytes_with``, ``bytes_without``, ``saved_bits`` (measured, ``8·Δbytes``),
    ``bound_bits`` (log2(N!)), ``multiset_bound_bits`` (log2 of N! over the multiplicities'
    factorials: the most a set with repeated Gaussians can give back).
  """
  with_ = encode(q, height, width, bits_back=True) if encoded is None else encoded
  without = encode(q, height, width, bits_back=False)
  table = to_streams(q)
  _, counts = np.unique(table, axis=0, return_counts=True)
  n = q.num_gaussians
  return dict(bytes_with=len(with_), bytes_without=len(without),
              saved_bits=8 * (len(without) - len(with_)), bound_bits=log2_factorial(n),
              multiset_bound_bits=log2_factorial(n) - sum(log2_factorial(int(c)) for c in counts))


def stream_names(header: Header) -> list[str]:
  """Names of a file's symbol streams, in the model block's order (``…_residual``: sent as a
  residual from the prediction; ``…_wide``: the wide Gaussians' positions)."""
  cov = ["cov0", "cov1", "cov2"]
  if header.cov_predictor is not None:
    cov[1:] = [c + "_residual" for c in cov[1:]]
  colors = [f"color{i}" for i in range(header.stages)]
  if header.color_predictor is not None:
    colors[1:] = [c + "_residual" for c in colors[1:]]
  positions = ["x_hi", "x_lo", "y_hi", "y_lo"]
  wide = [p + "_wide" for p in positions] if header.wide_sigma else []
  return positions + cov + colors + wide


def rate_breakdown(data: bytes) -> dict:
  """Where a file's bits go, read from the file alone (it is entropy-decoded, not rendered).

  The file's length splits exactly into: ``header_bits`` (fixed fields, quantizer side
  information, codebooks), each stream's ``model_bits`` (its histogram in the model block) and
  ``payload_bits`` (ideal code length −Σ log2 p of its symbols under that model, which ANS reaches
  to a few bits per file), ``pad_bits``, ``order_bits`` (the payload written less those ideal
  lengths: minus what bits-back ordering gave back, plus the coder's few bits of overhead) and the
  CRC's 32 bits.

  Args:
    data: a ``.gimg`` file.

  Returns:
    A dict: ``height``, ``width``, ``num_gaussians``, ``version``, ``bits_back``, ``bytes``,
    ``bpp``, ``header_bits``, ``streams`` (a list of ``{"name", "model_bits", "payload_bits"}``,
    names from :func:`stream_names`), ``pad_bits``, ``order_bits``, ``order_bound_bits``
    (−log2(N!): the most bits-back can give back), ``crc_bits``.

  Raises:
    CodecError: as :func:`~gi_jax.codec.format.container.decode_quantized`.

  Example::

    info = rate_breakdown(open("photo.gimg", "rb").read())
    {s["name"]: s["payload_bits"] / info["num_gaussians"] for s in info["streams"]}
  """
  header, _, layout, table, wide = decode_table(data)
  # strict: the names are spelled apart from alphabets(), so a drift between them is an error,
  # not a silently shorter table.
  streams = []
  for name, model, stream in zip(stream_names(header), layout.models, layout.streams, strict=True):
    symbols = stream_symbols(table, stream, wide)
    streams.append(dict(name=name, model_bits=model_bits(model), payload_bits=payload_bits(
        model, np.bincount(symbols, minlength=model.alphabet))))
  pad_bits = 8 * header.pad
  coded = sum(s["payload_bits"] for s in streams) + pad_bits
  return dict(height=header.height, width=header.width, num_gaussians=header.num_gaussians,
              version=header.version, bits_back=header.bits_back, bytes=len(data),
              bpp=bits_per_pixel(len(data), header.height, header.width),
              header_bits=8 * header.header_bytes - sum(s["model_bits"] for s in streams),
              streams=streams, pad_bits=pad_bits, order_bits=8 * header.payload_bytes - coded,
              order_bound_bits=-log2_factorial(header.num_gaussians), crc_bits=8 * CRC_BYTES)
