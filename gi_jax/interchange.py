"""Gaussians in and out: the official GaussianImage code's parameter layout, and PLY for viewers.

**The official layout.** The GaussianImage reference code (github.com/Xinjie-Q/GaussianImage,
``gaussianimage_cholesky.py`` and ``gaussianimage_rs.py``) saves ``model.state_dict()`` with
``torch.save``. Its entries, all float32 (N Gaussians):

================  ==========  =================================================================
name              shape       meaning
================  ==========  =================================================================
``_xyz``          [N, 2]      pre-tanh position (x, y): pixel ``0.5·W·(tanh(x) + 1)``, likewise y
``_cholesky``     [N, 3]      Cholesky model: ``(l11, l21, l22) = _cholesky + cholesky_bound``
``cholesky_bound`` [1, 3]     Cholesky model buffer, ``(0.5, 0, 0.5)``
``_scaling``      [N, 2]      RS model: scales ``|_scaling + bound|``
``_rotation``     [N, 1]      RS model: angle ``2π·sigmoid(_rotation)`` of glm's ``rotmat2d``
``bound``         [1, 2]      buffer ``(0.5, 0.5)`` (read by the RS model only)
``_features_dc``  [N, 3]      colour, used as is
``_opacity``      [N, 1]      buffer of ones (opacity is folded into colour)
``background``    [3]         Cholesky model buffer of ones; the summation renderer ignores it
================  ==========  =================================================================

A quantization-aware checkpoint (``train_quantize.py``) adds its quantizers' state under
``xyz_quantizer.``, ``cholesky_quantizer.``, ``scaling_quantizer.``, ``rotation_quantizer.`` and
``features_dc_quantizer.``; our codec learns its own (:mod:`gi_jax.codec`), so importing such a
checkpoint needs ``drop_quantizer_state=True``, and takes its float parameters.

This is our own layout up to names (docs/design.md §1), with one sign: the reference's
``rotmat2d(θ)`` is ``[[cos θ, sin θ], [−sin θ, cos θ]]``, ours rotates by +θ, so ours is its
``−θ``: ``rot_raw = −_rotation`` (``sigmoid(−r) = 1 − sigmoid(r)``), exactly. Renders then agree
as docs/design.md §6 says they do (every Gaussian of a tile, the α ≥ 1/255 ellipse's tiles).

Conversion, without torch in gi_jax's dependencies (torch on the side that has it)::

  # official checkpoint -> .npz that load_official reads
  import numpy as np, torch
  state = torch.load("gaussian_model.pth.tar", map_location="cpu")
  np.savez("official.npz", **{k: v.numpy() for k, v in state.items()})

  # .npz from save_official -> checkpoint the reference code loads (num_points = N)
  state = {k: torch.from_numpy(v) for k, v in np.load("official.npz").items()}
  torch.save(state, "gaussian_model.pth.tar")

**PLY.** :func:`save_ply` writes a binary little-endian PLY of 2D Gaussians, one ``vertex`` element
per Gaussian, float32 properties: ``x, y, z`` (pixels, x right, y down, ``z = 0``),
``cov_xx, cov_xy, cov_yy`` (covariance, pixels²), ``scale_0, scale_1`` (standard deviations along the
principal axes, pixels, major first), ``rot`` (angle of the major axis from +x towards +y, radians),
``red, green, blue`` (the colours as fitted, not clipped: the rendered colour sums them weighted
by ``exp(−½ dᵀΣ⁻¹d)``), ``opacity`` (1). A set of C ≠ 3 channels keeps every channel: with C < 3
the first channel (grey) fills ``red, green, blue``, with C > 3 the first three do, and each channel
not held there follows as ``channel_<i>`` (``i`` from 0: ``channel_1`` is the alpha of a grey +
alpha set, ``channel_3`` that of RGBA). Comments in the header give ``width``, ``height`` and
``channels``. :func:`load_ply` reads such a file back.

The official layout is RGB only (its ``_features_dc`` is [N, 3]): :func:`to_official` refuses a set
of another channel count rather than write a checkpoint the reference code cannot load.
"""

from __future__ import annotations

from collections.abc import Mapping
import os

import numpy as np

from gi_jax import errors
from gi_jax.gaussians import CHOLESKY_OFFSET, SCALE_OFFSET, Gaussians
from gi_jax.storage import atomic_path

OFFICIAL_MODELS = ("cholesky", "rs")
QUANTIZER_PREFIXES = ("xyz_quantizer.", "cholesky_quantizer.", "scaling_quantizer.",
                      "rotation_quantizer.", "features_dc_quantizer.")
_COMMON = ("_xyz", "_features_dc", "_opacity", "bound")
_MODEL_KEYS = {"cholesky": _COMMON + ("_cholesky", "cholesky_bound", "background"),
               "rs": _COMMON + ("_scaling", "_rotation")}
PLY_FIELDS = ("x", "y", "z", "cov_xx", "cov_xy", "cov_yy", "scale_0", "scale_1", "rot", "red",
              "green", "blue", "opacity")


def _extra_channels(channels: int) -> range:
  """The channels that ``red, green, blue`` do not hold (they hold grey below 3 channels)."""
  return range(1 if channels < 3 else 3, channels)


def ply_field_names(channels: int) -> tuple[str, ...]:
  """The PLY's columns for a set of ``channels`` colour channels: :data:`PLY_FIELDS`, then a
  ``channel_<i>`` column for each channel that ``red, green, blue`` do not hold."""
  return PLY_FIELDS + tuple(f"channel_{i}" for i in _extra_channels(channels))


def _one_set(gaussians: Gaussians) -> Gaussians:
  gaussians.validate()
  if gaussians.means_raw.ndim != 2:
    raise errors.InvalidInputError(f"one Gaussian set [N, ...] is exported at a time, got a batch "
                                   f"of shape {gaussians.means_raw.shape[:-1]}")
  return gaussians


def _rs_from_covariance(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Scales (major first) and angle in (π/2, 3π/2] with ``Σ = R(θ) diag(s²) R(θ)ᵀ``, float64."""
  a, b, c = cov[:, 0], cov[:, 1], cov[:, 2]
  mid, half = 0.5 * (a + c), np.hypot(0.5 * (a - c), b)
  scales = np.sqrt(np.maximum(np.stack([mid + half, mid - half], axis=1), 0.0))
  # θ of the major axis is defined up to π; adding π puts it mid-range of 2π·sigmoid, so its
  # logit stays far from ±infinity.
  theta = 0.5 * np.arctan2(2.0 * b, a - c) + np.pi
  return scales, theta


def to_official(gaussians: Gaussians, model: str | None = None) -> dict[str, np.ndarray]:
  """One Gaussian set as the official code's ``state_dict`` entries (NumPy, float32).

  Args:
    gaussians: one set, [N, ...] fields.
    model: ``"cholesky"`` (``GaussianImage_Cholesky``) or ``"rs"`` (``GaussianImage_RS``);
      default: the set's own parameterisation. The other one is converted through the covariance
      (exact up to float rounding).

  Returns:
    A dict ``name -> array`` as the module's table lists, for ``np.savez`` or ``torch.save``.

  Raises:
    errors.InvalidInputError: a batch, an invalid set, an unknown model, or colours of other than
      3 channels (the official code is RGB only).
  """
  gaussians = _one_set(gaussians)
  model = gaussians.parameterization if model is None else model
  if model not in OFFICIAL_MODELS:
    raise errors.InvalidInputError(f"model must be one of {OFFICIAL_MODELS}, got {model!r}")
  if gaussians.num_channels != 3:
    raise errors.InvalidInputError(
        f"the official layout is RGB only (_features_dc [N, 3]); this set has "
        f"{gaussians.num_channels} colour channels (save_gaussians or save_ply keep them)")
  n = gaussians.num_gaussians
  f32 = lambda x: np.asarray(x, np.float32)
  state = dict(_xyz=f32(gaussians.means_raw), _features_dc=f32(gaussians.colors),
               _opacity=np.ones((n, 1), np.float32),
               bound=np.full((1, 2), SCALE_OFFSET, np.float32))
  if model == "cholesky":
    state.update(_cholesky=f32(gaussians.to_cholesky().cov_raw),
                 cholesky_bound=np.asarray([CHOLESKY_OFFSET], np.float32),
                 background=np.ones(3, np.float32))
  elif gaussians.parameterization == "rs":
    state.update(_scaling=f32(gaussians.scale_raw), _rotation=-f32(gaussians.rot_raw))
  else:
    scales, theta = _rs_from_covariance(np.asarray(gaussians.covariance, np.float64))
    p = theta / (2.0 * np.pi)
    state.update(_scaling=f32(scales - SCALE_OFFSET),
                 _rotation=f32(-(np.log(p) - np.log1p(-p)))[:, None])
  return state


def from_official(state: Mapping[str, np.ndarray], *,
                  drop_quantizer_state: bool = False) -> Gaussians:
  """The Gaussians of an official ``state_dict`` (as NumPy arrays, e.g. ``np.load`` of an .npz).

  The model is recognised by its entries (``_cholesky`` or ``_scaling``/``_rotation``); a
  checkpoint's own ``cholesky_bound`` or ``bound`` is honoured, so the set renders what the
  checkpoint renders.

  Args:
    state: ``name -> array``, as the module's table lists.
    drop_quantizer_state: accept (and leave out) a quantization-aware checkpoint's quantizer
      entries; without it they are an error, so nothing is dropped unasked.

  Returns:
    A ``Gaussians`` (float32) in the checkpoint's parameterisation.

  Raises:
    errors.InvalidInputError: a missing, unknown or misshapen entry, an opacity other than 1
      (the summation renderer folds opacity into colour), or quantizer state unasked.
  """
  names = set(state)
  quantizer = sorted(k for k in names if k.startswith(QUANTIZER_PREFIXES))
  if quantizer and not drop_quantizer_state:
    raise errors.InvalidInputError(
        f"the checkpoint holds quantizer state ({', '.join(quantizer[:3])}"
        f"{', ...' if len(quantizer) > 3 else ''}); pass drop_quantizer_state=True to import its "
        "float parameters without it")
  names -= set(quantizer)
  if "_cholesky" in names:
    model = "cholesky"
  elif "_scaling" in names or "_rotation" in names:
    model = "rs"
  else:
    raise errors.InvalidInputError(
        f"not an official GaussianImage checkpoint: neither _cholesky nor _scaling/_rotation in "
        f"{sorted(names)}")
  required = {"_xyz", "_features_dc"} | ({"_cholesky"} if model == "cholesky" else
                                         {"_scaling", "_rotation"})
  if missing := required - names:
    raise errors.InvalidInputError(f"official {model} checkpoint lacks {sorted(missing)}")
  if unknown := names - set(_MODEL_KEYS[model]):
    raise errors.InvalidInputError(f"official {model} checkpoint has unknown entries "
                                   f"{sorted(unknown)}")
  arrays = {k: np.asarray(state[k], np.float32) for k in names}
  xyz = arrays["_xyz"]
  if xyz.ndim != 2 or xyz.shape[1] != 2 or xyz.shape[0] < 1:
    raise errors.InvalidInputError(f"_xyz must be [N, 2] with N >= 1, got {xyz.shape}")
  n = xyz.shape[0]
  expected = {"_features_dc": (n, 3), "_opacity": (n, 1), "_cholesky": (n, 3),
              "_scaling": (n, 2), "_rotation": (n, 1), "bound": (1, 2), "cholesky_bound": (1, 3),
              "background": (3,)}
  for name in names:
    if name in expected and arrays[name].shape != expected[name]:
      raise errors.InvalidInputError(f"{name} must have shape {expected[name]} for N={n}, got "
                                     f"{arrays[name].shape}")
  if "_opacity" in arrays and not np.all(arrays["_opacity"] == 1.0):
    raise errors.InvalidInputError("_opacity must be all ones (the summation renderer folds "
                                   "opacity into colour)")
  if model == "cholesky":
    chol = _rebound(arrays["_cholesky"], arrays.get("cholesky_bound"), CHOLESKY_OFFSET)
    gaussians = Gaussians.cholesky(xyz, chol, arrays["_features_dc"])
  else:
    scale = _rebound(arrays["_scaling"], arrays.get("bound"), (SCALE_OFFSET, SCALE_OFFSET))
    gaussians = Gaussians.rs(xyz, scale, -arrays["_rotation"], arrays["_features_dc"])
  return gaussians.validate()


def _rebound(raw: np.ndarray, bound: np.ndarray | None, ours) -> np.ndarray:
  """``raw`` with the checkpoint's ``bound`` in place of our offset; untouched (to the bit) where
  they agree, as in every checkpoint the reference code writes."""
  ours = np.asarray([ours], np.float32)
  if bound is None or np.array_equal(bound, ours):
    return raw
  return raw + bound - ours


def save_official(path: str | os.PathLike, gaussians: Gaussians, model: str | None = None) -> None:
  """Writes :func:`to_official`'s entries as an ``.npz`` (atomically)."""
  state = to_official(gaussians, model)
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **state)


def load_official(path: str | os.PathLike, *, drop_quantizer_state: bool = False) -> Gaussians:
  """Reads an ``.npz`` of official entries (see the module's docstring) with
  :func:`from_official`.

  Raises:
    errors.InvalidInputError: an unreadable file, or what :func:`from_official` raises.
  """
  try:
    with np.load(path, allow_pickle=False) as data:
      state = {k: data[k] for k in data.files}
  except (OSError, ValueError) as e:
    raise errors.InvalidInputError(f"{path}: not a readable .npz ({e})") from None
  return from_official(state, drop_quantizer_state=drop_quantizer_state)


def ply_fields(gaussians: Gaussians, height: int, width: int) -> dict[str, np.ndarray]:
  """The PLY's columns (see the module's docstring), in :func:`ply_field_names` order: name -> [N]
  float32."""
  gaussians = _one_set(gaussians)
  if not (isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer))
          and height >= 1 and width >= 1):
    raise errors.InvalidInputError(f"height and width must be positive integers, got "
                                   f"{height}x{width}")
  means = np.asarray(gaussians.pixel_means(height, width), np.float64)
  cov = np.asarray(gaussians.covariance, np.float64)
  scales, theta = _rs_from_covariance(cov)
  colors = np.asarray(gaussians.colors, np.float64)
  n, channels = gaussians.num_gaussians, colors.shape[1]
  rgb = colors[:, [0, 0, 0] if channels < 3 else [0, 1, 2]]
  columns = dict(x=means[:, 0], y=means[:, 1], z=np.zeros(n), cov_xx=cov[:, 0],
                 cov_xy=cov[:, 1], cov_yy=cov[:, 2], scale_0=scales[:, 0], scale_1=scales[:, 1],
                 rot=np.mod(theta, np.pi), red=rgb[:, 0], green=rgb[:, 1], blue=rgb[:, 2],
                 opacity=np.ones(n))
  columns.update({f"channel_{i}": colors[:, i] for i in _extra_channels(channels)})
  return {k: columns[k].astype(np.float32) for k in ply_field_names(channels)}


def save_ply(path: str | os.PathLike, gaussians: Gaussians, height: int, width: int) -> None:
  """Writes one Gaussian set as a binary little-endian PLY of 2D Gaussians (atomically).

  Args:
    path: the file to write.
    gaussians: one set.
    height: image height in pixels.
    width: image width in pixels.

  Raises:
    errors.InvalidInputError: a batch, an invalid set or a bad size.
  """
  columns = ply_fields(gaussians, height, width)
  n = gaussians.num_gaussians
  header = ["ply", "format binary_little_endian 1.0",
            "comment gi_jax 2D Gaussians: x right, y down, pixels; z = 0",
            f"comment width {width}", f"comment height {height}",
            f"comment channels {gaussians.num_channels}", f"element vertex {n}"]
  header += [f"property float {name}" for name in columns] + ["end_header"]
  rows = np.empty(n, dtype=[(name, "<f4") for name in columns])
  for name in columns:
    rows[name] = columns[name]
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(("\n".join(header) + "\n").encode("ascii"))
      f.write(rows.tobytes())


def load_ply(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Reads a binary little-endian PLY with one ``vertex`` element of float properties.

  Returns:
    ``(columns, comments)``: name -> [N] float32, and the header's ``comment KEY VALUE`` lines
    as ``KEY -> VALUE``.

  Raises:
    errors.InvalidInputError: not such a PLY, or a truncated one.
  """
  with open(path, "rb") as f:
    data = f.read()
  end = data.find(b"end_header\n")
  if not data.startswith(b"ply\n") or end < 0:
    raise errors.InvalidInputError(f"{path}: not a PLY file")
  lines = data[:end].decode("ascii", "replace").splitlines()
  if "format binary_little_endian 1.0" not in lines:
    raise errors.InvalidInputError(f"{path}: not a binary little-endian PLY")
  names, count, comments = [], None, {}
  for line in lines:
    parts = line.split()
    if parts[:2] == ["element", "vertex"] and len(parts) == 3:
      count = int(parts[2])
    elif parts[:2] == ["property", "float"] and len(parts) == 3:
      names.append(parts[2])
    elif parts[:1] == ["comment"] and len(parts) == 3:
      comments[parts[1]] = parts[2]
  dtype = np.dtype([(name, "<f4") for name in names])
  body = data[end + len(b"end_header\n"):]
  if count is None or not names or len(body) != count * dtype.itemsize:
    raise errors.InvalidInputError(f"{path}: truncated or not a PLY of float vertices")
  rows = np.frombuffer(body, dtype)
  return {name: rows[name].copy() for name in names}, comments
