"""How much memory the default device has, so oversized work fails early with a clear message."""

from __future__ import annotations

import os

import jax

from gi_jax import errors


def _memory_stats(device: jax.Device) -> dict:
  try:
    return device.memory_stats() or {}
  except Exception:  # some backends do not implement memory_stats
    return {}


def device_memory_bytes(device: jax.Device | None = None) -> int | None:
  """Bytes the device can allocate in total (host RAM for CPU devices), or None if unknown."""
  device = device or jax.devices()[0]
  stats = _memory_stats(device)
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if device.platform == "cpu":
    try:
      return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
      return None
  return None


def peak_bytes_in_use() -> int | None:
  """The process's peak device memory so far (max over local devices), or None if not reported.

  XLA never resets the peak, so after several fits it bounds the largest of them; the dataset path
  fits the Gaussian counts in increasing order so each count's reading is its own peak.
  """
  peaks = [int(stats["peak_bytes_in_use"]) for stats in map(_memory_stats, jax.local_devices())
           if stats.get("peak_bytes_in_use") is not None]
  return max(peaks) if peaks else None


def device_free_bytes(device: jax.Device | None = None) -> int | None:
  """Bytes still free on the device, or None if unknown."""
  device = device or jax.devices()[0]
  stats = _memory_stats(device)
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  return device_memory_bytes(device)


def check_fits(nbytes: int, what: str, device: jax.Device | None = None) -> None:
  """Raises ImageTooLargeError when ``nbytes`` cannot fit on the device.

  Args:
    nbytes: an estimate of the bytes the work needs at once.
    what: a description for the message, e.g. ``"a 100000×100000 image"``.
    device: the device (default: the first one).
  """
  limit = device_memory_bytes(device)
  if limit is not None and nbytes > limit:
    raise errors.ImageTooLargeError(
        f"{what} needs about {nbytes / 2**30:.1f} GiB but the device has "
        f"{limit / 2**30:.1f} GiB")
