"""3D Gaussian splatting (Kerbl et al., SIGGRAPH 2023) fitted to one image under a fixed camera:
the paper's 3D-GS row of Table 1.

Each Gaussian has 59 parameters: a 3D position (3), log-scales (3), a rotation quaternion (4), an
opacity logit (1) and spherical-harmonic colour coefficients of degree 3 (16 × 3 = 48). A render
projects each Gaussian with the EWA Jacobian of a pinhole camera, sorts them by depth and
α-blends them front to back over a white background. This is a dense implementation (every pixel
against every Gaussian, in pixel chunks), exact and adequate at crop sizes; it is not a tiled
rasterizer and its speed is no measure of one.

Settings and where they come from (GaussianImage's ``gaussiansplatting_3d.py``, ``train.py`` and
``scripts/3d_gs/kodak.sh``, which run gsplat's projection and rasterizer):

- Camera (as GaussianImage calls gsplat 0.1's ``project_gaussians``): the world moved by +8 along
  z (``viewmat``), focal W/2 in x and y (90° horizontal field of view), principal point at the
  image centre, near plane 0.01. GaussianImage passes the view matrix as gsplat's projection
  matrix too, so a Gaussian's screen position is ``(W/2·(x + 1), H/2·(y + 1))``: x, y in
  [-1, 1] span the image. Its 2D covariance is the EWA one, ``J Σ Jᵀ`` with the pinhole Jacobian
  J at the view-space point (x, y, z + 8) (x/z and y/z clamped to 1.3× the half field of view),
  plus 0.3 on the diagonal (gsplat's low-pass filter). Pixel centres at (j + 0.5, i + 0.5).
- Initialisation: positions U(-1, 1)³; log-scales the log of the mean distance to the 3 nearest
  other Gaussians (all three axes); uniformly random unit quaternions; opacity 0.1
  (``logit(0.1)``); DC colour coefficients U(0, 1), the rest 0.
- Colour: SH evaluated in the direction from the camera centre (0, 0, −8) to the Gaussian (not
  differentiated through the direction), plus 0.5, clamped at 0; opacity ``sigmoid``; α capped at
  0.99 and dropped below 1/255 as in gsplat; the image clamped at 1. Dense differences from
  gsplat's tiles: gsplat stops a pixel once its transmittance falls below 1e-4 (we blend every
  Gaussian: under 1e-4 of a colour), and touches only pixels within 3σ of a Gaussian's centre
  (we keep any α ≥ 1/255, which beyond 3σ needs an opacity above 0.35).
- Loss ``0.7·L1 + 0.3·(1 − SSIM)`` (``Fusion2``), Adan at 1e-3 halved every 20,000 steps (the
  script's default ``--lr`` with ``StepLR(20000, 0.5)``), 50,000 steps (``--iterations 50000``),
  SH degree 3, no densification or pruning (the count stays N). The script sweeps N from 5,000 to
  70,000 on Kodak; which N Table 1's row used is not printed.
"""

from __future__ import annotations

import math
from typing import Callable

from flax import struct
import jax
import jax.numpy as jnp
from gi_jax import errors, metrics, optim
from gi_jax.baselines import training
from gi_jax.baselines.training import BaselineFit

NAME = "gs3d"
PARAMETERS_PER_GAUSSIAN = 59
SH_DEGREE = 3
SH_COEFFICIENTS = (SH_DEGREE + 1)**2
CAMERA_DISTANCE = 8.0
FIELD_OF_VIEW = math.pi / 2.0
NEAR_PLANE = 0.01
LOW_PASS = 0.3
MAX_ALPHA = 0.99
MIN_ALPHA = 1.0 / 255.0
INITIAL_OPACITY = 0.1
LEARNING_RATE = 1e-3
L1_WEIGHT = 0.7
PAPER_STEPS = 50_000
# Pixel × Gaussian pairs per chunk of the dense render: bounds its memory (and its backward's,
# which recomputes each chunk).
PAIRS_PER_CHUNK = 1 << 22

# Real spherical harmonics up to degree 3 (the constants of 3D-GS and gsplat).
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
       0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


@struct.dataclass
class Gaussians3D:
  """N 3D Gaussians, 59 parameters each.

  Attributes:
    means: [N, 3] world positions.
    log_scales: [N, 3] log standard deviations along the Gaussian's axes.
    quats: [N, 4] rotations (w, x, y, z), normalised when used.
    opacity_logits: [N, 1] opacities before the sigmoid.
    sh: [N, 16, 3] spherical-harmonic colour coefficients (degree 3).
  """
  means: jax.Array
  log_scales: jax.Array
  quats: jax.Array
  opacity_logits: jax.Array
  sh: jax.Array

  @property
  def num_gaussians(self) -> int:
    return int(self.means.shape[0])


def _mean_neighbour_distance(points: jax.Array, k: int = 3, chunk: int = 1024) -> jax.Array:
  """Each point's mean distance to its ``k`` nearest other points, [N] (rows in chunks, so the
  N×N distances are never held at once)."""
  n = points.shape[0]
  k = min(k, n - 1)
  if k < 1:
    return jnp.ones((n,), points.dtype)
  padded = -(-n // chunk) * chunk
  rows = jnp.pad(points, ((0, padded - n), (0, 0))).reshape(-1, chunk, 3)
  starts = jnp.arange(0, padded, chunk)

  def one(args):
    block, start = args
    d2 = jnp.sum(jnp.square(block[:, None, :] - points[None, :, :]), axis=-1)
    own = (start + jnp.arange(chunk))[:, None] == jnp.arange(n)[None, :]
    neg, _ = jax.lax.top_k(-jnp.where(own, jnp.inf, d2), k)
    return jnp.mean(jnp.sqrt(jnp.maximum(-neg, 0.0)), axis=-1)

  return jax.lax.map(one, (rows, starts)).reshape(-1)[:n]


def init_gaussians(key: jax.Array, num_gaussians: int) -> Gaussians3D:
  """GaussianImage's 3D-GS initialisation (see the module docstring)."""
  k_pos, k_u, k_v, k_w, k_dc = jax.random.split(key, 5)
  means = 2.0 * (jax.random.uniform(k_pos, (num_gaussians, 3)) - 0.5)
  distance = _mean_neighbour_distance(means)
  # A point alone, or on top of another, still gets a finite scale.
  log_scales = jnp.repeat(jnp.log(jnp.maximum(distance, 1e-7))[:, None], 3, axis=1)
  u = jax.random.uniform(k_u, (num_gaussians, 1))
  v = jax.random.uniform(k_v, (num_gaussians, 1))
  w = jax.random.uniform(k_w, (num_gaussians, 1))
  quats = jnp.concatenate([jnp.sqrt(1 - u) * jnp.sin(2 * jnp.pi * v),
                           jnp.sqrt(1 - u) * jnp.cos(2 * jnp.pi * v),
                           jnp.sqrt(u) * jnp.sin(2 * jnp.pi * w),
                           jnp.sqrt(u) * jnp.cos(2 * jnp.pi * w)], axis=-1)
  opacity_logits = jnp.full((num_gaussians, 1), math.log(INITIAL_OPACITY / (1 - INITIAL_OPACITY)))
  sh = jnp.zeros((num_gaussians, SH_COEFFICIENTS, 3)).at[:, 0, :].set(
      jax.random.uniform(k_dc, (num_gaussians, 3)))
  return Gaussians3D(means, log_scales, quats, opacity_logits, sh)


def _rotations(quats: jax.Array) -> jax.Array:
  q = quats / jnp.linalg.norm(quats, axis=-1, keepdims=True)
  r, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
  return jnp.stack([
      jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y)], -1),
      jnp.stack([2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x)], -1),
      jnp.stack([2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y)], -1),
  ], axis=-2)


def spherical_harmonics(directions: jax.Array, sh: jax.Array) -> jax.Array:
  """Colour [N, 3] of degree-3 SH coefficients [N, 16, 3] in unit ``directions`` [N, 3]."""
  x, y, z = (directions[:, i:i + 1] for i in range(3))
  xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
  basis = [jnp.full_like(x, _C0), -_C1 * y, _C1 * z, -_C1 * x,
           _C2[0] * xy, _C2[1] * yz, _C2[2] * (2 * zz - xx - yy), _C2[3] * xz,
           _C2[4] * (xx - yy),
           _C3[0] * y * (3 * xx - yy), _C3[1] * xy * z, _C3[2] * y * (4 * zz - xx - yy),
           _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
           _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy)]
  return jnp.einsum("nk,nkc->nc", jnp.concatenate(basis, axis=-1), sh)


def project(gaussians: Gaussians3D, height: int, width: int):
  """Screen-space Gaussians under the fixed camera.

  Returns:
    ``(means2d [N, 2], conics [N, 3] (a, b, c of the inverse 2D covariance), depths [N],
    colours [N, 3], opacities [N], visible [N] bool)``.
  """
  focal = 0.5 * width / math.tan(0.5 * FIELD_OF_VIEW)
  cam = gaussians.means + jnp.array([0.0, 0.0, CAMERA_DISTANCE])
  tz = cam[:, 2]
  visible = tz > NEAR_PLANE
  tz_safe = jnp.where(visible, tz, 1.0)
  # gsplat's EWA clamps the view ray to 1.3× the half field of view in each axis.
  limit_x, limit_y = 1.3 * 0.5 * width / focal, 1.3 * 0.5 * height / focal
  tx = jnp.clip(cam[:, 0] / tz_safe, -limit_x, limit_x) * tz_safe
  ty = jnp.clip(cam[:, 1] / tz_safe, -limit_y, limit_y) * tz_safe
  rotation = _rotations(gaussians.quats)
  m = rotation * jnp.exp(gaussians.log_scales)[:, None, :]
  cov3d = m @ jnp.swapaxes(m, -1, -2)
  zeros = jnp.zeros_like(tx)
  jacobian = jnp.stack([
      jnp.stack([focal / tz_safe, zeros, -focal * tx / tz_safe**2], -1),
      jnp.stack([zeros, focal / tz_safe, -focal * ty / tz_safe**2], -1)], axis=-2)
  cov2d = jacobian @ cov3d @ jnp.swapaxes(jacobian, -1, -2)
  a = cov2d[:, 0, 0] + LOW_PASS
  b = cov2d[:, 0, 1]
  c = cov2d[:, 1, 1] + LOW_PASS
  det = a * c - b * b
  visible = visible & (det > 0)
  det_safe = jnp.where(visible, det, 1.0)
  conics = jnp.stack([c / det_safe, -b / det_safe, a / det_safe], axis=-1)
  # The projection matrix is the view matrix (see the module docstring): w = 1, so the screen
  # position is the view-space x, y taken as normalised device coordinates.
  means2d = jnp.stack([0.5 * width * (cam[:, 0] + 1.0),
                       0.5 * height * (cam[:, 1] + 1.0)], axis=-1)
  camera_centre = jnp.array([0.0, 0.0, -CAMERA_DISTANCE])
  directions = jax.lax.stop_gradient(gaussians.means - camera_centre)
  directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
  colours = jnp.maximum(spherical_harmonics(directions, gaussians.sh) + 0.5, 0.0)
  opacities = jax.nn.sigmoid(gaussians.opacity_logits[:, 0])
  return means2d, conics, tz, colours, opacities, visible


def render(gaussians: Gaussians3D, height: int, width: int) -> jax.Array:
  """The image [H, W, 3]: Gaussians sorted by depth, α-blended front to back over white, clamped
  to at most 1 (colours are non-negative, so the image is in [0, 1])."""
  means2d, conics, depths, colours, opacities, visible = project(gaussians, height, width)
  order = jnp.argsort(jnp.where(visible, depths, jnp.inf))
  means2d, conics, colours = means2d[order], conics[order], colours[order]
  opacities = jnp.where(visible, opacities, 0.0)[order]
  n = means2d.shape[0]
  pixels = height * width
  chunk = max(1, min(pixels, PAIRS_PER_CHUNK // max(n, 1)))
  padded = -(-pixels // chunk) * chunk
  index = jnp.arange(padded)
  centres = jnp.stack([(index % width).astype(jnp.float32) + 0.5,
                       (index // width).astype(jnp.float32) + 0.5], axis=-1).reshape(-1, chunk, 2)

  def blend(points):
    d = points[:, None, :] - means2d[None, :, :]
    power = (-0.5 * (conics[:, 0] * d[..., 0]**2 + conics[:, 2] * d[..., 1]**2)
             - conics[:, 1] * d[..., 0] * d[..., 1])
    alpha = jnp.minimum(MAX_ALPHA, opacities * jnp.exp(jnp.minimum(power, 0.0)))
    alpha = jnp.where((power <= 0.0) & (alpha >= MIN_ALPHA), alpha, 0.0)
    # Transmittance as the exponential of a running sum of log(1 − α) (α ≤ 0.99 keeps the logs
    # finite): a cumulative sum's gradient is a reversed one, far cheaper than a product's.
    log_kept = jnp.log1p(-alpha)
    through = jnp.cumsum(log_kept, axis=-1)
    before = jnp.exp(through - log_kept)  # what reaches each Gaussian
    colour = (alpha * before) @ colours
    return colour + jnp.exp(through[:, -1:]) * 1.0  # the white background

  if centres.shape[0] == 1:
    image = blend(centres[0])
  else:
    # The backward recomputes each chunk rather than keeping every chunk's pairs.
    image = jax.lax.map(jax.checkpoint(blend), centres).reshape(padded, 3)
  image = image[:pixels]
  return jnp.minimum(image.reshape(height, width, 3), 1.0)


def loss(gaussians: Gaussians3D, target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(0.7·L1 + 0.3·(1 − SSIM), MSE)`` of the render against ``target``."""
  height, width = target.shape[:2]
  image = render(gaussians, height, width)
  l1 = jnp.mean(jnp.abs(image - target))
  structural = 1.0 - metrics.ssim(image, target)
  return L1_WEIGHT * l1 + (1.0 - L1_WEIGHT) * structural, jnp.mean(jnp.square(image - target))


def parameter_count(num_gaussians: int) -> int:
  """59 per Gaussian."""
  return PARAMETERS_PER_GAUSSIAN * num_gaussians


def fit(image, steps: int, seed: int = 0, *, num_gaussians: int,
        learning_rate: float = LEARNING_RATE, steps_per_call: int | None = None,
        progress: Callable[[dict], None] | None = None) -> BaselineFit:
  """Fits ``num_gaussians`` 3D Gaussians to ``image`` under the fixed camera.

  Args:
    image: [H, W, 3] in [0, 1], at least 11×11 (SSIM's window).
    steps: optimisation steps (>= 0).
    seed: PRNG seed of the initialisation.
    num_gaussians: N >= 1.
    learning_rate: Adan's initial rate (halved every 20,000 steps).
    steps_per_call: steps per device call, the history interval (default: steps/50).
    progress: called with each history record.

  Returns:
    A :class:`~gi_jax.baselines.training.BaselineFit`; ``params`` is a :class:`Gaussians3D`.

  Raises:
    errors.InvalidInputError: a bad image, step count or setting (before any work).
  """
  target = training.check_image(image)
  steps, steps_per_call = training.check_steps(steps, steps_per_call)
  training.check_positive(num_gaussians, "num_gaussians")
  training.check_positive(learning_rate, "learning_rate", float)
  if min(target.shape[:2]) < metrics.WIN_SIZE:
    raise errors.InvalidInputError(
        f"3D-GS's SSIM loss needs an image of at least {metrics.WIN_SIZE}×{metrics.WIN_SIZE}, "
        f"got {target.shape[1]}×{target.shape[0]}")
  gaussians = jax.jit(init_gaussians, static_argnums=1)(jax.random.key(seed), int(num_gaussians))
  schedule = optim.paper_schedule(learning_rate)
  return training.optimize(NAME, loss, gaussians, target, optim.adan(schedule), steps,
                           steps_per_call, schedule, progress)


def num_parameters(gaussians: Gaussians3D) -> int:
  """Real parameters: 59 per Gaussian."""
  return training.count_parameters(gaussians)

