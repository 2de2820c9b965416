"""Static entropy models of the symbol streams: histograms whose weights cost the fewest bits.

Each stream of a file has one model, sent in the model block: uniform over the alphabet, or a
histogram of integer weights over the used range (``docs/file_format.md``, "Entropy models").
Weights are integers, so the encoder and the decoder build identical constriction models.
"""

from __future__ import annotations

import dataclasses
import math

import constriction
import numpy as np

from gi_jax.codec.bitio import BitReader, BitWriter
from gi_jax.errors import CodecError

_Q_MAX = 62
_MAX_CODE_ROUNDS = 16
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


def _histogram_bits(codes: np.ndarray, counts: np.ndarray) -> float:
  """Bits of a histogram's codes in the model block (less the ``lo``/``span`` fields) plus the
  payload's ideal code length under them; inf where a used symbol has no weight."""
  if (_CODE_WEIGHTS[codes][counts > 0] == 0).any():
    return math.inf
  model = _FIRST_CODE_BITS[codes[0]] + _STEP_BITS[codes[:-1], codes[1:]].sum()
  return float(model + payload_bits(StreamModel(len(codes), 0, codes), counts))


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
    """Appends the model to the model block."""
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
    """The model :meth:`write` wrote for a stream over ``alphabet`` symbols.

    Raises:
      CodecError: a model no encoder writes (symbols outside the alphabet, codes out of range).
    """
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
  """:func:`fit_stream_model` and the bits the stream then costs.

  Args:
    symbols: the stream's symbols, integers in ``[0, alphabet)``.
    alphabet: the stream's alphabet size.

  Returns:
    ``(model, bits)``: the model's bits in the model block plus the payload's ideal code length
    under it (which ANS reaches to a few bits per file).
  """
  if not len(symbols):  # (the wide or narrow Gaussians' positions, where there are none)
    return StreamModel(alphabet), 1.0
  counts = np.bincount(symbols, minlength=alphabet).astype(np.float64)
  used = np.flatnonzero(counts)
  lo, hi = int(used[0]), int(used[-1])
  if lo == hi:
    model = StreamModel(alphabet, lo, np.ones(1, np.int64))
    return model, model_bits(model)
  model = StreamModel(alphabet, lo, _cheapest_codes(counts[lo:hi + 1]))
  histogram = model_bits(model) + payload_bits(model, counts)
  uniform = len(symbols) * math.log2(alphabet) + 1
  if histogram < uniform:
    return model, float(histogram)
  return StreamModel(alphabet), uniform


def payload_bits(model: StreamModel, counts: np.ndarray) -> float:
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


def model_bits(model: StreamModel) -> float:
  """Bits the model takes in the model block."""
  bits = BitWriter()
  model.write(bits)
  return float(len(bits))
