"""Rate control by target bits per pixel: the number of Gaussians whose file is about that size.

A file's size is set by N, but what users ask for is a rate. Its bits per Gaussian hardly vary
between images at one N (±2% over Kodak): fixed costs (header, codebooks, entropy models) are
shared out over N, and a position costs about log2 of the pixels per Gaussian once bits-back
ordering has taken the order back. So a three-number model predicts a file's size before any
fitting::

  bits(N) = fixed_bits + N · (bits_per_gaussian + position_bits · log2(H·W / N))

:data:`OURS_RATE` is that model fitted to the 96 files of ``results/kodak_ft_default`` (24 Kodak
images at N = 800, 3,000, 5,000, 9,000; :data:`~gi_jax.codec.pipeline.OURS` at the CPU step
counts; ``results/kodak_ft_default/rate_model.py`` fits it): it predicts each of those files
within 5%, 1.1% at the median. It holds for settings that quantize and code like ``OURS``;
:func:`rate_model` refuses the others rather than guess.

Example::

  n = codec.rate_model(codec.OURS).gaussians_for_bpp(0.3, height, width)
  encoded = codec.encode_image(image, n, steps=1000, finetune_steps=2000)
  encoded.bpp  # about 0.3
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

from gi_jax import errors
from gi_jax.codec.format import MAX_GAUSSIANS, check_format_limits
from gi_jax.codec.pipeline import OURS, CodecSettings

# The settings fields that change what a Gaussian costs in the file (not only how well it fits).
_RATE_FIELDS = ("quantizers", "parameterization", "bits_back", "codebook_sizes", "refine")


class RateModel(NamedTuple):
  """Predicted size of a file: ``fixed_bits + N·(bits_per_gaussian + position_bits·log2(H·W/N))``.

  Attributes:
    fixed_bits: bits every file pays whatever its N (header, codebooks, entropy models).
    bits_per_gaussian: bits per Gaussian apart from the position term.
    position_bits: bits per Gaussian per doubling of the pixels per Gaussian.
    measured_pixels_per_gaussian: the range of H·W/N the model was fitted on; outside it the
      prediction is an extrapolation.
  """
  fixed_bits: float
  bits_per_gaussian: float
  position_bits: float
  measured_pixels_per_gaussian: tuple[float, float]

  def bits(self, num_gaussians: int, height: int, width: int) -> float:
    """The predicted file size in bits."""
    return self.fixed_bits + num_gaussians * (
        self.bits_per_gaussian + self.position_bits * math.log2(height * width / num_gaussians))

  def bpp(self, num_gaussians: int, height: int, width: int) -> float:
    """The predicted bits per pixel."""
    return self.bits(num_gaussians, height, width) / (height * width)

  def measured(self, num_gaussians: int, height: int, width: int) -> bool:
    """Whether H·W/N lies in the range the model was fitted on."""
    low, high = self.measured_pixels_per_gaussian
    return low <= height * width / num_gaussians <= high

  def gaussians_for_bpp(self, bpp: float, height: int, width: int) -> int:
    """The N whose predicted file is closest to ``bpp`` bits per pixel.

    Raises:
      InvalidInputError: ``bpp`` is not a positive number, is below the predicted size of a
        one-Gaussian file, or needs more Gaussians than a file holds.
      CodecError: a size no file can hold.
    """
    if isinstance(bpp, bool) or not isinstance(bpp, numbers.Real) or not math.isfinite(bpp) \
        or bpp <= 0:
      raise errors.InvalidInputError(f"bpp must be a positive number, got {bpp!r}")
    check_format_limits(height, width)
    target = bpp * height * width
    if self.bits(1, height, width) > target:
      raise errors.InvalidInputError(
          f"{bpp:g} bpp is below the smallest {height}×{width} file "
          f"({self.bpp(1, height, width):.4g} bpp, one Gaussian)")
    if self.bits(MAX_GAUSSIANS, height, width) < target:
      raise errors.InvalidInputError(
          f"{bpp:g} bpp needs more than the {MAX_GAUSSIANS} Gaussians a file holds")
    # bits(N) increases with N over [1, MAX_GAUSSIANS]: find the last N at or under the target.
    low, high = 1, MAX_GAUSSIANS
    while low < high:
      middle = (low + high + 1) // 2
      if self.bits(middle, height, width) <= target:
        low = middle
      else:
        high = middle - 1
    if low < MAX_GAUSSIANS and (self.bits(low + 1, height, width) - target
                                < target - self.bits(low, height, width)):
      return low + 1
    return low


# Fitted by results/kodak_ft_default/rate_model.py (least squares on bits, 96 files).
OURS_RATE = RateModel(fixed_bits=2498.0, bits_per_gaussian=30.84, position_bits=0.649,
                      measured_pixels_per_gaussian=(43.6, 491.6))


def rate_model(settings: CodecSettings = OURS) -> RateModel:
  """The rate model of ``settings``.

  Raises:
    InvalidInputError: the settings quantize or code differently from :data:`OURS` (the only
      settings measured), e.g. :data:`~gi_jax.codec.pipeline.PAPER`'s float16 positions.
  """
  differ = [f for f in _RATE_FIELDS if getattr(settings, f) != getattr(OURS, f)]
  if differ:
    raise errors.InvalidInputError(
        "no rate model for these settings (they differ from the measured default in "
        f"{', '.join(differ)}): give the number of Gaussians instead")
  return OURS_RATE
