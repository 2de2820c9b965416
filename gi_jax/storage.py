"""Fitted Gaussians on disk (``.npz``) and atomic file writes.

The ``.npz`` holds the raw arrays of :class:`gi_jax.Gaussians` with the image size and
parameterisation, so ``load_gaussians`` gives back exactly what ``render`` needs: the image size is
the set's canvas size, so a render at another size scales it correctly.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile

import numpy as np

from gi_jax import errors
from gi_jax.gaussians import Gaussians

FORMAT = "gi_jax.gaussians/1"


def _umask() -> int:
  mask = os.umask(0)  # the only portable way to read it is to set it
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
  """Yields a temporary path beside ``path``; renames it onto ``path`` only if the block succeeds.

  Readers never see a half-written file, and a failure leaves nothing behind. The file gets the
  permissions a plain ``open`` would give it under the process's umask (the temporary file is made
  0600).
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def check_writable(path: str | os.PathLike) -> None:
  """Raises InvalidInputError where :func:`atomic_path` could not write ``path``: it names a
  folder, or the nearest existing folder above it is not a writable folder. Call it before long
  work, so that the work is not lost at the end.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise errors.InvalidInputError(f"{path}: is a folder; give a file name")
  existing = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not (os.path.isdir(existing) and _can_create_in(existing)):
    raise errors.InvalidInputError(f"{path}: cannot write there ({existing} is not a writable "
                                   "folder)")


def _can_create_in(folder: str) -> bool:
  # Permission bits do not tell root (nor anyone, on a read-only or virtual file system such as
  # /proc) that a write will fail; creating a file and removing it does.
  try:
    with tempfile.TemporaryFile(dir=folder):
      return True
  except OSError:
    return False


def save_gaussians(path, gaussians: Gaussians, height: int, width: int) -> None:
  """Writes ``gaussians`` (one set, or a batch) and the image size to ``path`` atomically.

  Raises:
    InvalidInputError: the set is invalid, or carries a canvas size other than
      ``height`` × ``width`` (the file would then misstate the size its covariances are in).
  """
  gaussians.validate()
  if gaussians.canvas_size not in (None, (height, width)):
    raise errors.InvalidInputError(
        f"these Gaussians were fitted at {gaussians.canvas_size[0]}×{gaussians.canvas_size[1]}, "
        f"not {height}×{width}; save them with their own size")
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, format=np.asarray(FORMAT),
               parameterization=np.asarray(gaussians.parameterization),
               height=np.asarray(height), width=np.asarray(width),
               means_raw=np.asarray(gaussians.means_raw), cov_raw=np.asarray(gaussians.cov_raw),
               colors=np.asarray(gaussians.colors))


def load_gaussians(path) -> tuple[Gaussians, int, int]:
  """Reads a file written by :func:`save_gaussians`.

  Returns:
    ``(gaussians, height, width)``; the Gaussians carry ``(height, width)`` as their canvas size.

  Raises:
    GIError: if the file is missing, not such a file, or corrupt.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.InvalidInputError(f"{path}: no such Gaussians file")
  try:
    with np.load(path, allow_pickle=False) as data:
      if str(data["format"]) != FORMAT:
        raise errors.InvalidInputError(f"{path}: not a {FORMAT} file")
      height, width = int(data["height"]), int(data["width"])
      gaussians = Gaussians(data["means_raw"], data["cov_raw"], data["colors"],
                            str(data["parameterization"]), (height, width))
  except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
    if isinstance(e, errors.GIError):
      raise
    raise errors.InvalidInputError(f"{path}: corrupt Gaussians file ({e})") from None
  return gaussians.validate(), height, width
