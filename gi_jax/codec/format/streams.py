"""A quantized set as a table of symbol streams, and the order in which the payload codes them.

Each Gaussian is one row of ``7 + S`` symbols: the high and low bytes of its two position codes,
its three covariance codes and its S colour symbols. Wide Gaussians' positions form four streams
of their own (``docs/file_format.md``, "Symbols and streams" and "Wide Gaussians").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import numpy as np

from gi_jax.codec.format.entropy import StreamModel
from gi_jax.codec.format.prediction import unpredict
from gi_jax.codec.positions import wide_gaussians
from gi_jax.codec.quantize import QuantizedGaussians
from gi_jax.errors import CodecError

# First columns of the table's predictable code triples.
COV_COLUMN = 4
COLOR_COLUMN = 7


def _triple_alphabets(bits: int, predicted: bool) -> list[int]:
  """A code triple's alphabets: the last two are prediction residuals (twice as many) if
  ``predicted``."""
  return [1 << bits] + [(2 if predicted else 1) << bits] * 2


def color_alphabets(stages: int, codebook_size: int, color_bits: int = 0,
                    predicted: bool = False, channels: int = 3) -> list[int]:
  """Alphabet size of each colour stream: S codeword indices, or C uniform codes (prediction,
  for C = 3 only, makes the last two residuals)."""
  if color_bits:
    if channels == 3:
      return _triple_alphabets(color_bits, predicted)
    return [1 << color_bits] * channels
  return [codebook_size] * stages


def alphabets(cov_bits: int, colors: list[int], predicted: bool = False) -> list[int]:
  """Alphabet size of each table column: x_hi, x_lo, y_hi, y_lo, 3 covariance codes (the last two
  as prediction residuals if ``predicted``), then the colour streams (:func:`color_alphabets`)."""
  return [256] * 4 + _triple_alphabets(cov_bits, predicted) + list(colors)


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
  """Inverse of :func:`to_streams`; ``side`` holds the set's side-information fields."""
  table = np.asarray(table, np.int64)
  means = np.stack([(table[:, 0] << 8) | table[:, 1], (table[:, 2] << 8) | table[:, 3]], 1)
  if side.get("position_cells") is None:
    means = _unordered(means)
  return QuantizedGaussians(means.astype(np.uint16), table[:, 4:7].astype(np.uint8),
                            table[:, 7:].astype(np.uint8), **side)


def row_keys(rows: np.ndarray, lo: np.ndarray, widths: list[int]) -> np.ndarray | None:
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
  keys = row_keys(table, lo, [int(w).bit_length() for w in table.max(0) - lo])
  if keys is None:
    return np.lexsort(table.T[::-1])
  return np.argsort(keys, kind="stable")  # as lexsort, ties keep their order; 3x faster


def canonicalize(q: QuantizedGaussians) -> QuantizedGaussians:
  """The same set with its Gaussians in canonical order (the order a decoder returns).

  Args:
    q: a quantized set.

  Returns:
    ``q`` as NumPy arrays, its Gaussians sorted lexicographically by their symbols.
  """
  q = q.to_numpy()
  return q.permute(canonical_order(to_streams(q)))


# -- wide Gaussians' positions --------------------------------------------------------------------

WideRule = Callable[[np.ndarray], np.ndarray]  # rows of a coded table -> [n] bool: wide ones


def wide_rule(side: dict, cov_predictor: np.ndarray | None) -> WideRule | None:
  """The file's rule (:func:`~gi_jax.codec.positions.wide_gaussians` in float64) on rows of a coded
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


def on_even_cells(q: QuantizedGaussians) -> QuantizedGaussians:
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


def halve_positions(table: np.ndarray, wide: np.ndarray, halve: bool = True) -> np.ndarray:
  """The table with the wide rows' position codes (split in high and low bytes) halved (their
  even cells' indices on the coarse grid), or with ``halve=False`` doubled back.

  Raises:
    CodecError: a doubled code beyond 16 bits (a corrupt file's).
  """
  table = np.array(table, np.int64)
  for hi in (0, 2):
    code = (table[wide, hi] << 8) | table[wide, hi + 1]
    code = code >> 1 if halve else code << 1
    if (code > 0xFFFF).any():  # a corrupt file's; the grid check would see it wrapped
      raise CodecError("corrupt payload: a position lies outside the grid")
    table[wide, hi], table[wide, hi + 1] = code >> 8, code & 0xFF
  return table


# -- the streams of a table, in coding order ------------------------------------------------------

Stream = tuple[int, bool | None]  # (table column, None: every row / False: narrow / True: wide)


def table_streams(num_columns: int, wide: bool) -> list[Stream]:
  """The streams of a table, in the model block's order: each column over every Gaussian; with
  wide positions, the four position columns over the narrow Gaussians in their place and over
  the wide ones after the others."""
  if not wide:
    return [(c, None) for c in range(num_columns)]
  return [(c, False if c < COV_COLUMN else None) for c in range(num_columns)] + [
      (c, True) for c in range(COV_COLUMN)]


def stream_symbols(rows: np.ndarray, stream: Stream, wide: np.ndarray | None) -> np.ndarray:
  """The symbols of ``stream`` in ``rows`` (``wide``: which of them are wide Gaussians)."""
  column, rows_of = stream
  return rows[:, column] if rows_of is None else rows[wide == rows_of, column]


class Layout(NamedTuple):
  """How a stream table is coded: one model per stream (:func:`table_streams`), in the model
  block's order; a run of Gaussians' streams are popped in ``order``."""
  models: list[StreamModel]
  streams: list[Stream]
  order: list[int]
  wide: WideRule | None

  @classmethod
  def of(cls, models: list[StreamModel], num_columns: int, wide: WideRule | None) -> Layout:
    """The layout of a table's streams; with ``wide``, the covariance is popped first, since it
    says which Gaussians are wide."""
    streams = table_streams(num_columns, wide is not None)
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
