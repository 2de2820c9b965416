"""How much memory the devices have and how much a fit needs, so oversized work fails early with a
clear message and batches are sized to fit."""

from __future__ import annotations

import math
import os
from typing import Sequence

import jax

from gi_jax import binning, errors, raster_reference

# Fraction of free device memory that batch sizing plans to use: XLA's own buffers and
# fragmentation need the rest.
MEMORY_HEADROOM = 0.7


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
                             capacity: int | None = None, channels: int = 3) -> int:
  """Device bytes one image of a batch needs while fitting (a conservative computed footprint).

  Terms, in 4-byte words:

  - per Gaussian, 16 per parameter (5 + C: 128 for RGB): the parameters with the Adan state,
    gradient and update, the projection and its gradient, and the loop's input and output copies;
  - per intersection slot, 16: ids, sort keys and their sorted copies;
  - per (tile-padded) pixel, 20 for up to three channels and 20/3 more per further channel:
    target, image, gradient and tile accumulators;
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
    channels: C, the colour channels.

  Returns:
    Estimated bytes.
  """
  grid = binning.TileGrid(height, width)
  if capacity is None:
    capacity = binning.default_capacity(num_gaussians, grid)
  pixels = grid.num_tiles * binning.TILE_PIXELS
  chunk = raster_reference.CHUNK * binning.TILE_PIXELS
  per_pixel = -(-20 * max(int(channels), 3) // 3)
  return 4 * (16 * (5 + int(channels)) * num_gaussians + 16 * capacity + per_pixel * pixels +
              12 * chunk)


def check_fit_fits(num_gaussians: int, height: int, width: int,
                   device: jax.Device | None = None, channels: int = 3) -> None:
  """Raises ImageTooLargeError when fitting one image cannot fit on the device (before any of
  it is allocated: an absurd N fails here, not in the kernel's out-of-memory killer)."""
  check_fits(estimate_bytes_per_image(num_gaussians, height, width, channels=channels),
             f"fitting {num_gaussians} Gaussians to a {width}×{height} image", device)


def _free_bytes_per_device(devices: Sequence[jax.Device]) -> int | None:
  """The smallest free memory of ``devices``; CPU devices share host RAM, so it is divided."""
  free = [device_free_bytes(d) for d in devices]
  if any(f is None for f in free):
    return None
  smallest = min(free)
  if devices[0].platform == "cpu":
    smallest //= max(1, len([d for d in jax.local_devices() if d.platform == "cpu"]))
  return smallest


def max_batch_size(num_gaussians: int, height: int, width: int, *,
                   num_devices: int | None = None, channels: int = 3) -> int | None:
  """The largest batch whose estimated footprint fits in free device memory (None if unknown).

  Args:
    num_gaussians: N.
    height: image height.
    width: image width.
    num_devices: devices the batch is sharded over (default: all of them).
    channels: C, the colour channels.

  Returns:
    A batch size (0 when not even one image per device fits), or None when free memory is unknown.
  """
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  free = _free_bytes_per_device(devices)
  if free is None:
    return None
  per_image = estimate_bytes_per_image(num_gaussians, height, width, channels=channels)
  return int(free * MEMORY_HEADROOM // per_image) * len(devices)


def check_batch_fits(batch_size: int, num_gaussians: int, height: int, width: int,
                     num_devices: int, channels: int = 3) -> None:
  """Raises ImageTooLargeError, naming a batch size that would fit, when a batch cannot fit.

  Args:
    batch_size: images in the batch (including padding).
    num_gaussians: N.
    height: image height.
    width: image width.
    num_devices: devices the batch is sharded over.
    channels: C, the colour channels.
  """
  devices = jax.devices()[:num_devices]
  free = _free_bytes_per_device(devices)
  if free is None:
    return
  per_device = math.ceil(batch_size / num_devices)
  need = per_device * estimate_bytes_per_image(num_gaussians, height, width, channels=channels)
  if need <= free * MEMORY_HEADROOM:
    return
  fits = max_batch_size(num_gaussians, height, width, num_devices=num_devices, channels=channels)
  what = (f"a batch of {batch_size} {width}×{height} images with {num_gaussians} Gaussians each "
          f"needs about {need / 2**30:.2f} GiB per device ({per_device} images on each of "
          f"{num_devices}), but about {free * MEMORY_HEADROOM / 2**30:.2f} GiB can be used")
  if fits:
    raise errors.ImageTooLargeError(f"{what}; batch_size={fits} would fit")
  raise errors.ImageTooLargeError(
      f"{what}; not even one image per device fits: use fewer Gaussians or smaller images")


def auto_batch_size(num_images: int, num_gaussians: int, height: int, width: int,
                    channels: int = 3) -> int:
  """The batch size ``"auto"`` stands for: all images if they fit, else the largest that fits.

  Rounded down to a multiple of the device count when it spans them all, so no device idles on
  padding.

  Args:
    num_images: images to fit (of one size).
    num_gaussians: N.
    height: image height.
    width: image width.
    channels: C, the colour channels.

  Returns:
    A batch size >= 1 (``num_images`` when free memory is unknown).

  Raises:
    ImageTooLargeError: not even one image fits.
  """
  fits = max_batch_size(num_gaussians, height, width, channels=channels)
  if fits is None:
    return num_images
  if fits < 1:
    check_batch_fits(1, num_gaussians, height, width, 1, channels)  # raises with the numbers
  size = min(num_images, fits)
  num_devices = len(jax.devices())
  if size >= num_devices:
    size -= size % num_devices
  return max(1, size)
