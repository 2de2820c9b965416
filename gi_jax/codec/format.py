"""The ``.gimg`` file: header, side information and an ANS-coded payload, with bits-back ordering.

Layout (version 6; integers little-endian, ``varint`` = unsigned LEB128)::

  magic            4 bytes  b"GIMG"
  version          u8       6 (version 5 is 6 without flag bit 7; version 4 differs from 5 only
                            in the bits-back interleaving, below; version 3 is 4 without flag
                            bit 6, version 2 also without bits 4 and 5, version 1 also without
                            bits 2 and 3; all six are read)
  flags            u8       bit 0: RS parameterisation (else Cholesky); bit 1: bits-back ordering;
                            bit 2: grid positions (else float16); bit 3: covariance prediction;
                            bit 4: uniform colours (else residual VQ); bit 5: colour prediction;
                            bit 6: fixed-point codewords (residual VQ only); bit 7: wide
                            Gaussians on a coarser grid (with bit 2 only)
  height, width    varint   image size in pixels
  N                varint   number of Gaussians
  pad              varint   padding bytes at the bottom of the ANS stack (see below; usually 0)
  cells_x−1, cells_y−1 varint  grid cells per axis minus one (cells: 1 to 65,536); flag bit 2 only
  wide_sigma·8     u8       1 to 255: the wide Gaussians' threshold in eighths of a pixel; flag
                            bit 7 only
  cov_bits         u8       bits per covariance code (6)
  stages           u8       colour RVQ stages S (2); with flag bit 4: bits per colour code
  codebook_size−1  u8       codewords per stage K minus one (7); with flag bit 4: 0
  cov_scale        3 × f32  uniform quantizer steps
  cov_offset       3 × f32  uniform quantizer offsets
  cov_predictor    5 × f16  (a10, b1, a20, a21, b2), only with flag bit 3 (see below)
  codebooks        S×K×3 × f16, absent with flag bit 6; with flag bit 4 instead colour steps and
                   offsets, 2 × 3 × f32
  color_predictor  5 × f16  like cov_predictor, for the three uniform colour codes; flag bit 5 only
  models_length    varint   bytes of the model block
  models           with flag bit 6 first the codebooks in fixed point (below), then the
                   bit-packed entropy models of the 7 + S symbol streams (below; S = 3 with
                   flag bit 4), with flag bit 7 then those of the wide Gaussians' four position
                   streams
  payload          constriction AnsCoder words (``get_compressed()``, u32), the last one without
                   its zero high bytes (at least one byte of it is kept)
  crc32            4 bytes  CRC-32 of everything before it

Each Gaussian is ``7 + S`` symbols: its two 16-bit position codes (x, y), split into high and low
bytes (x_hi, x_lo, y_hi, y_lo), its three covariance codes and its S colour indices. A position code
is the float16 value of the ``means_raw`` coordinate as an integer in value order, or with flag bit
2 its grid cell (the decoder puts the Gaussian at the cell's centre). With flag bit 4 the colour
symbols are the uniform codes of the three colour channels (``code·step + offset``, like the
covariance's) instead of codeword indices. With flag bit 3 the second and third covariance codes are
sent as residuals ``c_i − p_i + L − 1`` (alphabet 2L, L = 2**cov_bits) from linear predictions
``p1 = clip(round(a10·c0 + b1))``, ``p2 = clip(round(a20·c0 + a21·c1 + b2))`` (float64
arithmetic on the float16 coefficients, rounding half to even, clipped to [0, L − 1]): the
Cholesky diagonal entries are strongly correlated, and the encoder keeps the prediction only where
it makes the file shorter.
Flag bit 5 does the same for the three uniform colour codes (a colour's channels move together).
Fixed-point codebooks (flag bit 6) are integers ``i`` with codewords ``i·2**-e``: the Elias-gamma
code of ``e + 1`` (e ≤ 24), then for each stage and channel the zig-zag gamma code of the smallest
``i``, the bit width ``w`` (5 bits, ≤ 26) of the channel's range and its K values less the smallest
in ``w`` bits each (``|i| ≤ 2**24``). The encoder uses them where they are shorter than float16,
which they are for codebooks trained on such a grid (``QuantizerConfig.codeword_fraction_bits``):
at 2**-10 a channel spans 7 to 13 bits, about 11 bits a value with the fields on Kodak, against
float16's 16.
Each stream has one static model, sent in the model block: one bit for "uniform over the alphabet",
or else a histogram over the used range ``[lo, lo + span)``, its weights among 1, 1.5, 2, 3, 4, 6, …
(code ``q``, weight ``(2 + (q−1) mod 2)·2**((q−1) div 2)``, q = 0 for no weight; the first and last
symbol and every symbol that occurs need one) sent as the Elias-gamma code of the first ``q`` and
zig-zag gamma codes of the differences. The encoder chooses the codes for the fewest model and
payload bits together (:func:`_cheapest_codes`), not each count's nearest weight: at a few hundred
symbols, filling a gap or smoothing a wiggle saves more in the model than it costs in the payload.
A stream with a single value costs nothing in the payload. The encoder picks, per stream,
whichever of uniform and histogram is shorter. Weights are integers, so encoder and decoder build
identical models.

Wide Gaussians (flag bit 7): a Gaussian whose smaller standard deviation, from its dequantized
covariance codes, is at least ``wide_sigma`` pixels (computed in float64:
:func:`~gi_jax.codec.quantize.wide_gaussians`) lies on an even grid cell; its position codes are
sent halved, as their own four streams with their own models, so each coordinate costs about a bit
less. Each run of Gaussians (below) is then coded covariance first, so the decoder knows which are
wide before it reads positions: the covariance streams, the other Gaussians' positions, the wide
ones' positions, the colours. The encoder moves a wide Gaussian on an odd cell (float32 training
can disagree with the file's rule at the threshold) one cell down.

Bits-back ordering: the Gaussians are a set, and their order carries log2(N!) bits. With the flag
set, the encoder *decodes* from the ANS stack, for each place of the transmission order, a uniform
index among the distinct Gaussians not yet sent (sorted canonically) and encodes the chosen
Gaussians' symbols; the decoder decodes them, ranks each among the distinct Gaussians at or after
its place and *encodes* back those indices, so it returns every borrowed bit. Version 5 does this
in runs of 1, 1, 2, 4, 8, … places (a run's indices, then its Gaussians stream by stream), so the
decoder works in O(log N) vectorised steps; version 4 and earlier, one place at a time. Without
the flag, the Gaussians are coded stream by stream in canonical order. Either way the decoder
returns them in canonical order (lexicographic in the symbols), so both modes decode to the same
arrays and the same image bits.

Robustness: the decoder checks the magic, version and CRC before parsing and bounds every size
before allocating: ``N <= 8·len(file)`` (the encoder guarantees it by padding, so decoding work is
O(L log² L) in the file's length L: about 1.5 µs per Gaussian on one CPU core, 10 µs in a version-4
file), N ≤ 2**22, sides ≤ 2**15, pixels ≤ 2**26 and intersections ≤ 2**27. It rejects non-finite
values and checks that the payload is used up exactly. Every failure is a
:class:`~gi_jax.errors.CodecError`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import zlib
from typing import Callable, NamedTuple

import constriction
import numpy as np
import sortedcontainers

from gi_jax.codec.bitio import BitReader, BitWriter, ByteReader, f32_bytes, u32, varint
from gi_jax.codec.quantize import (MAX_CODEWORD_INT, MAX_POSITION_CELLS, QuantizedGaussians,
                                   check_wide_sigma, wide_gaussians)
from gi_jax.errors import CodecError
from gi_jax.gaussians import PARAMETERIZATIONS

MAGIC = b"GIMG"
VERSION = 6
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
FLAG_RS = 1
FLAG_BITS_BACK = 2
FLAG_POSITION_GRID = 4  # version 2 on
FLAG_COV_PREDICTION = 8  # version 2 on
FLAG_UNIFORM_COLORS = 16  # version 3 on
FLAG_COLOR_PREDICTION = 32  # version 3 on, with FLAG_UNIFORM_COLORS only
FLAG_FIXED_POINT_CODEBOOKS = 64  # version 4 on, without FLAG_UNIFORM_COLORS
FLAG_WIDE_POSITIONS = 128  # version 6 on, with FLAG_POSITION_GRID only
_KNOWN_FLAGS = {1: FLAG_RS | FLAG_BITS_BACK}
_KNOWN_FLAGS[2] = _KNOWN_FLAGS[1] | FLAG_POSITION_GRID | FLAG_COV_PREDICTION
_KNOWN_FLAGS[3] = _KNOWN_FLAGS[2] | FLAG_UNIFORM_COLORS | FLAG_COLOR_PREDICTION
_KNOWN_FLAGS[4] = _KNOWN_FLAGS[3] | FLAG_FIXED_POINT_CODEBOOKS
_KNOWN_FLAGS[5] = _KNOWN_FLAGS[4]  # version 5 changes only the bits-back interleaving
_KNOWN_FLAGS[6] = _KNOWN_FLAGS[5] | FLAG_WIDE_POSITIONS
# Fixed-point codebooks: the finest grid (every float16 value lies on 2**-24) and the widest field.
_MAX_CODEWORD_FRACTION = 24
_MAX_CODEWORD_WIDTH = 26
_WIDTH_BITS = 5
# First columns of the stream table's predictable code triples (see to_streams).
COV_COLUMN = 4
COLOR_COLUMN = 7
_PREDICTOR_SIZE = 5
MAX_GAUSSIANS = 1 << 22
MAX_SIDE = 1 << 15
MAX_PIXELS = 1 << 26
MAX_INTERSECTIONS = 1 << 27
_CRC_BYTES = 4
# magic, version, flags, 4 one-byte varints, 3 config bytes, 6 floats, models_length, crc: a
# lower bound of any file's length (codebooks come on top).
_MIN_FILE = 4 + 1 + 1 + 4 + 3 + 24 + 1 + _CRC_BYTES
_Q_MAX = 62
# Padding symbols (Uniform(256)); not 0, which an empty ANS coder absorbs without growing.
_PAD_MODEL_SIZE = 256
_PAD_SYMBOL = 0x5A

_PAIRWISE_BLOCK = 32  # see _smaller_after
_ans = constriction.stream.stack
_models = constriction.stream.model


def _weights(q: np.ndarray) -> np.ndarray:
  """Integer model weights of histogram codes ``q`` (0: absent), as float64."""
  q = np.asarray(q, np.int64)
  w = np.where(q > 0, (2 + (q - 1) % 2) << np.maximum((q - 1) // 2, 0), 0)
  return w.astype(np.float64)


_LOG_LEVELS = np.log2(_weights(np.arange(1, _Q_MAX + 1)) / 2)  # log2 of 1, 1.5, 2, 3, 4, 6, …


def _histogram_codes(counts: np.ndarray) -> np.ndarray:
  """Each count rounded (in log scale) to the nearest representable weight; 0 stays 0."""
  counts = np.asarray(counts, np.float64)
  logs = np.log2(np.maximum(counts, 1))[:, None]
  q = 1 + np.argmin(np.abs(logs - _LOG_LEVELS[None, :]), axis=1)
  return np.where(counts > 0, q, 0)


def _gamma_bits(value: np.ndarray) -> np.ndarray:
  """Length of the Elias-gamma code of each ``value >= 1`` (:meth:`BitWriter.gamma`)."""
  return 2 * np.floor(np.log2(value)) + 1


_CODES = np.arange(_Q_MAX + 1)
_CODE_WEIGHTS = _weights(_CODES)
_CODE_LOG_WEIGHTS = np.log2(np.maximum(_CODE_WEIGHTS, 1))
_FIRST_CODE_BITS = np.where(_CODES > 0, _gamma_bits(np.maximum(_CODES, 1)), np.inf)
_STEP = _CODES[None, :] - _CODES[:, None]  # [previous code, code]
_STEP_BITS = _gamma_bits(np.where(_STEP >= 0, 2 * _STEP, -2 * _STEP - 1) + 1)  # BitWriter.signed
_MAX_CODE_ROUNDS = 16


def _histogram_bits(codes: np.ndarray, counts: np.ndarray) -> float:
  """Bits of a histogram's codes in the model block (less the ``lo``/``span`` fields) plus the
  payload's ideal code length under them; inf where a used symbol has no weight."""
  if (_CODE_WEIGHTS[codes][counts > 0] == 0).any():
    return math.inf
  model = _FIRST_CODE_BITS[codes[0]] + _STEP_BITS[codes[:-1], codes[1:]].sum()
  return float(model + _payload_bits(StreamModel(len(codes), 0, codes), counts))


def _cheapest_codes(counts: np.ndarray) -> np.ndarray:
  """Histogram codes for ``counts`` (first and last > 0) costing the fewest model and payload bits.

  Rounding each count to its nearest weight ignores what the codes cost to send: at a few hundred
  symbols a lone gap or a wiggle costs more in the model's difference codes than it saves in the
  payload. The total is ``Σ step bits + Σ −c_i·log2 w_i + n·log2 Σ w``; with the last term bounded
  by its tangent at the current ``Σ w`` it is a chain, minimised exactly by dynamic programming over
  the 63 codes. Repeating that from the nearest rounding never increases the total (majorise-
  minimise) and stops within a few rounds; the result is never worse than the nearest rounding.
  """
  counts = np.asarray(counts, np.float64)
  best = _histogram_codes(counts)
  best_bits = _histogram_bits(best, counts)
  # Codes above the nearest rounding's largest only scale every weight up, so they are left out.
  codes_in_use = min(_Q_MAX, int(best.max()) + 2) + 1
  weights, step_bits = _CODE_WEIGHTS[:codes_in_use], _STEP_BITS[:codes_in_use, :codes_in_use]
  payload = -counts[:, None] * _CODE_LOG_WEIGHTS[None, :codes_in_use]
  payload[(counts > 0)[:, None] & (weights[None, :] == 0)] = np.inf  # a used symbol needs weight
  payload[-1, 0] = np.inf
  for _ in range(_MAX_CODE_ROUNDS):
    slope = counts.sum() / (_CODE_WEIGHTS[best].sum() * math.log(2))
    unary = payload + slope * weights[None, :]
    cost = _FIRST_CODE_BITS[:codes_in_use] + unary[0]
    choices = np.empty((len(counts), codes_in_use), np.int64)
    for i in range(1, len(counts)):
      total = cost[:, None] + step_bits
      choices[i] = np.argmin(total, axis=0)
      cost = total[choices[i], _CODES[:codes_in_use]] + unary[i]
    codes = np.empty(len(counts), np.int64)
    codes[-1] = np.argmin(cost)
    for i in range(len(counts) - 1, 0, -1):
      codes[i - 1] = choices[i, codes[i]]
    bits = _histogram_bits(codes, counts)
    if not bits < best_bits - 1e-9:
      break
    best, best_bits = codes, bits
  return best


@dataclasses.dataclass(frozen=True)
class StreamModel:
  """The static entropy model of one symbol stream.

  Attributes:
    alphabet: number of possible symbols (>= 2).
    lo: smallest symbol that can occur.
    codes: histogram codes over ``[lo, lo + len(codes))``; None means uniform over the alphabet.
  """
  alphabet: int
  lo: int = 0
  codes: np.ndarray | None = None

  @property
  def span(self) -> int:
    return self.alphabet if self.codes is None else len(self.codes)

  def coder_model(self):
    """constriction model of ``symbol − lo``, or None when the stream is constant (span 1)."""
    if self.span == 1:
      return None
    if self.codes is None:
      return _models.Uniform(self.alphabet)
    return _models.Categorical(_weights(self.codes), perfect=False)

  def write(self, bits: BitWriter) -> None:
    nbits = (self.alphabet - 1).bit_length()
    if self.codes is None:
      bits.write(0, 1)
      return
    bits.write(1, 1)
    bits.write(self.lo, nbits)
    bits.write(self.span - 1, nbits)
    if self.span > 1:
      bits.gamma(int(self.codes[0]))
      for prev, cur in zip(self.codes[:-1], self.codes[1:]):
        bits.signed(int(cur) - int(prev))

  @classmethod
  def read(cls, bits: BitReader, alphabet: int) -> StreamModel:
    nbits = (alphabet - 1).bit_length()
    if not bits.read(1):
      return cls(alphabet)
    lo = bits.read(nbits)
    span = bits.read(nbits) + 1
    if lo + span > alphabet:
      raise CodecError(f"corrupt model: symbols [{lo}, {lo + span}) outside the alphabet "
                       f"of {alphabet}")
    if span == 1:
      return cls(alphabet, lo, np.ones(1, np.int64))
    codes = [bits.gamma()]
    for _ in range(span - 1):
      codes.append(codes[-1] + bits.signed())
      if not 0 <= codes[-1] <= _Q_MAX:
        raise CodecError(f"corrupt model: histogram code {codes[-1]} outside [0, {_Q_MAX}]")
    if not 1 <= codes[0] <= _Q_MAX or codes[-1] < 1:
      raise CodecError("corrupt model: a histogram must start and end with a used symbol")
    return cls(alphabet, lo, np.asarray(codes, np.int64))


def fit_stream_model(symbols: np.ndarray, alphabet: int) -> StreamModel:
  """The cheaper of a uniform and a histogram model for ``symbols`` (model bits included)."""
  return stream_model_and_bits(symbols, alphabet)[0]


def stream_model_and_bits(symbols: np.ndarray, alphabet: int) -> tuple[StreamModel, float]:
  """:func:`fit_stream_model` and the bits the stream then costs: its model's plus the payload's
  (ideal code lengths, which ANS reaches to a few bits per file)."""
  if not len(symbols):  # (the wide or narrow Gaussians' positions, where there are none)
    return StreamModel(alphabet), 1.0
  counts = np.bincount(symbols, minlength=alphabet).astype(np.float64)
  used = np.flatnonzero(counts)
  lo, hi = int(used[0]), int(used[-1])
  if lo == hi:
    model = StreamModel(alphabet, lo, np.ones(1, np.int64))
    return model, _model_bits(model)
  model = StreamModel(alphabet, lo, _cheapest_codes(counts[lo:hi + 1]))
  histogram = _model_bits(model) + _payload_bits(model, counts)
  uniform = len(symbols) * math.log2(alphabet) + 1
  if histogram < uniform:
    return model, float(histogram)
  return StreamModel(alphabet), uniform


def _payload_bits(model: StreamModel, counts: np.ndarray) -> float:
  """Ideal code length (−Σ log2 p) under ``model`` of a stream with symbol ``counts`` (over the
  alphabet), which ANS reaches to a few bits per file."""
  counts = np.asarray(counts, np.float64)
  if model.span == 1:
    return 0.0
  if model.codes is None:
    return float(counts.sum() * math.log2(model.alphabet))
  w = _weights(model.codes)
  used = counts[model.lo:model.lo + model.span]
  present = used > 0
  return float(-np.sum(used[present] * np.log2(w[present] / w.sum())))


def _model_bits(model: StreamModel) -> float:
  """Bits the model takes in the model block."""
  bits = BitWriter()
  model.write(bits)
  return float(len(bits))


# -- codebooks ------------------------------------------------------------------------------------

def _holds_float16(x: np.ndarray) -> bool:
  """Whether every value of ``x`` survives a round trip through float16."""
  return np.array_equal(np.asarray(x, np.float16).astype(np.float32), x)


def codebooks_in_fixed_point(codebooks: np.ndarray) -> tuple[int, np.ndarray] | None:
  """``(e, ints)`` with ``codebooks == ints·2**-e``, e as small as possible (≤ 24) and every
  ``|int| ≤ 2**24``; None where the codebooks lie on no such grid."""
  c = np.asarray(codebooks, np.float64)
  for e in range(_MAX_CODEWORD_FRACTION + 1):
    ints = c * float(1 << e)
    if np.array_equal(ints, np.round(ints)):
      return (e, ints.astype(np.int64)) if np.abs(ints).max() <= MAX_CODEWORD_INT else None
  return None


def write_fixed_point_codebooks(bits: BitWriter, e: int, ints: np.ndarray) -> None:
  """Appends ``ints`` [S, K, 3] (codewords ``ints·2**-e``) to ``bits``, each channel of each stage
  as its smallest value and fixed-width offsets from it."""
  bits.gamma(e + 1)
  for column in np.moveaxis(ints, -1, 1).reshape(-1, ints.shape[1]):  # (stage, channel) rows
    lo = int(column.min())
    width = int(column.max() - lo).bit_length()
    bits.signed(lo)
    bits.write(width, _WIDTH_BITS)
    for value in column - lo:
      bits.write(int(value), width)


def read_fixed_point_codebooks(bits: BitReader, stages: int, k: int) -> np.ndarray:
  """The [S, K, 3] float32 codebooks :func:`write_fixed_point_codebooks` wrote."""
  e = bits.gamma() - 1
  if e > _MAX_CODEWORD_FRACTION:
    raise CodecError(f"corrupt header: codewords in steps of 2**-{e}, finer than "
                     f"2**-{_MAX_CODEWORD_FRACTION}")
  columns = []
  for _ in range(stages * 3):
    lo = bits.signed()
    width = bits.read(_WIDTH_BITS)
    if width > _MAX_CODEWORD_WIDTH:
      raise CodecError(f"corrupt header: a {width}-bit codeword field")
    column = lo + np.asarray([bits.read(width) for _ in range(k)], np.int64)
    if np.abs(column).max() > MAX_CODEWORD_INT:
      raise CodecError(f"corrupt header: a fixed-point codeword beyond ±{MAX_CODEWORD_INT}")
    columns.append(column)
  ints = np.moveaxis(np.stack(columns).reshape(stages, 3, k), 1, -1)
  return (ints / float(1 << e)).astype(np.float32)


# -- symbols <-> streams ---------------------------------------------------------------------------

def _triple_alphabets(bits: int, predicted: bool) -> list[int]:
  """A code triple's alphabets: the last two are prediction residuals (twice as many) if
  ``predicted``."""
  return [1 << bits] + [(2 if predicted else 1) << bits] * 2


def color_alphabets(stages: int, codebook_size: int, color_bits: int = 0,
                    predicted: bool = False) -> list[int]:
  """Alphabet size of each colour stream: S codeword indices, or 3 uniform codes."""
  if color_bits:
    return _triple_alphabets(color_bits, predicted)
  return [codebook_size] * stages


def alphabets(cov_bits: int, colors: list[int], predicted: bool = False) -> list[int]:
  """Alphabet size of each stream: x_hi, x_lo, y_hi, y_lo, 3 covariance codes (the last two as
  prediction residuals if ``predicted``), then the colour streams (:func:`color_alphabets`).
  """
  return [256] * 4 + _triple_alphabets(cov_bits, predicted) + list(colors)


def _prediction(terms, levels: int) -> np.ndarray:
  """``clip(round(Σ a·c + b))`` in float64 from float16-valued ``(a, c)`` pairs and ``b``."""
  *products, offset = terms
  total = sum(float(a) * np.asarray(c, np.float64) for a, c in products) + float(offset)
  return np.clip(np.round(total), 0, levels - 1).astype(np.int64)


def _predict_c1(coef, c0, levels: int) -> np.ndarray:
  return _prediction([(coef[0], c0), coef[1]], levels)


def _predict_c2(coef, c0, c1, levels: int) -> np.ndarray:
  return _prediction([(coef[2], c0), (coef[3], c1), coef[4]], levels)


def fit_predictor(table: np.ndarray, start: int = COV_COLUMN) -> np.ndarray:
  """Least-squares coefficients (a10, b1, a20, a21, b2) of the code triple in columns
  ``start..start+2``, rounded to float16 (kept as float32)."""
  c = np.asarray(table, np.float64)[:, start:start + 3]
  ones = np.ones(len(c))
  a1 = np.linalg.lstsq(np.stack([c[:, 0], ones], 1), c[:, 1], rcond=None)[0]
  a2 = np.linalg.lstsq(np.stack([c[:, 0], c[:, 1], ones], 1), c[:, 2], rcond=None)[0]
  coef = np.concatenate([a1, a2]).astype(np.float16).astype(np.float32)
  return coef if np.isfinite(coef).all() else np.zeros(_PREDICTOR_SIZE, np.float32)


def predict(table: np.ndarray, coef: np.ndarray, bits: int, start: int = COV_COLUMN
            ) -> np.ndarray:
  """The stream table with the codes in columns ``start+1`` and ``start+2`` (of ``bits`` bits)
  replaced by their prediction residuals."""
  levels = 1 << bits
  table = np.array(table, np.int64)
  c0, c1, c2 = start, start + 1, start + 2
  p1 = _predict_c1(coef, table[:, c0], levels)
  p2 = _predict_c2(coef, table[:, c0], table[:, c1], levels)
  table[:, c1] += levels - 1 - p1
  table[:, c2] += levels - 1 - p2
  return table


def unpredict(streams: np.ndarray, coef: np.ndarray, bits: int, start: int = COV_COLUMN
              ) -> np.ndarray:
  """Inverse of :func:`predict`; a code outside ``[0, 2**bits)`` raises CodecError."""
  levels = 1 << bits
  table = np.array(streams, np.int64)
  c0, c1, c2 = start, start + 1, start + 2
  table[:, c1] += _predict_c1(coef, table[:, c0], levels) - (levels - 1)
  table[:, c2] += _predict_c2(coef, table[:, c0], table[:, c1], levels) - (levels - 1)
  if ((table[:, c1:c2 + 1] < 0) | (table[:, c1:c2 + 1] >= levels)).any():
    raise CodecError("corrupt payload: a predicted code lies outside its range")
  return table


def _predicted_if_shorter(table: np.ndarray, bits: int,
                          start: int) -> tuple[np.ndarray, np.ndarray | None]:
  """``(table, predictor)``: the triple's residuals and fitted predictor if those streams and the
  coefficients cost fewer bits than the plain streams; else the table as it is and None."""
  coef = fit_predictor(table, start)
  residuals = predict(table, coef, bits, start)
  cost = lambda t, alphabet: sum(stream_model_and_bits(t[:, c], alphabet)[1]
                                 for c in (start + 1, start + 2))
  if cost(residuals, 2 << bits) + 16 * _PREDICTOR_SIZE < cost(table, 1 << bits):
    return residuals, coef
  return table, None


def _ordered(bits: np.ndarray) -> np.ndarray:
  """float16 bit patterns → integers in the order of the values (negatives below positives).

  Sign-magnitude patterns put +0.5 and −0.5 half the code space apart; in value order the high
  bytes in use form one run, so their histogram is short and smooth.
  """
  bits = bits.astype(np.int64)
  return np.where(bits & 0x8000, ~bits & 0xFFFF, bits | 0x8000)


def _unordered(ordered: np.ndarray) -> np.ndarray:
  ordered = np.asarray(ordered, np.int64)
  return np.where(ordered & 0x8000, ordered & 0x7FFF, ~ordered & 0xFFFF)


def to_streams(q: QuantizedGaussians) -> np.ndarray:
  """[N, 7 + S] int64 symbol table of a quantized set (one column per stream).

  Columns: high and low bytes of each position code (x_hi, x_lo, y_hi, y_lo: grid cells, or
  float16 values in value order), the three covariance codes, the S colour indices (or the three
  uniform colour codes).
  """
  q = q.to_numpy()
  means = q.position_codes.astype(np.int64)
  if q.position_cells is None:
    means = _ordered(means)
  return np.concatenate([
      np.stack([means[:, 0] >> 8, means[:, 0] & 0xFF, means[:, 1] >> 8, means[:, 1] & 0xFF], 1),
      q.cov_codes.astype(np.int64), q.color_indices.astype(np.int64)], axis=1)


def from_streams(table: np.ndarray, side: dict) -> QuantizedGaussians:
  table = np.asarray(table, np.int64)
  means = np.stack([(table[:, 0] << 8) | table[:, 1], (table[:, 2] << 8) | table[:, 3]], 1)
  if side.get("position_cells") is None:
    means = _unordered(means)
  return QuantizedGaussians(means.astype(np.uint16), table[:, 4:7].astype(np.uint8),
                            table[:, 7:].astype(np.uint8), **side)


def _row_keys(rows: np.ndarray, lo: np.ndarray, widths: list[int]) -> np.ndarray | None:
  """Rows of symbols as integers in lexicographic order, each symbol less ``lo`` in its ``widths``
  bits, first column highest; None when they need more than 62 bits."""
  if sum(widths) > 62:
    return None
  shift = np.cumsum(widths[::-1])[::-1] - np.asarray(widths)
  return ((np.asarray(rows, np.int64) - lo) << shift).sum(1)


def canonical_order(table: np.ndarray) -> np.ndarray:
  """Permutation sorting the rows of a symbol table lexicographically (first column first)."""
  table = np.asarray(table, np.int64)
  if not table.size:
    return np.arange(len(table))
  lo = table.min(0)
  keys = _row_keys(table, lo, [int(w).bit_length() for w in table.max(0) - lo])
  if keys is None:
    return np.lexsort(table.T[::-1])
  return np.argsort(keys, kind="stable")  # as lexsort, ties keep their order; 3x faster


def canonicalize(q: QuantizedGaussians) -> QuantizedGaussians:
  """The same set with its Gaussians in canonical order (the order :func:`decode` returns)."""
  q = q.to_numpy()
  return q.permute(canonical_order(to_streams(q)))


# -- wide Gaussians' positions --------------------------------------------------------------------

WideRule = Callable[[np.ndarray], np.ndarray]  # rows of a coded table -> [n] bool: wide ones


def _wide_rule(side: dict, cov_predictor: np.ndarray | None) -> WideRule | None:
  """The file's rule (:func:`~gi_jax.codec.quantize.wide_gaussians` in float64) on rows of a coded
  table, whose covariance columns may hold prediction residuals; None without wide positions."""
  wide_sigma = side.get("wide_sigma", 0.0)
  if not wide_sigma:
    return None

  def wide(rows: np.ndarray) -> np.ndarray:
    cov = np.asarray(rows)[:, COV_COLUMN:COV_COLUMN + 3]
    if cov_predictor is not None:
      cov = unpredict(cov, cov_predictor, side["cov_bits"], start=0)
    return wide_gaussians(cov, side["cov_scale"], side["cov_offset"], side["parameterization"],
                          wide_sigma, xp=np)
  return wide


def _on_even_cells(q: QuantizedGaussians) -> QuantizedGaussians:
  """The set with every wide Gaussian (by the file's rule) on an even grid cell.

  Sets from :func:`~gi_jax.codec.to_quantized` have them there already, but it picks the wide
  Gaussians in float32: at the threshold's edge a Gaussian it kept narrow can be wide here, and
  moves by at most one cell (a quarter pixel at the default grid).
  """
  wide = wide_gaussians(q.cov_codes, q.cov_scale, q.cov_offset, q.parameterization,
                        q.wide_sigma, xp=np)
  codes = np.array(q.position_codes)
  codes[wide] &= np.uint16(0xFFFE)
  return dataclasses.replace(q, position_codes=codes)


def _halve_positions(table: np.ndarray, wide: np.ndarray, halve: bool = True) -> np.ndarray:
  """The table with the wide rows' position codes (split in high and low bytes) halved (their
  even cells' indices on the coarse grid), or with ``halve=False`` doubled back."""
  table = np.array(table, np.int64)
  for hi in (0, 2):
    code = (table[wide, hi] << 8) | table[wide, hi + 1]
    code = code >> 1 if halve else code << 1
    if (code > 0xFFFF).any():  # a corrupt file's; the grid check would see it wrapped
      raise CodecError("corrupt payload: a position lies outside the grid")
    table[wide, hi], table[wide, hi + 1] = code >> 8, code & 0xFF
  return table


# -- payload ---------------------------------------------------------------------------------------

def _bits_back_runs(n: int, doubling: bool) -> list[tuple[int, int]]:
  """``[start, end)`` runs of the transmission order that bits-back coding handles at once.

  Version 5 doubles them (1, 1, 2, 4, … Gaussians), so the decoder makes O(log N) vectorised
  coder calls; each run's indices are decoded from the bits of at least as many Gaussians
  already on the stack, so they still find bits to take. Before version 5: one at a time.
  """
  bounds = [0]
  while bounds[-1] < n:
    bounds.append(min(n, bounds[-1] + (max(1, bounds[-1]) if doubling else 1)))
  return list(zip(bounds[:-1], bounds[1:]))


Stream = tuple[int, bool | None]  # (table column, None: every row / False: narrow / True: wide)


def _streams(num_columns: int, wide: bool) -> list[Stream]:
  """The streams of a table, in the model block's order: each column over every Gaussian; with
  wide positions, the four position columns over the narrow Gaussians in their place and over
  the wide ones after the others."""
  if not wide:
    return [(c, None) for c in range(num_columns)]
  return [(c, False if c < COV_COLUMN else None) for c in range(num_columns)] + [
      (c, True) for c in range(COV_COLUMN)]


def _stream_symbols(rows: np.ndarray, stream: Stream, wide: np.ndarray | None) -> np.ndarray:
  """The symbols of ``stream`` in ``rows`` (``wide``: which of them are wide Gaussians)."""
  column, rows_of = stream
  return rows[:, column] if rows_of is None else rows[wide == rows_of, column]


class _Layout(NamedTuple):
  """How a stream table is coded: one model per stream (:func:`_streams`), in the model block's
  order; a run's streams are popped in ``order``."""
  models: list[StreamModel]
  streams: list[Stream]
  order: list[int]
  wide: WideRule | None

  @classmethod
  def of(cls, models: list[StreamModel], num_columns: int, wide: WideRule | None) -> _Layout:
    """The layout of a table's streams; with ``wide``, the covariance is popped first, since it
    says which Gaussians are wide."""
    streams = _streams(num_columns, wide is not None)
    if wide is None:
      return cls(models, streams, list(range(num_columns)), None)
    positions = list(range(COV_COLUMN))
    order = ([COV_COLUMN, COV_COLUMN + 1, COV_COLUMN + 2] + positions +
             [num_columns + c for c in positions] + list(range(COV_COLUMN + 3, num_columns)))
    return cls(models, streams, order, wide)

  @property
  def num_columns(self) -> int:
    """Columns of the stream table."""
    return max(c for c, _ in self.streams) + 1

  def column_ranges(self) -> tuple[np.ndarray, list[int]]:
    """Each table column's smallest symbol and the bits its symbols less that need."""
    lo, hi = [math.inf] * self.num_columns, [0] * self.num_columns
    for (column, _), model in zip(self.streams, self.models):
      lo[column] = min(lo[column], model.lo)
      hi[column] = max(hi[column], model.lo + model.span)
    return np.asarray(lo, np.int64), [int(h - l - 1).bit_length() for l, h in zip(lo, hi)]


def _encode_payload(table: np.ndarray, layout: _Layout, bits_back: bool,
                    pad: int, doubling: bool = True) -> np.ndarray:
  coder = _ans.AnsCoder()
  if pad:
    coder.encode_reverse(np.full(pad, _PAD_SYMBOL, np.int32), _models.Uniform(_PAD_MODEL_SIZE))
  coder_models = [(m.coder_model(), m.lo) for m in layout.models]

  def push(rows: np.ndarray) -> None:  # the decoder pops them stream by stream
    wide = None if layout.wide is None else layout.wide(rows)
    for i in reversed(layout.order):
      symbols, (model, lo) = _stream_symbols(rows, layout.streams[i], wide), coder_models[i]
      if model is not None and len(symbols):
        coder.encode_reverse((symbols - lo).astype(np.int32), model)

  if not bits_back:
    push(table)
    return coder.get_compressed()
  # Bits-back: choose each next Gaussian by decoding a uniform index over the distinct remaining
  # ones; the decoder returns those bits by encoding the index back (see the module notes).
  rows = [tuple(r) for r in table.tolist()]
  remaining = collections.Counter(rows)
  distinct = sortedcontainers.SortedList(remaining)  # O(log N) index and delete
  for start, end in _bits_back_runs(len(rows), doubling):
    chosen = []
    for _ in range(end - start):
      d = len(distinct)
      j = coder.decode(_models.Uniform(d)) if d >= 2 else 0
      row = distinct[j]
      remaining[row] -= 1
      if not remaining[row]:
        del distinct[j]
      chosen.append(row)
    push(np.asarray(chosen, np.int64))
  return coder.get_compressed()


def _smaller_after(keys: np.ndarray) -> np.ndarray:
  """For each ``i``, how many ``j > i`` have ``keys[j] < keys[i]`` (distinct keys).

  Bottom-up merge sort of the ranks. Blocks of 32 are counted by comparing all their pairs at
  once (cheaper than five merge levels of numpy calls); above that, each level is one vectorised
  stable argsort of blocks made of two sorted halves: a left-half rank has as many smaller ranks
  after it in its block as right-half ranks come before it in the merged block.
  """
  n = len(keys)
  rank = np.empty(n, np.int64)
  rank[np.argsort(keys)] = np.arange(n)
  size = 1 << max(n - 1, 0).bit_length()
  merged = np.concatenate([rank, np.arange(n, size)])  # padding ranks come last, count nothing
  count = np.zeros(size, np.int64)
  half = min(_PAIRWISE_BLOCK, size)
  blocks = merged.reshape(-1, half)
  later = np.triu(np.ones((half, half), bool), 1)
  count[blocks] = ((blocks[:, None, :] < blocks[:, :, None]) & later).sum(2)
  merged = np.sort(blocks, axis=1).ravel()
  while half < size:
    blocks = merged.reshape(-1, 2 * half)
    order = np.argsort(blocks, axis=1, kind="stable")
    blocks = np.take_along_axis(blocks, order, 1)
    from_left = order < half
    count[blocks[from_left]] += np.cumsum(~from_left, axis=1)[from_left]
    merged = blocks.ravel()
    half *= 2
  return count[rank]


class _SuffixRanks:
  """The decoder's side of bits-back: each Gaussian's index among the distinct ones at or after
  it in transmission order, fed runs of the order from the last to the first.

  Rows pack into integer keys in lexicographic order (their symbols less the streams' smallest,
  in as many bits as the spans need) when they fit in 62 bits; runs without repeated Gaussians
  are then ranked with sorts alone. Otherwise (or once a repeat turns up) a sorted set ranks one
  Gaussian at a time.
  """

  def __init__(self, lo: np.ndarray, widths: list[int]):
    self._lo, self._widths = lo, widths
    self._packed = sum(self._widths) <= 62
    self._keys = np.empty(0, np.int64)  # sorted distinct keys, until a sorted set takes over
    self._set = None if self._packed else sortedcontainers.SortedSet()

  def add(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adds a run of rows (in transmission order); returns their ``(indices, set sizes)``."""
    n = len(rows)
    keys = _row_keys(rows, self._lo, self._widths)
    if self._set is None:
      merged = np.sort(np.concatenate([self._keys, keys]))
      if not (merged[1:] == merged[:-1]).any():  # no repeats: ranks by sorting alone
        index = np.searchsorted(self._keys, keys) + _smaller_after(keys)
        self._keys = merged
        return index, len(merged) - np.arange(n)
      self._set = sortedcontainers.SortedSet(self._keys.tolist())
    items = keys.tolist() if self._packed else [tuple(r) for r in rows.tolist()]
    index, size = np.empty(n, np.int64), np.empty(n, np.int64)
    for i in range(n - 1, -1, -1):
      self._set.add(items[i])
      index[i], size[i] = self._set.bisect_left(items[i]), len(self._set)
    return index, size


def _decode_payload(words: np.ndarray, layout: _Layout, n: int, bits_back: bool,
                    pad: int, doubling: bool = True) -> np.ndarray:
  try:
    coder = _ans.AnsCoder(words)
  except Exception as e:  # constriction rejects some word sequences outright
    raise CodecError(f"corrupt payload: {e}") from None
  coder_models = [(m.coder_model(), m.lo) for m in layout.models]
  table = np.zeros((n, layout.num_columns), np.int64)

  def pop(start: int, end: int) -> None:
    rows, wide = table[start:end], None  # a view: assignments below fill the table
    for i in layout.order:
      (column, rows_of), (model, lo) = layout.streams[i], coder_models[i]
      if rows_of is None:
        chosen = slice(None)
      else:
        wide = layout.wide(rows) if wide is None else wide  # the covariance is in by now
        chosen = wide == rows_of
      count = len(rows) if rows_of is None else int(np.count_nonzero(chosen))
      rows[chosen, column] = lo if model is None or not count else (
          coder.decode(model, count).astype(np.int64) + lo)

  # Sorted keys or a sorted set keep bits-back decoding O(N log N): a list's O(N) inserts let a
  # crafted 100 kB file (N up to 8 per byte) take minutes.
  if not bits_back:
    pop(0, n)
  elif doubling:
    ranks = _SuffixRanks(*layout.column_ranges())
    uniform = _models.Uniform()
    for start, end in reversed(_bits_back_runs(n, doubling)):
      pop(start, end)
      index, size = ranks.add(table[start:end])
      coded = size >= 2
      if coded.any():
        coder.encode_reverse(index[coded].astype(np.int32), uniform, size[coded].astype(np.int32))
  else:  # before version 5, one Gaussian at a time (scalar calls: runs of one cost 3x more)
    distinct = sortedcontainers.SortedSet()
    for i in range(n - 1, -1, -1):  # (no wide positions before version 6)
      row = tuple(lo if model is None else coder.decode(model) + lo for model, lo in coder_models)
      distinct.add(row)
      if len(distinct) >= 2:
        coder.encode_reverse(distinct.bisect_left(row), _models.Uniform(len(distinct)))
      table[i] = row
  if pad and np.any(coder.decode(_models.Uniform(_PAD_MODEL_SIZE), pad) != _PAD_SYMBOL):
    raise CodecError("corrupt payload: wrong padding")
  if not coder.is_empty():
    raise CodecError("corrupt payload: data left over after the last symbol")
  return table


# -- encode / decode -------------------------------------------------------------------------------

def _payload_bytes(words: np.ndarray) -> bytes:
  """ANS words as little-endian bytes, minus the zero high bytes of the last (top) word.

  The top word holds the high half of the coder's final state, spread roughly log-uniformly, so
  this saves 1.5 bytes on average; one byte is always kept, so the word count stays unambiguous.
  """
  data = np.asarray(words, "<u4").tobytes()
  if not data:
    return data
  keep = len(data)
  while keep > len(data) - 3 and data[keep - 1] == 0:
    keep -= 1
  return data[:keep]


def _payload_words(payload: bytes) -> np.ndarray:
  """Inverse of :func:`_payload_bytes`."""
  payload = payload + bytes(-len(payload) % 4)
  return np.frombuffer(payload, "<u4").astype(np.uint32)


class Header(NamedTuple):
  """What the header of a file says."""
  height: int
  width: int
  num_gaussians: int
  parameterization: str
  bits_back: bool
  cov_bits: int
  stages: int          # colour streams: RVQ stages, or 3 with uniform colours
  codebook_size: int   # colour alphabet: codewords per stage, or 2**color_bits
  pad: int
  position_cells: tuple[int, int] | None  # grid positions; None: float16
  cov_predictor: np.ndarray | None  # [5] (a10, b1, a20, a21, b2) float16 values; None: none
  header_bytes: int    # bytes before the payload
  payload_bytes: int   # ANS payload bytes
  color_bits: int = 0  # bits per uniform colour code; 0: residual VQ (stages, codebook_size)
  color_predictor: np.ndarray | None = None  # [5] like cov_predictor, for uniform colour codes
  fixed_point_codebooks: bool = False  # codewords in fixed point (else float16, or none)
  version: int = VERSION
  wide_sigma: float = 0.0  # > 0: Gaussians this wide (px) sit on even grid cells


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
    stages, k = 3, 1 << color_bits
    colors_ok = arrays["color_scale"].shape == arrays["color_offset"].shape == (3,)
  else:
    codebooks = arrays["codebooks"]
    stages, k = (codebooks.shape[:2] if codebooks.ndim == 3 else (0, 0))
    colors_ok = 1 <= stages <= 4 and 2 <= k <= 256 and codebooks.shape[2:] == (3,)
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
  if not color_bits and not _holds_float16(arrays["codebooks"]) and (
      codebooks_in_fixed_point(arrays["codebooks"]) is None):
    raise CodecError(f"codebooks must hold float16 values or multiples of 2**-e (e <= "
                     f"{_MAX_CODEWORD_FRACTION}, at most {MAX_CODEWORD_INT} steps from 0), as "
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
    q = _on_even_cells(q)
  q = canonicalize(q)
  table, cov_predictor = _predicted_if_shorter(to_streams(q), q.cov_bits, COV_COLUMN)
  color_predictor = None
  if q.color_bits:
    table, color_predictor = _predicted_if_shorter(table, q.color_bits, COLOR_COLUMN)
  return _write(q, table, height, width, bits_back, cov_predictor, color_predictor)


def _write(q: QuantizedGaussians, table: np.ndarray, height: int, width: int, bits_back: bool,
           predictor: np.ndarray | None, color_predictor: np.ndarray | None) -> bytes:
  """The file of a canonical set whose stream table is ``table``, with the residuals of the
  predictions given (None: that triple is sent plain)."""
  n = q.num_gaussians
  fixed_point = None
  if q.color_bits:
    stages, k = q.color_bits, 1  # the header's colour bytes read "color_bits, 0" (the layout)
    colors = f32_bytes(q.color_scale) + f32_bytes(q.color_offset) + (
        b"" if color_predictor is None else np.asarray(color_predictor, "<f2").tobytes())
    streams = color_alphabets(0, 0, q.color_bits, color_predictor is not None)
  else:
    stages, k = q.codebooks.shape[:2]
    colors, fixed_point = _codebook_fields(q.codebooks)
    streams = color_alphabets(stages, k)
  wide_rule = _wide_rule(dict(
      wide_sigma=q.wide_sigma, cov_bits=q.cov_bits, cov_scale=q.cov_scale,
      cov_offset=q.cov_offset, parameterization=q.parameterization), predictor)
  stream_alphabets = alphabets(q.cov_bits, streams, predictor is not None)
  wide = None
  if wide_rule is not None:
    wide = wide_rule(table)
    table = _halve_positions(table, wide)
  models = [fit_stream_model(_stream_symbols(table, s, wide), stream_alphabets[s[0]])
            for s in _streams(table.shape[1], wide is not None)]
  layout = _Layout.of(models, table.shape[1], wide_rule)
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
           (FLAG_WIDE_POSITIONS if wide_rule is not None else 0))
  grid = b"" if q.position_cells is None else b"".join(varint(c - 1) for c in q.position_cells)
  if wide_rule is not None:
    grid += bytes([round(8 * q.wide_sigma)])
  side = f32_bytes(q.cov_scale) + f32_bytes(q.cov_offset) + (
      b"" if predictor is None else np.asarray(predictor, "<f2").tobytes())
  pad = 0
  while True:
    head = b"".join([
        MAGIC, bytes([VERSION, flags]), varint(height), varint(width), varint(n), varint(pad),
        grid, bytes([q.cov_bits, stages, k - 1]), side, colors, varint(len(model_bytes)),
        model_bytes])
    payload = _payload_bytes(_encode_payload(table, layout, bits_back, pad, VERSION >= 5))
    body = head + payload
    data = body + u32(zlib.crc32(body))
    # The decoder bounds N by the file length (>= 1 bit per Gaussian); a set that compresses
    # below that (say, all Gaussians equal) is padded with bytes at the bottom of the stack.
    if 8 * len(data) >= n:
      return data
    if pad > n // 8 + 8:  # each pad symbol adds 8 bits, so this cannot happen
      raise CodecError("internal error: padding does not lengthen the payload")
    pad += max(1, -(-(n - 8 * len(data)) // 8))


def _codebook_fields(codebooks: np.ndarray) -> tuple[bytes, BitWriter | None]:
  """``(header bytes, model-block bits)`` of the codebooks: float16 in the header, or fixed point
  at the start of the model block where that is shorter."""
  half = np.asarray(codebooks, "<f2").tobytes()
  grid = codebooks_in_fixed_point(codebooks)
  if grid is None:
    return half, None
  bits = BitWriter()
  write_fixed_point_codebooks(bits, *grid)
  if _holds_float16(codebooks) and len(bits) >= 8 * len(half):
    return half, None
  return b"", bits


def _check_size_fields(height, width, n, pad, length):
  if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
    raise CodecError(f"image size {height}×{width} outside [1, {MAX_SIDE}]")
  if height * width > MAX_PIXELS:
    raise CodecError(f"image size {height}×{width} above the limit of {MAX_PIXELS} pixels")
  if not 1 <= n <= min(MAX_GAUSSIANS, 8 * length):
    raise CodecError(f"the header claims {n} Gaussians; a {length}-byte file holds 1 to "
                     f"{min(MAX_GAUSSIANS, 8 * length)}")
  if pad > n // 8 + 16:
    raise CodecError(f"corrupt header: {pad} bytes of padding for {n} Gaussians")


def read_header(data: bytes) -> tuple[Header, dict, list[StreamModel], np.ndarray]:
  """Validates and parses a file up to its payload.

  Returns:
    ``(header, side, models, payload words)``: ``side`` holds the side-information fields of
    :class:`QuantizedGaussians`.

  Raises:
    CodecError: wrong magic or version, truncated, corrupted, or a size outside the limits.
  """
  header, side, layout, words = _read_file(data)
  return header, side, layout.models, words


def _read_file(data: bytes) -> tuple[Header, dict, _Layout, np.ndarray]:
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
  version = data[4]
  if version not in READABLE_VERSIONS:
    raise CodecError(f"unsupported format version {version} (this decoder reads versions "
                     f"{', '.join(map(str, READABLE_VERSIONS))})")
  if len(data) < _MIN_FILE:
    raise CodecError(f"truncated file: {len(data)} bytes, a valid one has at least {_MIN_FILE}")
  body, crc = data[:-_CRC_BYTES], int.from_bytes(data[-_CRC_BYTES:], "little")
  if zlib.crc32(body) != crc:
    raise CodecError("corrupted or truncated file: checksum mismatch")

  r = ByteReader(body)
  r.take(5)
  flags = r.u8()
  if flags & ~_KNOWN_FLAGS[version] or (
      flags & FLAG_COLOR_PREDICTION and not flags & FLAG_UNIFORM_COLORS) or (
      flags & FLAG_FIXED_POINT_CODEBOOKS and flags & FLAG_UNIFORM_COLORS) or (
      flags & FLAG_WIDE_POSITIONS and not flags & FLAG_POSITION_GRID):
    raise CodecError(f"corrupt header: unknown flags {flags:#04x} for version {version}")
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
  color_bits = stages if flags & FLAG_UNIFORM_COLORS else 0
  if not (1 <= cov_bits <= 8 and ((1 <= color_bits <= 8 and k == 1) if color_bits else
                                  (1 <= stages <= 4 and k >= 2))):
    raise CodecError(f"corrupt header: cov_bits={cov_bits}, colour bytes {stages}, {k - 1}")
  side = dict(cov_scale=r.f32(3), cov_offset=r.f32(3))
  predictor = _read_predictor(r, flags & FLAG_COV_PREDICTION, "covariance")
  color_predictor = None
  if color_bits:
    side.update(codebooks=None, color_scale=r.f32(3), color_offset=r.f32(3))
    color_predictor = _read_predictor(r, flags & FLAG_COLOR_PREDICTION, "colour")
    streams = color_alphabets(0, 0, color_bits, color_predictor is not None)
  else:
    if not flags & FLAG_FIXED_POINT_CODEBOOKS:  # else they open the model block
      codebooks = np.frombuffer(r.take(2 * stages * k * 3), "<f2").astype(np.float32)
      side.update(codebooks=codebooks.reshape(stages, k, 3))
    streams = color_alphabets(stages, k)
  side.update(cov_bits=cov_bits, position_cells=cells, color_bits=color_bits,
              parameterization="rs" if flags & FLAG_RS else "cholesky", wide_sigma=wide_sigma)
  for name in ("cov_scale", "cov_offset", "codebooks", "color_scale", "color_offset"):
    if side.get(name) is not None and not np.isfinite(side[name]).all():
      raise CodecError(f"corrupt header: {name} is not finite")
  model_length = r.varint(r.remaining(), "the model block length")
  bits = BitReader(r.take(model_length), "model block")
  if flags & FLAG_FIXED_POINT_CODEBOOKS:
    side.update(codebooks=read_fixed_point_codebooks(bits, stages, k))
  stream_alphabets = alphabets(cov_bits, streams, predictor is not None)
  models = [StreamModel.read(bits, stream_alphabets[column])
            for column, _ in _streams(len(stream_alphabets), bool(wide_sigma))]
  bits.check_padding()
  header_bytes = r.pos
  payload = r.take(r.remaining())
  if color_bits:
    stages, k = 3, 1 << color_bits
  header = Header(height, width, n, side["parameterization"], bool(flags & FLAG_BITS_BACK),
                  cov_bits, stages, k, pad, cells, predictor, header_bytes, len(payload),
                  color_bits, color_predictor, bool(flags & FLAG_FIXED_POINT_CODEBOOKS),
                  version, wide_sigma)
  layout = _Layout.of(models, len(stream_alphabets), _wide_rule(side, predictor))
  return header, side, layout, _payload_words(payload)


def _read_predictor(r: ByteReader, present: int, what: str) -> np.ndarray | None:
  if not present:
    return None
  coef = np.frombuffer(r.take(2 * _PREDICTOR_SIZE), "<f2").astype(np.float32)
  if not np.isfinite(coef).all():
    raise CodecError(f"corrupt header: the {what} predictor is not finite")
  return coef


def _decode_table(data: bytes) -> tuple[Header, dict, _Layout, np.ndarray, np.ndarray | None]:
  """A file's header, side information, layout, stream table as coded (wide Gaussians' positions
  halved, predicted codes as residuals) and which Gaussians are wide (None: no wide positions)."""
  header, side, layout, words = _read_file(data)
  table = _decode_payload(words, layout, header.num_gaussians, header.bits_back, header.pad,
                          doubling=header.version >= 5)
  return header, side, layout, table, None if layout.wide is None else layout.wide(table)


def decode_quantized(data: bytes) -> tuple[QuantizedGaussians, Header]:
  """Parses and entropy-decodes a file into its quantized set (canonical order); renders nothing.

  Raises:
    CodecError: for any malformed input (see :func:`read_header`), a payload that does not decode
      exactly, or values that are not finite.
  """
  header, side, layout, table, wide = _decode_table(data)
  if wide is not None:
    table = _halve_positions(table, wide, halve=False)
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
    height, width: image size.
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
  """Names of a file's symbol streams, in table order (``…_residual``: sent as a residual from the
  prediction)."""
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
    CodecError: as :func:`decode_quantized`.

  Example::

    info = rate_breakdown(open("photo.gimg", "rb").read())
    {s["name"]: s["payload_bits"] / info["num_gaussians"] for s in info["streams"]}
  """
  header, _, layout, table, wide = _decode_table(data)
  # strict: the names are spelled apart from alphabets(), so a drift between them is an error,
  # not a silently shorter table.
  streams = []
  for name, model, stream in zip(stream_names(header), layout.models, layout.streams, strict=True):
    symbols = _stream_symbols(table, stream, wide)
    streams.append(dict(name=name, model_bits=_model_bits(model), payload_bits=_payload_bits(
        model, np.bincount(symbols, minlength=model.alphabet))))
  pad_bits = 8 * header.pad
  coded = sum(s["payload_bits"] for s in streams) + pad_bits
  return dict(height=header.height, width=header.width, num_gaussians=header.num_gaussians,
              version=header.version, bits_back=header.bits_back, bytes=len(data),
              bpp=bits_per_pixel(len(data), header.height, header.width),
              header_bits=8 * header.header_bytes - sum(s["model_bits"] for s in streams),
              streams=streams, pad_bits=pad_bits, order_bits=8 * header.payload_bytes - coded,
              order_bound_bits=-log2_factorial(header.num_gaussians), crc_bits=8 * _CRC_BYTES)
