"""Tests of gi_jax.storage: atomic writes and their permissions, Gaussians as .npz."""

import os
import stat

import jax
import numpy as np
import pytest

import gi_jax
from gi_jax import storage


@pytest.fixture
def umask():
  """Sets the process umask for one test and restores it."""
  saved = os.umask(0o022)
  yield lambda mask: os.umask(mask)
  os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask):
  umask(mask)
  path = tmp_path / "out.bin"
  with storage.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(b"data")
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask
  # What a plain open makes, for comparison.
  with open(tmp_path / "plain.bin", "wb") as f:
    f.write(b"data")
  assert stat.S_IMODE(os.stat(tmp_path / "plain.bin").st_mode) == 0o666 & ~mask


def test_failed_atomic_write_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError):
    with storage.atomic_path(tmp_path / "out.bin") as tmp:
      with open(tmp, "wb") as f:
        f.write(b"half")
      raise RuntimeError("interrupted")
  assert os.listdir(tmp_path) == []


def test_check_writable_finds_what_permission_bits_do_not_tell(tmp_path):
  storage.check_writable(tmp_path / "new" / "out.bin")
  assert os.listdir(tmp_path) == []  # the check leaves nothing behind
  with pytest.raises(gi_jax.errors.InvalidInputError, match="is a folder"):
    storage.check_writable(tmp_path)
  # /proc's permission bits let root write, but nothing can be created there.
  if os.path.isdir("/proc/self"):
    with pytest.raises(gi_jax.errors.InvalidInputError, match="cannot write there"):
      storage.check_writable("/proc/gi_jax_out/out.bin")


def test_gaussians_round_trip(tmp_path, umask):
  umask(0o022)
  g = gi_jax.init_gaussians(jax.random.key(0), 7, 10, 12)
  storage.save_gaussians(tmp_path / "g.npz", g, 10, 12)
  assert stat.S_IMODE(os.stat(tmp_path / "g.npz").st_mode) == 0o644
  back, height, width = storage.load_gaussians(tmp_path / "g.npz")
  assert (height, width) == (10, 12)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
