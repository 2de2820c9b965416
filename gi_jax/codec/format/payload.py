"""The ANS payload: a stream table coded run by run, the Gaussians' order chosen by bits-back.

The Gaussians are a set, and their order carries log2(N!) bits. Bits-back coding takes those bits
off the ANS stack to choose the order, and the decoder puts them back; runs of 1, 1, 2, 4, 8, …
places let the decoder work in O(log N) vectorised steps (``docs/file_format.md``, "Payload").
"""

from __future__ import annotations

import collections

import constriction
import numpy as np
import sortedcontainers

from gi_jax.codec.format.streams import Layout, row_keys, stream_symbols
from gi_jax.errors import CodecError

# Padding symbols (Uniform(256)); not 0, which an empty ANS coder absorbs without growing.
_PAD_MODEL_SIZE = 256
_PAD_SYMBOL = 0x5A
_PAIRWISE_BLOCK = 32  # see _smaller_after
_ans = constriction.stream.stack
_models = constriction.stream.model


def _bits_back_runs(n: int) -> list[tuple[int, int]]:
  """``[start, end)`` runs of the transmission order that bits-back coding handles at once.

  They double (1, 1, 2, 4, … Gaussians), so the decoder makes O(log N) vectorised coder calls;
  each run's indices are decoded from the bits of at least as many Gaussians already on the
  stack, so they still find bits to take.
  """
  bounds = [0]
  while bounds[-1] < n:
    bounds.append(min(n, bounds[-1] + max(1, bounds[-1])))
  return list(zip(bounds[:-1], bounds[1:]))


def encode_payload(table: np.ndarray, layout: Layout, bits_back: bool, pad: int) -> np.ndarray:
  """The ANS words of a canonical stream table.

  Args:
    table: [N, columns] symbols as coded (residuals, wide positions halved), canonical order.
    layout: the streams' models and the order they are pushed in.
    bits_back: choose the Gaussians' order with bits-back (else canonical order, stream by
      stream).
    pad: padding symbols at the bottom of the stack (a file has at least
      :data:`~gi_jax.codec.format.container.MIN_PAD`: the end marker).

  Returns:
    The coder's compressed words (uint32).
  """
  coder = _ans.AnsCoder()
  if pad:
    coder.encode_reverse(np.full(pad, _PAD_SYMBOL, np.int32), _models.Uniform(_PAD_MODEL_SIZE))
  coder_models = [(m.coder_model(), m.lo) for m in layout.models]

  def push(rows: np.ndarray) -> None:  # the decoder pops them stream by stream
    wide = None if layout.wide is None else layout.wide(rows)
    for i in reversed(layout.order):
      symbols, (model, lo) = stream_symbols(rows, layout.streams[i], wide), coder_models[i]
      if model is not None and len(symbols):
        coder.encode_reverse((symbols - lo).astype(np.int32), model)

  if not bits_back:
    push(table)
    return coder.get_compressed()
  # Choose each next Gaussian by decoding a uniform index over the distinct remaining ones; the
  # decoder returns those bits by encoding the index back.
  rows = [tuple(r) for r in table.tolist()]
  remaining = collections.Counter(rows)
  distinct = sortedcontainers.SortedList(remaining)  # O(log N) index and delete
  for start, end in _bits_back_runs(len(rows)):
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
    keys = row_keys(rows, self._lo, self._widths)
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


def decode_payload(words: np.ndarray, layout: Layout, n: int, bits_back: bool,
                   pad: int) -> np.ndarray:
  """The stream table :func:`encode_payload` coded, in transmission order.

  Args:
    words: the payload's ANS words.
    layout: the streams' models and the order they are popped in.
    n: the number of Gaussians.
    bits_back: whether the order was chosen by bits-back.
    pad: padding symbols at the bottom of the stack (a file has at least
      :data:`~gi_jax.codec.format.container.MIN_PAD`: the end marker).

  Returns:
    [n, columns] int64 symbols as coded.

  Raises:
    CodecError: words the coder rejects, wrong padding, or data left over.
  """
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

  if not bits_back:
    pop(0, n)
  else:
    # Sorted keys or a sorted set keep this O(N log N): a list's O(N) inserts let a crafted
    # 100 kB file (N up to 8 per byte) take minutes.
    ranks = _SuffixRanks(*layout.column_ranges())
    uniform = _models.Uniform()
    for start, end in reversed(_bits_back_runs(n)):
      pop(start, end)
      index, size = ranks.add(table[start:end])
      coded = size >= 2
      if coded.any():
        coder.encode_reverse(index[coded].astype(np.int32), uniform, size[coded].astype(np.int32))
  if pad and np.any(coder.decode(_models.Uniform(_PAD_MODEL_SIZE), pad) != _PAD_SYMBOL):
    raise CodecError("corrupt payload: wrong padding")
  if not coder.is_empty():
    raise CodecError("corrupt payload: data left over after the last symbol")
  return table


def payload_bytes(words: np.ndarray) -> bytes:
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


def payload_words(payload: bytes) -> np.ndarray:
  """Inverse of :func:`payload_bytes`."""
  payload = payload + bytes(-len(payload) % 4)
  return np.frombuffer(payload, "<u4").astype(np.uint32)
