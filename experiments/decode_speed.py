"""Decode throughput of ``.gimg`` files: images per second when they decode in batches (#6).

For each Gaussian count among the files (a rate point of ``experiments/compress.py``, whose
files these usually are), two rates, each a median of ``--repeats`` after a warm-up:

- ``batched_render_images_per_second``, the device part: each group of files of one size, N and
  layout (Kodak mixes landscape and portrait images) goes from its entropy-decoded symbols to
  images in one batch (:func:`gi_jax.codec.render.render_quantized_batch`: dequantize, check,
  render); the rate is all the images over the groups' summed times.
- ``batched_decode_images_per_second``, the whole decode: :func:`gi_jax.codec.decode_batch` from
  the files' bytes to images on the host, entropy decoding in ``--workers`` processes.

With ``--batch_size`` a count's files are repeated in turn up to that many (throughput at scale
from a few files). The decode time of one file alone is ``compress.py``'s (``decoding_time``).

Usage (from the repo root):
  python experiments/compress.py --dataset=../shared/data/kodak      # writes results/compress/files
  python experiments/decode_speed.py --files=results/compress/files --batch_size=256
  # one run's files of a shared folder, by pattern:
  python experiments/decode_speed.py --files='results/compress/files/*_ours_*.gimg'

Writes ``decode_speed.json`` to ``--out_dir`` (replacing an earlier run's): the device, backend,
workers and repeats, and one row per Gaussian count (``num_gaussians``, ``files``, ``sizes`` and
the rates above with the ``batched_decode_files`` and ``batched_decode_workers`` they were
measured with).
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
from typing import NamedTuple

from absl import app, flags
import jax

from gi_jax import codec, errors
from gi_jax.codec.decoder import batch_groups, entropy_decode
from gi_jax.codec.render import render_quantized_batch
from gi_jax.timing import median_seconds
from harness import check_out_dir, format_table, run_failed, write_json

_FILES = flags.DEFINE_list(
    "files", None, "The .gimg files: paths, folders (their *.gimg files) or glob patterns.")
_BACKEND = flags.DEFINE_string("backend", "auto", "Renderer: auto, reference or pallas.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed decodes of each batch (median).",
                                lower_bound=1)
_WORKERS = flags.DEFINE_integer(
    "workers", None, "Processes that entropy-decode the files for the whole-decode rate (default: "
    "one per CPU core; 0: this process).", lower_bound=0)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 0, "Files per Gaussian count: the count's files repeated in turn up to this many "
    "(throughput at scale from a few files); 0: each file once.", lower_bound=0)
_OUT_DIR = flags.DEFINE_string("out_dir", "results/decode_speed", "Where to write results.")

RESULTS_NAME = "decode_speed.json"


def gimg_paths(specs: list[str]) -> list[str]:
  """The files ``--files`` names, in order, each once: a folder gives its ``*.gimg`` files and a
  pattern its matches, both sorted.

  Raises:
    errors.InvalidInputError: an entry that names no file.
  """
  paths = []
  for spec in specs:
    if os.path.isdir(spec):
      found = sorted(glob.glob(os.path.join(glob.escape(spec), "*.gimg")))
    elif os.path.isfile(spec):
      found = [spec]
    else:
      found = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
    if not found:
      raise errors.InvalidInputError(f"--files: {spec!r} is no .gimg file, nor a folder or "
                                     "pattern with any")
    paths.extend(p for p in found if p not in paths)
  return paths


class GimgFile(NamedTuple):
  """One file to decode: its path, bytes and image size."""
  path: str
  data: bytes
  height: int
  width: int


def files_by_count(paths: list[str]) -> dict[int, list[GimgFile]]:
  """Reads the files, checks that each decodes (entropy decoding; nothing rendered) and groups
  them by Gaussian count, in increasing count.

  Raises:
    errors.CodecError: a file that is no valid ``.gimg`` file (named).
  """
  files = []
  for path in paths:
    with open(path, "rb") as f:
      files.append(f.read())
  decoded = entropy_decode(files, names=paths)
  groups: dict[int, list[GimgFile]] = {}
  for path, data, (_, header) in zip(paths, files, decoded):
    groups.setdefault(header.num_gaussians, []).append(
        GimgFile(path, data, header.height, header.width))
  return dict(sorted(groups.items()))


def batched_decode_rates(files: list[GimgFile], *, repeats: int, batch_size: int, backend: str,
                         executor: concurrent.futures.Executor | None = None) -> dict:
  """Images per second when ``files`` decode in batches.

  Args:
    files: the files, at least one.
    repeats: timed runs of each batch (median), after one warm-up.
    batch_size: the files repeated in turn up to this many (0: each once).
    backend: rendering backend.
    executor: where the whole decode entropy-decodes (:func:`~gi_jax.codec.decoder_pool`;
      None: this process).

  Returns:
    ``batched_render_images_per_second`` (the device part, from the entropy-decoded symbols),
    ``batched_decode_images_per_second`` (the whole decode, from the bytes) and
    ``batched_decode_files``.
  """
  files = [files[i % len(files)] for i in range(max(len(files), batch_size))]
  names = [f.path for f in files]
  datas = [f.data for f in files]
  decoded = entropy_decode(datas, names=names)
  seconds = 0.0
  for height, width, members in batch_groups(decoded):
    symbols = [decoded[i][0] for i in members]
    seconds += median_seconds(
        lambda: render_quantized_batch(symbols, height, width, backend),
        repeats=repeats, warmup=1)
  whole = median_seconds(lambda: codec.decode_batch(datas, backend, executor=executor, names=names),
                         repeats=repeats, warmup=1)
  return dict(batched_render_images_per_second=len(datas) / seconds,
              batched_decode_images_per_second=len(datas) / whole,
              batched_decode_files=len(datas))


COLUMNS = (("num_gaussians", "N", "{}"), ("files", "files", "{}"),
           ("batched_decode_files", "decoded", "{}"),
           ("batched_render_images_per_second", "render images/s", "{:.1f}"),
           ("batched_decode_images_per_second", "whole images/s", "{:.1f}"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _FILES.value:
    raise app.UsageError("--files is required: the .gimg files to decode")
  out_dir = _OUT_DIR.value
  workers = os.cpu_count() if _WORKERS.value is None else _WORKERS.value
  try:
    check_out_dir(out_dir, RESULTS_NAME)
    groups = files_by_count(gimg_paths(_FILES.value))
    rows = []
    with codec.decoder_pool(workers) as pool:  # one pool for every count
      for count, files in groups.items():
        sizes = sorted({f"{f.width}x{f.height}" for f in files})
        rows.append(dict(num_gaussians=count, files=len(files), sizes=sizes,
                         **batched_decode_rates(files, repeats=_REPEATS.value,
                                                batch_size=_BATCH_SIZE.value,
                                                backend=_BACKEND.value, executor=pool),
                         batched_decode_workers=workers))
        print(f"N={count}: {len(files)} file(s) {', '.join(sizes)}: batched render "
              f"{rows[-1]['batched_render_images_per_second']:.1f} images/s, whole decode "
              f"{rows[-1]['batched_decode_images_per_second']:.1f} images/s", flush=True)
  except errors.GIError as e:
    raise run_failed(e) from None
  path = os.path.join(out_dir, RESULTS_NAME)
  write_json(path, dict(device=str(jax.devices()[0].device_kind), backend=_BACKEND.value,
                        workers=workers, repeats=_REPEATS.value, batch_size=_BATCH_SIZE.value,
                        rows=rows))
  print("\n" + format_table(rows, COLUMNS))
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
