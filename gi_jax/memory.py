"""How much memory the default device has, so oversized work fails early with a clear message."""

from __future__ import annotations

import os

import jax

from gi_jax import binning, errors, raster_reference


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


def estimate_bytes_per_image(num_gaussians: int, height: int, width: int,
                             capacity: int | None = None) -> int:
  """Device bytes one image of a batch needs while fitting (a conservative computed footprint).

  Terms, in 4-byte words:

  - per Gaussian, 128: parameters (8) with the Adan state, gradient and update, the projection and
    its gradient, and the loop's input and output copies;
  - per intersection slot, 16: ids, sort keys and their sorted copies;
  - per (tile-padded) pixel, 20: target, image, gradient and tile accumulators;
  - 12 blocks of [CHUNK intersections × 256 pixels]: the reference rasterizer's loop buffers,
    forward and backward (``raster_reference.CHUNK``).

  Against XLA's ``memory_analysis()`` of the compiled training call (reference backend with
  CHUNK = 1024, CPU: arguments + outputs + temporaries) this is 1.5-2.7× for 100-20,000 Gaussians
  on 32²-256² images, and 2.1× for 70,000 Gaussians on 768×512 (112 MiB estimated, 54 MiB compiled;
  docs/design.md §8 measured an 85 MiB peak for that on an H100).

  Args:
    num_gaussians: N.
    height: image height.
    width: image width.
    capacity: intersection capacity (default: 8 per Gaussian, fitting's usual worst case).

  Returns:
    Estimated bytes.
  """
  grid = binning.TileGrid(height, width)
  if capacity is None:
    capacity = binning.default_capacity(num_gaussians, grid)
  pixels = grid.num_tiles * binning.TILE_PIXELS
  chunk = raster_reference.CHUNK * binning.TILE_PIXELS
  return 4 * (128 * num_gaussians + 16 * capacity + 20 * pixels + 12 * chunk)


def check_fit_fits(num_gaussians: int, height: int, width: int,
                   device: jax.Device | None = None) -> None:
  """Raises ImageTooLargeError when fitting one image cannot fit on the device (before any of
  it is allocated: an absurd N fails here, not in the kernel's out-of-memory killer)."""
  check_fits(estimate_bytes_per_image(num_gaussians, height, width),
             f"fitting {num_gaussians} Gaussians to a {width}×{height} image", device)
