"""From a file's symbols to its image: the decoder's device side, one file or many at once.

:func:`~gi_jax.codec.decode_quantized` (in :mod:`~gi_jax.codec.format`) turns bytes into symbols
on the host. Everything after it runs in jitted calls only (:mod:`~gi_jax.codec.render`): the
symbols are dequantized and checked in one call, the host reads back one flag and two counts per
set to size the render, and a second call renders, band by band for large images. Nothing runs
per file or per operation, which matters at thousands of images a second: an eager operation
costs tens of microseconds on a GPU.

Decoding cost is bounded by what the caller allows: ``max_pixels`` refuses a file from its
header before any work (a 600-byte file may claim 8192×8192 pixels), and memory is the output
image plus O(N) (bands of tile rows; batches of at most :data:`BATCH_PIXELS` pixels).

Many files decode as batches of files with the same size, N and symbol layout
(:func:`decode_batch`). Entropy decoding stays on the host, one file at a time per process:
constriction holds the GIL, so more cores help only as worker processes (:func:`decoder_pool`).

Example::

  with codec.decoder_pool() as pool:
    images = codec.decode_batch(files, executor=pool)   # files: a list of .gimg bytes
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import time
from typing import Sequence

import jax
import numpy as np

from gi_jax.codec.format import Header, bits_per_pixel, decode_quantized, read_header
from gi_jax.codec.quantize import QuantizedGaussians
from gi_jax.codec.render import (band_tile_rows, dequantize_for_render, layout, render_dequantized,
                                 render_symbols)
from gi_jax.errors import CodecError, ImageTooLargeError, InvalidInputError
from gi_jax.io import MAX_PIXELS
from gi_jax.render import resolve_backend

# decode_batch's default: images stacked into one render hold at most this many pixels in all
# (an image larger on its own renders alone), so a batch's memory is bounded whatever the files
# claim. 16 million: 42 Kodak images.
BATCH_PIXELS = 1 << 24


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


def check_pixels(files: Sequence[bytes], max_pixels: int | None,
                 names: Sequence[str] | None = None) -> list[Header]:
  """Every file's header, read and checked against ``max_pixels`` before any file is decoded.

  Args:
    files: the files' bytes.
    max_pixels: the largest height × width decoded (None: any the format allows).
    names: what error messages call the files (default: ``file 0``, ``file 1``, ...).

  Raises:
    ImageTooLargeError: naming the first file over ``max_pixels``.
    CodecError: naming the first file whose header is corrupt.
    InvalidInputError: ``max_pixels`` is not a positive integer or None.
  """
  _check_max_pixels(max_pixels)
  return [_header_within(data, max_pixels, name) for name, data in _named(files, names)]


def _check_max_pixels(max_pixels) -> None:
  if max_pixels is not None and (isinstance(max_pixels, bool) or
                                 not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
    raise InvalidInputError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")


def _header_within(data: bytes, max_pixels: int | None, name: str | None) -> Header:
  """The file's header, if it claims at most ``max_pixels`` pixels; errors start with ``name``."""
  prefix = "" if name is None else f"{name}: "
  try:
    header = read_header(data)[0]
  except CodecError as e:
    raise CodecError(f"{prefix}{e}") from None
  if max_pixels is not None and header.height * header.width > max_pixels:
    raise ImageTooLargeError(
        f"{prefix}{header.width}x{header.height} is {header.height * header.width:,} pixels, "
        f"over the limit of {max_pixels:,} (max_pixels; a guard against files that claim huge "
        "images)")
  return header


def batch_groups(decoded: Sequence[tuple[QuantizedGaussians, Header]],
                 max_batch_pixels: int | None = BATCH_PIXELS) -> list[tuple[int, int, list[int]]]:
  """Which decoded files can render as one batch: ``(height, width, indices)`` per group of one
  size, N and layout, in order of first appearance, each cut into batches of at most
  ``max_batch_pixels`` pixels in all (at least one image each; None: no cut)."""
  groups: dict[tuple, list[int]] = {}
  for i, (q, header) in enumerate(decoded):
    groups.setdefault((header.height, header.width, layout(q)), []).append(i)
  batches = []
  for (height, width, _), members in groups.items():
    size = len(members) if max_batch_pixels is None else max(1, max_batch_pixels //
                                                             (height * width))
    batches += [(height, width, members[i:i + size]) for i in range(0, len(members), size)]
  return batches


def decode_batches(files: Sequence[bytes], backend: str = "auto", *,
                   executor: concurrent.futures.Executor | None = None,
                   names: Sequence[str] | None = None, max_pixels: int | None = MAX_PIXELS,
                   max_batch_pixels: int | None = BATCH_PIXELS, band_rows: int | None = None):
  """:func:`decode_batch` one batch at a time: yields ``(indices, images)`` per batch, so a
  caller that writes each batch out holds one batch's images at a time, not all of them.

  Every header is checked (``max_pixels``) and every file entropy-decoded before the first
  batch renders, so a bad file anywhere stops the run before any image comes out.
  """
  items = _named(files, names)
  check_pixels(files, max_pixels, [name for name, _ in items])
  decoded = _entropy_decode_named(items, executor)
  for height, width, members in batch_groups(decoded, max_batch_pixels):
    batch = render_symbols([decoded[i][0] for i in members], height, width, backend,
                           lambda j: items[members[j]][0], band_rows=band_rows)
    yield members, np.asarray(batch)


def decode_batch(files: Sequence[bytes], backend: str = "auto", *,
                 executor: concurrent.futures.Executor | None = None,
                 names: Sequence[str] | None = None, max_pixels: int | None = MAX_PIXELS,
                 max_batch_pixels: int | None = BATCH_PIXELS,
                 band_rows: int | None = None) -> list[np.ndarray]:
  """Decodes many ``.gimg`` files: the throughput path of :func:`decode`.

  Every header is checked first; then entropy decoding runs file by file on the host (in
  ``executor``'s workers when given); then the files of each size, N and layout render in
  batches (:func:`~gi_jax.codec.render_quantized_batch`) of at most ``max_batch_pixels``
  pixels.

  Args:
    files: the files' bytes.
    backend: rendering backend.
    executor: where entropy decoding runs, e.g. :func:`decoder_pool` (default: here, one file
      after another).
    names: what error messages call the files (default: ``file 0``, ``file 1``, ...).
    max_pixels: as for :func:`decode`, for every file.
    max_batch_pixels: pixels stacked into one render at most (an image larger on its own
      renders alone); None: each group of one size, N and layout in one render.
    band_rows: as for :func:`decode`.

  Returns:
    The images, in the order of ``files``: float32 [H, W, C] in [0, 1], as :func:`decode` gives.
    Use :func:`decode_batches` to hold one batch's images at a time.

  Raises:
    ImageTooLargeError: a file's header claims more than ``max_pixels`` pixels (the file is
      named; nothing was decoded).
    CodecError: a file is corrupt or decodes to an unrenderable set (the file is named).
  """
  images: list[np.ndarray | None] = [None] * len(files)
  for members, batch in decode_batches(files, backend, executor=executor, names=names,
                                       max_pixels=max_pixels, max_batch_pixels=max_batch_pixels,
                                       band_rows=band_rows):
    for i, image in zip(members, batch):
      images[i] = image
  return images


def decode(data: bytes, backend: str = "auto", *, max_pixels: int | None = MAX_PIXELS,
           band_rows: int | None = None) -> tuple[np.ndarray, dict]:
  """Decodes a ``.gimg`` file to an image, from its bytes alone.

  Memory is about the output image plus O(N): large images render in bands of tile rows.

  Args:
    data: the file's bytes.
    backend: rendering backend (see :func:`gi_jax.render`).
    max_pixels: the largest height × width decoded, checked from the header before any work
      (a small file can claim a huge image); the default, :data:`gi_jax.io.MAX_PIXELS`, is
      Pillow's decompression-bomb limit, as for :func:`gi_jax.io.load_image`; None: any size
      the format allows.
    band_rows: tile rows (16 pixel rows) rendered at a time; 0: all at once; None: all at once
      up to :data:`~gi_jax.codec.render.BAND_PIXELS` pixels, else bands of about that many. The
      image is the same to the bit.

  Returns:
    ``(image, info)``: the image as float32 [H, W, C] in [0, 1], and a dict with ``height``,
    ``width``, ``num_gaussians``, ``format_version``, ``parameterization``, ``bits_back``,
    ``bytes``, ``bpp``, ``header_bytes``, ``payload_bytes``, ``quantized`` (the symbols),
    ``gaussians`` (dequantized, of the file's canvas size), ``parse_seconds`` (header and entropy
    decoding, dequantizing and checks) and ``render_seconds`` (synchronised; the first call for a
    shape includes compiling).

  Raises:
    ImageTooLargeError: the header claims more than ``max_pixels`` pixels.
    CodecError: truncated, corrupted, wrong magic or version, or sizes beyond the format's limits.
  """
  t0 = time.perf_counter()
  _check_max_pixels(max_pixels)
  _header_within(data, max_pixels, None)
  q, header = decode_quantized(data)
  height, width = header.height, header.width
  backend = resolve_backend(backend)
  rows = band_tile_rows(height, width, backend, band_rows)
  gaussians, capacity = dequantize_for_render([q], height, width, lambda _: "file", rows)
  t1 = time.perf_counter()
  image = np.asarray(jax.block_until_ready(
      render_dequantized(gaussians, height, width, backend, capacity, rows)))[0]
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
