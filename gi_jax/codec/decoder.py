"""From a file's symbols to its image: the decoder's device side, one file or many at once.

:func:`~gi_jax.codec.decode_quantized` (in :mod:`~gi_jax.codec.format`) turns bytes into symbols
on the host. Everything after it runs here, in jitted calls only: the symbols are dequantized and
checked (finite values, an intersection count within :data:`MAX_INTERSECTIONS`) in one call, the
host reads back one flag and one count per set to size the render, and a second call renders.
Nothing runs per file or per operation, which matters at thousands of images a second: an eager
operation costs tens of microseconds on a GPU.

Many files decode as one batch per group of files with the same size, N and symbol layout
(:func:`decode_batch`). Entropy decoding stays on the host, one file at a time per process:
constriction holds the GIL, so more cores help only as worker processes (:func:`decoder_pool`).

Example::

  with codec.decoder_pool() as pool:
    images = codec.decode_batch(files, executor=pool)   # files: a list of .gimg bytes
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gi_jax import binning
from gi_jax.codec.format import (MAX_INTERSECTIONS, Header, bits_per_pixel, canonicalize,
                                 decode_quantized)
from gi_jax.codec.quantize import QuantizedGaussians
from gi_jax.errors import CodecError, InvalidInputError
from gi_jax.gaussians import Gaussians
from gi_jax.render import render, resolve_backend


def _set_checks(gaussians: Gaussians, grid: binning.TileGrid):
  """One set's ``(all values finite, intersection count, the count in float32)``; the float sum
  cannot wrap round as int32 can for a crafted file."""
  finite = jnp.stack([jnp.isfinite(x).all()
                      for x in (gaussians.means_raw, gaussians.cov_raw, gaussians.colors)]).all()
  touched = binning.project(gaussians, grid).tiles_touched
  return finite, touched.sum(), touched.astype(jnp.float32).sum()


@functools.partial(jax.jit, static_argnums=(1, 2))
def _dequantize_checked(symbols: QuantizedGaussians, height: int, width: int):
  grid = binning.TileGrid(height, width)

  def one(q):
    gaussians = q.dequantize()
    return gaussians, _set_checks(gaussians, grid)
  return jax.vmap(one)(symbols)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _checked(gaussians: Gaussians, height: int, width: int):
  grid = binning.TileGrid(height, width)
  return jax.vmap(lambda g: _set_checks(g, grid))(gaussians)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _render(gaussians, height, width, backend, capacity):
  return render(gaussians, height, width, backend, capacity=capacity)


def _capacity(checks, name: Callable[[int], str]) -> int:
  """The render capacity of checked sets (the largest count's bucket).

  Raises:
    CodecError: naming (``name(i)``) the first set with values that are not finite or with more
      intersections than the decoder allows.
  """
  finite, counts, totals = jax.device_get(checks)
  for i in range(len(finite)):
    if not finite[i]:
      raise CodecError(f"corrupt {name(i)}: decoded Gaussians are not finite")
    if totals[i] > MAX_INTERSECTIONS:
      raise CodecError(f"the Gaussians of {name(i)} touch {totals[i]:.0f} tiles in all, above "
                       f"the decoder's limit of {MAX_INTERSECTIONS}")
  return binning.bucket_capacity(int(np.max(counts)))


def _layout(tree) -> tuple:
  """What sets must share to be stacked: tree structure (static fields) and leaf shapes."""
  return jax.tree.structure(tree), tuple(np.shape(x) for x in jax.tree.leaves(tree))


def _stack(sets: Sequence, stack: Callable, what: str):
  sets = list(sets)
  if not sets:
    raise InvalidInputError(f"no {what}s to render")
  layout = _layout(sets[0])
  for i, s in enumerate(sets):
    if _layout(s) != layout:
      raise InvalidInputError(f"{what} {i} differs from {what} 0 in N or layout; a batch needs "
                              "one of each (decode_batch groups files by them)")
  return jax.tree.map(lambda *xs: stack(xs), *sets)


def _batch_name(i: int) -> str:
  return f"set {i} of the batch"


def render_decoded_batch(sets: Sequence[Gaussians], height: int, width: int,
                         backend: str = "auto") -> jax.Array:
  """Renders B dequantized sets of the same N in one jitted call: ``[B, H, W, 3]``.

  Raises:
    InvalidInputError: the sets differ in N or parameterisation.
    CodecError: a set has values that are not finite, or too many intersections.
  """
  stacked = _stack(sets, lambda xs: jnp.stack([jnp.asarray(x) for x in xs]), "set")
  capacity = _capacity(_checked(stacked, height, width), _batch_name)
  return _render(stacked, height, width, resolve_backend(backend), capacity)


def render_decoded(gaussians: Gaussians, height: int, width: int,
                   backend: str = "auto") -> jax.Array:
  """Renders one dequantized set as the decoder does: ``[H, W, 3]``."""
  return render_decoded_batch([gaussians], height, width, backend)[0]


def render_quantized_batch(symbols: Sequence[QuantizedGaussians], height: int, width: int,
                           backend: str = "auto", *, capacity: int = 0) -> jax.Array:
  """The device part of decoding B files of one size, N and layout: ``[B, H, W, 3]``.

  One transfer of the stacked symbols, one jitted call that dequantizes and checks every set, a
  read-back of B flags and counts that sizes the render, and one jitted render.

  Args:
    symbols: :func:`~gi_jax.codec.decode_quantized`'s sets (NumPy arrays).
    height, width: the image size they were decoded with.
    backend: rendering backend.
    capacity: render with at least this many intersection slots. Renders of one size and N that
      pass the same value share one compiled render (:func:`render_capacity`); no pixel
      changes.

  Raises:
    InvalidInputError: the sets differ in N or layout (quantizer settings).
    CodecError: a set decodes to values that are not finite, or to too many intersections.
  """
  return _render_symbols(symbols, height, width, backend, _batch_name, capacity)


def _dequantize_for_render(symbols, height, width, name: Callable[[int], str]):
  """Stacked, dequantized and checked sets, and the capacity that renders them."""
  gaussians, checks = _dequantize_checked(_stack(symbols, np.stack, "set"), height, width)
  return gaussians, _capacity(checks, name)


def _render_symbols(symbols, height, width, backend, name: Callable[[int], str],
                    least_capacity: int = 0) -> jax.Array:
  gaussians, capacity = _dequantize_for_render(symbols, height, width, name)
  return _render(gaussians, height, width, resolve_backend(backend),
                 max(capacity, int(least_capacity)))


def render_capacity(symbols: Sequence[QuantizedGaussians], height: int, width: int) -> int:
  """The smallest intersection capacity that renders each of these sets (one size and N).

  Pass it as ``capacity`` to their renders one by one (:func:`render_quantized`,
  :func:`~gi_jax.codec.quantized_mse`, :func:`~gi_jax.codec.refine_colors`): they then share one
  compiled render, where each set's own capacity would compile one render per bucket.

  Raises:
    CodecError: as :func:`render_quantized_batch`.
  """
  return max((_dequantize_for_render([q], height, width, _batch_name)[1] for q in symbols),
             default=0)


def render_quantized(symbols: QuantizedGaussians, height: int, width: int,
                     backend: str = "auto", *, capacity: int = 0) -> jax.Array:
  """One set's image exactly as :func:`decode` renders it from the set's file: ``[H, W, 3]``,
  bit for bit (the Gaussians summed in the file's canonical order); ``capacity`` as for
  :func:`render_quantized_batch`."""
  return render_quantized_batch([canonicalize(symbols)], height, width, backend,
                                capacity=capacity)[0]


def _decode_named(item: tuple[str, bytes]) -> tuple[QuantizedGaussians, Header]:
  name, data = item
  try:
    return decode_quantized(data)
  except CodecError as e:
    raise CodecError(f"{name}: {e}") from None


def _named(files: Sequence[bytes], names: Sequence[str] | None) -> list[tuple[str, bytes]]:
  names = [f"file {i}" for i in range(len(files))] if names is None else list(names)
  if len(names) != len(files):
    raise InvalidInputError(f"{len(names)} names for {len(files)} files")
  return list(zip(names, files))


def decoder_pool(workers: int | None = None
                 ) -> concurrent.futures.ProcessPoolExecutor | contextlib.nullcontext:
  """Worker processes for entropy decoding many files (:func:`entropy_decode`).

  Args:
    workers: processes (default: one per CPU core); 0: none, entropy decoding stays in this
      process.

  Returns:
    A context manager giving the executor to pass on: a ``ProcessPoolExecutor``, or None for
    ``workers=0``. The pool's processes start from a fork server, never from a fork of this
    process: JAX runs threads, and forking them is unsafe. Entropy decoding is NumPy and
    constriction only, so the workers never start a JAX backend (nor take GPU memory).
  """
  if workers == 0:
    return contextlib.nullcontext()
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload([__name__])  # each worker forks with the codec imported
  return concurrent.futures.ProcessPoolExecutor(workers or os.cpu_count(), mp_context=context)


def entropy_decode(files: Sequence[bytes], executor: concurrent.futures.Executor | None = None,
                   names: Sequence[str] | None = None) -> list[tuple[QuantizedGaussians, Header]]:
  """:func:`~gi_jax.codec.decode_quantized` of each file, in order; in ``executor``'s workers
  when given (see :func:`decoder_pool`).

  Raises:
    CodecError: naming the first file that fails to decode (by ``names``, else ``file i``).
  """
  return _entropy_decode_named(_named(files, names), executor)


def _entropy_decode_named(items: list[tuple[str, bytes]], executor
                          ) -> list[tuple[QuantizedGaussians, Header]]:
  if executor is None:
    return [_decode_named(item) for item in items]
  chunk = max(1, len(items) // (4 * (os.cpu_count() or 1)))  # few round trips, balanced load
  return list(executor.map(_decode_named, items, chunksize=chunk))


def batch_groups(decoded: Sequence[tuple[QuantizedGaussians, Header]]
                 ) -> list[tuple[int, int, list[int]]]:
  """Which decoded files can render as one batch: ``(height, width, indices)`` per group of one
  size, N and layout, in order of first appearance."""
  groups: dict[tuple, list[int]] = {}
  for i, (q, header) in enumerate(decoded):
    groups.setdefault((header.height, header.width, _layout(q)), []).append(i)
  return [(height, width, members) for (height, width, _), members in groups.items()]


def decode_batch(files: Sequence[bytes], backend: str = "auto", *,
                 executor: concurrent.futures.Executor | None = None,
                 names: Sequence[str] | None = None) -> list[np.ndarray]:
  """Decodes many ``.gimg`` files: the throughput path of :func:`decode`.

  Entropy decoding runs file by file on the host (in ``executor``'s workers when given); then
  the files of each size, N and layout render as one batch (:func:`render_quantized_batch`).

  Args:
    files: the files' bytes.
    backend: rendering backend.
    executor: where entropy decoding runs, e.g. :func:`decoder_pool` (default: here, one file
      after another).
    names: what error messages call the files (default: ``file 0``, ``file 1``, ...).

  Returns:
    The images, in the order of ``files``: float32 [H, W, 3] in [0, 1], as :func:`decode` gives.

  Raises:
    CodecError: a file is corrupt or decodes to an unrenderable set (the file is named).
  """
  items = _named(files, names)
  decoded = _entropy_decode_named(items, executor)
  images: list[np.ndarray | None] = [None] * len(decoded)
  for height, width, members in batch_groups(decoded):
    batch = _render_symbols([decoded[i][0] for i in members], height, width, backend,
                            lambda j: items[members[j]][0])
    for i, image in zip(members, np.asarray(batch)):
      images[i] = image
  return images


def decode(data: bytes, backend: str = "auto") -> tuple[np.ndarray, dict]:
  """Decodes a ``.gimg`` file to an image, from its bytes alone.

  Args:
    data: the file's bytes.
    backend: rendering backend (see :func:`gi_jax.render`).

  Returns:
    ``(image, info)``: the image as float32 [H, W, C] in [0, 1], and a dict with ``height``,
    ``width``, ``num_gaussians``, ``format_version``, ``parameterization``, ``bits_back``,
    ``bytes``, ``bpp``, ``header_bytes``, ``payload_bytes``, ``quantized`` (the symbols),
    ``gaussians`` (dequantized, of the file's canvas size), ``parse_seconds`` (header and entropy
    decoding, dequantizing and checks) and ``render_seconds`` (synchronised; the first call for a
    shape includes compiling).

  Raises:
    CodecError: truncated, corrupted, wrong magic or version, or sizes beyond the format's limits.
  """
  t0 = time.perf_counter()
  q, header = decode_quantized(data)
  height, width = header.height, header.width
  gaussians, capacity = _dequantize_for_render([q], height, width, lambda _: "file")
  t1 = time.perf_counter()
  image = np.asarray(jax.block_until_ready(
      _render(gaussians, height, width, resolve_backend(backend), capacity)))[0]
  t2 = time.perf_counter()
  info = dict(height=height, width=width, num_gaussians=header.num_gaussians,
              format_version=header.version, parameterization=header.parameterization,
              bits_back=header.bits_back,
              bytes=len(data), bpp=bits_per_pixel(len(data), height, width),
              header_bytes=header.header_bytes, payload_bytes=header.payload_bytes,
              quantized=q,
              gaussians=jax.tree.map(lambda x: x[0], gaussians).with_canvas_size(height, width),
              parse_seconds=t1 - t0, render_seconds=t2 - t1)
  return image, info
