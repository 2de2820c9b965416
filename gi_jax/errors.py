"""Errors raised at gi_jax's API edges.

Every user-facing failure is a subclass of :class:`GIError`, itself a ``ValueError``, so callers can
catch one type and the message always names the problem rather than surfacing a deep JAX traceback.
Warnings go through :func:`warn`, so that they name the caller's line, not ours.
"""

import os
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str) -> None:
  """Issues a ``UserWarning`` attributed to the first frame outside gi_jax.

  A fixed ``stacklevel`` points at the right line from one entry point only (``fit`` but not
  ``fit_dataset``, which reaches the same check two calls deeper); skipping the package's own
  frames points at the user's call from all of them.
  """
  warnings.warn(message, UserWarning, skip_file_prefixes=(_PACKAGE_DIR,))


class GIError(ValueError):
  """Base class of gi_jax's user-facing errors."""


class InvalidInputError(GIError):
  """An argument is impossible: a size or count below 1, a wrong shape, NaN or infinity."""


class ImageFileError(GIError):
  """An image file is missing, corrupt, or in a format or mode we do not read."""


class ImageTooLargeError(GIError):
  """An image (or batch) does not fit in the device's memory or in our int32 index space."""


class CapacityOverflowError(GIError):
  """More (tile, Gaussian) intersections than the static capacity can hold.

  Attributes:
    count: the true number of intersections.
    capacity: the static capacity that was exceeded.
  """

  def __init__(self, count: int, capacity: int):
    self.count = int(count)
    self.capacity = int(capacity)
    super().__init__(
        f"{self.count} tile-Gaussian intersections exceed the static capacity {self.capacity}; "
        f"render with capacity >= {self.count} (or capacity=None to size it automatically)")


class BinningError(GIError):
  """A :class:`gi_jax.Binning` used for Gaussians or an image size it was not made for, or after
  the Gaussians left the tiles it holds."""


class CodecError(GIError):
  """A compressed file is truncated, corrupted, or of an unknown format or version."""
