"""Linear prediction of a code triple: the last two codes sent as residuals from the first.

The Cholesky diagonal entries are strongly correlated, and so are a colour's three channels; the
encoder keeps a prediction only where it makes the file shorter (``docs/file_format.md``,
"Prediction").
"""

from __future__ import annotations

import numpy as np

from gi_jax.codec.format.entropy import stream_model_and_bits
from gi_jax.errors import CodecError

PREDICTOR_SIZE = 5  # (a10, b1, a20, a21, b2)


def _prediction(terms, levels: int) -> np.ndarray:
  """``clip(round(Σ a·c + b))`` in float64 from float16-valued ``(a, c)`` pairs and ``b``."""
  *products, offset = terms
  total = sum(float(a) * np.asarray(c, np.float64) for a, c in products) + float(offset)
  return np.clip(np.round(total), 0, levels - 1).astype(np.int64)


def _predict_c1(coef, c0, levels: int) -> np.ndarray:
  return _prediction([(coef[0], c0), coef[1]], levels)


def _predict_c2(coef, c0, c1, levels: int) -> np.ndarray:
  return _prediction([(coef[2], c0), (coef[3], c1), coef[4]], levels)


def fit_predictor(table: np.ndarray, start: int) -> np.ndarray:
  """Least-squares coefficients (a10, b1, a20, a21, b2) of the code triple in columns
  ``start..start+2``, rounded to float16 (kept as float32); zeros where they are not finite."""
  c = np.asarray(table, np.float64)[:, start:start + 3]
  ones = np.ones(len(c))
  a1 = np.linalg.lstsq(np.stack([c[:, 0], ones], 1), c[:, 1], rcond=None)[0]
  a2 = np.linalg.lstsq(np.stack([c[:, 0], c[:, 1], ones], 1), c[:, 2], rcond=None)[0]
  coef = np.concatenate([a1, a2]).astype(np.float16).astype(np.float32)
  return coef if np.isfinite(coef).all() else np.zeros(PREDICTOR_SIZE, np.float32)


def predict(table: np.ndarray, coef: np.ndarray, bits: int, start: int) -> np.ndarray:
  """The stream table with the codes in columns ``start+1`` and ``start+2`` (of ``bits`` bits)
  replaced by their prediction residuals ``c − p + 2**bits − 1`` (in ``[0, 2**(bits+1))``)."""
  levels = 1 << bits
  table = np.array(table, np.int64)
  c0, c1, c2 = start, start + 1, start + 2
  p1 = _predict_c1(coef, table[:, c0], levels)
  p2 = _predict_c2(coef, table[:, c0], table[:, c1], levels)
  table[:, c1] += levels - 1 - p1
  table[:, c2] += levels - 1 - p2
  return table


def unpredict(streams: np.ndarray, coef: np.ndarray, bits: int, start: int) -> np.ndarray:
  """Inverse of :func:`predict`.

  Raises:
    CodecError: a code outside ``[0, 2**bits)`` (a corrupt file's).
  """
  levels = 1 << bits
  table = np.array(streams, np.int64)
  c0, c1, c2 = start, start + 1, start + 2
  table[:, c1] += _predict_c1(coef, table[:, c0], levels) - (levels - 1)
  table[:, c2] += _predict_c2(coef, table[:, c0], table[:, c1], levels) - (levels - 1)
  if ((table[:, c1:c2 + 1] < 0) | (table[:, c1:c2 + 1] >= levels)).any():
    raise CodecError("corrupt payload: a predicted code lies outside its range")
  return table


def predicted_if_shorter(table: np.ndarray, bits: int,
                         start: int) -> tuple[np.ndarray, np.ndarray | None]:
  """``(table, predictor)``: the triple's residuals and fitted predictor if those streams and the
  coefficients cost fewer bits than the plain streams; else the table as it is and None."""
  coef = fit_predictor(table, start)
  residuals = predict(table, coef, bits, start)
  cost = lambda t, alphabet: sum(stream_model_and_bits(t[:, c], alphabet)[1]
                                 for c in (start + 1, start + 2))
  if cost(residuals, 2 << bits) + 16 * PREDICTOR_SIZE < cost(table, 1 << bits):
    return residuals, coef
  return table, None
