"""Rate control by target bits per pixel: the number of Gaussians whose file is about that size.

A file's size is set by N, but what users ask for is a rate. Its bits per Gaussian hardly vary
between images at one N (±2% over Kodak): fixed costs (header, codebooks, entropy models) are
shared out over N, and a position costs about log2 of the pixels per Gaussian once bits-back
ordering has taken the order back. So a three-number model predicts a file's size before any
fitting::

  bits(N) = fixed_bits + N · (bits_per_gaussian + position_bits · log2(H·W / N))

:data:`OURS_RATE` is that model fitted (by ``experiments/fit_rate_model.py``) to 96 files: 24
Kodak images at N = 800, 3,000, 5,000, 9,000, :data:`~gi_jax.codec.pipeline.OURS` at the CPU step
counts without wide positions (docs/codec_experiments.md, "Rate control"). It
predicts each of those files within 5%, 1.1% at the median. Wide positions
(:class:`~gi_jax.codec.pipeline.WidePositions`, ``OURS``'s at low rates) shrink a file by a few
per cent at every N measured, so where they apply the model is multiplied by
:data:`WIDE_FACTOR`, the median ratio of 36 pairs of files with and without them. It holds for
settings that quantize and code like ``OURS``; :func:`rate_model` refuses the others rather than
guess.

One image's bits per Gaussian differ from that average by a few per cent, and by about the same
factor at other N: :meth:`RateModel.corrected` rescales the model to a file just made, and
:func:`encode_for_bpp` with ``passes=2`` encodes again at the N the first file's size calls for
(twice the time, half the miss).

Example::

  n = codec.rate_model(codec.OURS).gaussians_for_bpp(0.3, height, width)
  encoded = codec.encode_image(image, n, steps=1000, finetune_steps=2000)
  encoded.bpp  # about 0.3
  # or, with a second pass that corrects the first one's miss:
  encoded = codec.encode_for_bpp(image, 0.3, 1000, 2000, passes=2).encoded
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, NamedTuple

from gi_jax import errors
from gi_jax.codec.format import MAX_GAUSSIANS, check_format_limits
from gi_jax.codec.pipeline import OURS, CodecSettings, EncodedImage, WidePositions, encode_image
from gi_jax.fitting import check_target_image
from gi_jax.gaussians import check_count


def _check_positive_number(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
      or value <= 0:
    raise errors.InvalidInputError(f"{name} must be a positive number, got {value!r}")


# The settings fields that change what a Gaussian costs in the file (not only how well it fits).
_RATE_FIELDS = ("quantizers", "parameterization", "bits_back", "codebook_sizes", "refine")


class RateModel(NamedTuple):
  """Predicted size of a file: ``fixed_bits + N·(bits_per_gaussian + position_bits·log2(H·W/N))``,
  times ``wide_factor`` where the file has wide positions.

  Attributes:
    fixed_bits: bits every file pays whatever its N (header, codebooks, entropy models).
    bits_per_gaussian: bits per Gaussian apart from the position term.
    position_bits: bits per Gaussian per doubling of the pixels per Gaussian.
    measured_pixels_per_gaussian: the range of H·W/N the model was fitted on; outside it the
      prediction is an extrapolation.
    wide_factor: the size of a file with wide positions over the same file's without them.
    wide: which files have wide positions (:class:`~gi_jax.codec.pipeline.WidePositions`);
      None: none.
  """
  fixed_bits: float
  bits_per_gaussian: float
  position_bits: float
  measured_pixels_per_gaussian: tuple[float, float]
  wide_factor: float = 1.0
  wide: WidePositions | None = None

  def bits(self, num_gaussians: int, height: int, width: int) -> float:
    """The predicted file size in bits."""
    bits = self.fixed_bits + num_gaussians * (
        self.bits_per_gaussian + self.position_bits * math.log2(height * width / num_gaussians))
    wide = self.wide is not None and self.wide.applies(height, width, num_gaussians)
    return bits * self.wide_factor if wide else bits

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
    _check_positive_number("bpp", bpp)
    check_format_limits(height, width)
    target = bpp * height * width
    if self.bits(1, height, width) > target:
      raise errors.InvalidInputError(
          f"{bpp:g} bpp is below the smallest {height}×{width} file "
          f"({self.bpp(1, height, width):.4g} bpp, one Gaussian)")
    if self.bits(MAX_GAUSSIANS, height, width) < target:
      raise errors.InvalidInputError(
          f"{bpp:g} bpp needs more than the {MAX_GAUSSIANS} Gaussians a file holds")
    # bits(N) increases with N over [1, MAX_GAUSSIANS] (a jump up where wide positions stop):
    # find the last N at or under the target.
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

  def corrected(self, num_bits: float, num_gaussians: int, height: int, width: int
                ) -> "RateModel":
    """This model scaled to predict ``num_bits`` for a file of ``num_gaussians`` Gaussians.

    An image codes a few per cent above or below the fitted average at every N alike: on the
    96 Kodak files the model was fitted to, the model corrected by one N's file misses the next N's
    by 0.6–0.8% at the median instead of 1.0–1.3%, by 2.4% at most instead of 4.2%.

    Raises:
      InvalidInputError: ``num_bits`` is not a positive number or ``num_gaussians`` not a count.
    """
    _check_positive_number("num_bits", num_bits)
    if check_count(num_gaussians) > MAX_GAUSSIANS:
      raise errors.InvalidInputError(
          f"num_gaussians must be at most {MAX_GAUSSIANS}, got {num_gaussians}")
    scale = num_bits / self.bits(num_gaussians, height, width)
    return self._replace(fixed_bits=self.fixed_bits * scale,
                         bits_per_gaussian=self.bits_per_gaussian * scale,
                         position_bits=self.position_bits * scale)


# Fitted by experiments/fit_rate_model.py (least squares on bits, 96 files, all without wide
# positions).
_WITHOUT_WIDE = RateModel(fixed_bits=2498.0, bits_per_gaussian=30.84, position_bits=0.649,
                          measured_pixels_per_gaussian=(43.6, 491.6))
# Wide positions at σ >= 2 px shrink a file by 2.2-5.6%, at every N measured (800-9,000 on Kodak):
# the median ratio over 36 pairs on 16 Kodak images (docs/codec_experiments.md).
WIDE_FACTOR = 0.957
_WIDE_SIGMA = 2.0


def rate_model(settings: CodecSettings = OURS) -> RateModel:
  """The rate model of ``settings``.

  Raises:
    InvalidInputError: the settings quantize or code differently from :data:`OURS` (the only
      settings measured; wide positions on or off, at σ >= 2 px from any number of pixels per
      Gaussian), e.g. :data:`~gi_jax.codec.pipeline.PAPER`'s float16 positions.
  """
  wide = settings.wide_positions  # the rest is compared without it
  settings = dataclasses.replace(settings, wide=None, quantizers=dataclasses.replace(
      settings.quantizers, wide_sigma=0.0))
  differ = [f for f in _RATE_FIELDS if getattr(settings, f) != getattr(OURS, f)]
  if wide is not None and wide.sigma != _WIDE_SIGMA:
    differ.append(f"wide.sigma (measured: {_WIDE_SIGMA:g})")
  if differ:
    raise errors.InvalidInputError(
        "no rate model for these settings (they differ from the measured default in "
        f"{', '.join(differ)}): give the number of Gaussians instead")
  if wide is None:
    return _WITHOUT_WIDE
  return _WITHOUT_WIDE._replace(wide_factor=WIDE_FACTOR, wide=wide)


OURS_RATE = rate_model(OURS)


class RatePass(NamedTuple):
  """One encode of :func:`encode_for_bpp`: its N, the size predicted for it, the size it made and
  its wall time."""
  num_gaussians: int
  predicted_bpp: float
  bpp: float
  encode_seconds: float


class BppEncoding(NamedTuple):
  """The outcome of :func:`encode_for_bpp`.

  Attributes:
    encoded: the kept encode, the one whose file is closest to the target.
    passes: every encode made, in order.
  """
  encoded: EncodedImage
  passes: tuple[RatePass, ...]


def encode_for_bpp(image, bpp: float, steps: int, finetune_steps: int, *, passes: int = 1,
                   settings: CodecSettings = OURS, seed: int = 0, backend: str = "auto",
                   progress: bool | Callable[[dict], None] = False,
                   log: Callable[[str], None] | None = None) -> BppEncoding:
  """Compresses an image into a file of about ``bpp`` bits per pixel.

  The first pass encodes at the N of :func:`rate_model`; each further pass corrects the model by
  the last file's size (:meth:`RateModel.corrected`) and encodes at its N, unless that N has been
  encoded already. The file closest to the target is kept.

  Args:
    image: [H, W, 3] float image in [0, 1].
    bpp: the target bits per pixel.
    steps, finetune_steps, settings, seed, backend, progress: as for
      :func:`~gi_jax.codec.pipeline.encode_image`.
    passes: the most encodes to make (each costs a whole encode).
    log: called with a line before each pass and when a pass is skipped (default: silent).

  Returns:
    A :class:`BppEncoding`.

  Raises:
    InvalidInputError: as :meth:`RateModel.gaussians_for_bpp` and :func:`rate_model`, or
      ``passes`` is not a positive count.
  """
  if isinstance(passes, bool) or not isinstance(passes, numbers.Integral) or passes < 1:
    raise errors.InvalidInputError(f"passes must be a positive count, got {passes!r}")
  log = log or (lambda line: None)
  image = check_target_image(image)
  height, width = image.shape[:2]
  model = rate_model(settings)
  n = model.gaussians_for_bpp(bpp, height, width)
  made: list[tuple[RatePass, EncodedImage]] = []
  while True:
    low, high = model.measured_pixels_per_gaussian
    caveat = "" if model.measured(n, height, width) else (
        f"; {height * width / n:.0f} pixels per Gaussian is outside the {low:.0f} to {high:.0f} "
        "the model was measured on, expect a larger miss")
    predicted = model.bpp(n, height, width)
    log(f"pass {len(made) + 1}: {n} Gaussians (predicted {predicted:.4f} bpp{caveat})")
    encoded = encode_image(image, n, steps, finetune_steps, settings=settings, seed=seed,
                           backend=backend, progress=progress)
    made.append((RatePass(n, predicted, encoded.bpp, encoded.encode_seconds), encoded))
    if len(made) == passes:
      break
    model = model.corrected(8 * len(encoded.data), n, height, width)
    try:
      n = model.gaussians_for_bpp(bpp, height, width)
    except errors.InvalidInputError as e:
      log(f"pass {len(made) + 1} skipped: {e}")
      break
    if any(n == p.num_gaussians for p, _ in made):
      log(f"pass {len(made) + 1} skipped: the corrected model calls for {n} Gaussians, "
          "already encoded")
      break
  index = min(range(len(made)), key=lambda i: abs(made[i][0].bpp - bpp))
  if len(made) > 1:
    log(f"kept pass {index + 1} of {len(made)}: " + ", ".join(
        f"{p.num_gaussians} Gaussians {p.bpp:.4f} bpp ({p.encode_seconds:.1f} s)" for p, _ in made))
  return BppEncoding(made[index][1], tuple(p for p, _ in made))
