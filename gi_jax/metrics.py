"""Image quality metrics: MSE, PSNR, SSIM and MS-SSIM, for images [..., H, W, C] in [0, max_value].

MS-SSIM is implemented here (not taken from dm_pix, which has none) to match the paper's tool,
pytorch-msssim 1.0.0 ``ms_ssim(X, Y, data_range=1, size_average=False)``, to float32 precision: the
same Gaussian window, 'valid' separable filtering, ``avg_pool2d`` between scales and ReLU clamps.
All functions are jittable and differentiable; they reduce over the last three axes and return one
value per image (a scalar for a single image).

Example::

  from gi_jax import metrics

  metrics.psnr(render, target)      # dB
  metrics.ms_ssim(render, target)   # needs both sides > 160 px
"""

import numpy as np
import jax
import jax.numpy as jnp
import dm_pix

from gi_jax.errors import InvalidInputError

# pytorch-msssim 1.0.0 defaults.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03
# The four 2x downsamplings must leave at least one full window: smaller side > (11 - 1) * 2**4.
MS_SSIM_MIN_SIDE = (WIN_SIZE - 1) * 2**(len(MS_SSIM_WEIGHTS) - 1) + 1  # 161


def _check_pair(a, b, name):
  """Converts both images to float arrays and checks that their shapes agree."""
  a = jnp.asarray(a)
  b = jnp.asarray(b)
  if a.shape != b.shape:
    raise InvalidInputError(f"{name}: images must have the same shape, got {a.shape} and {b.shape}")
  if a.ndim < 3:
    raise InvalidInputError(f"{name}: images must be [..., H, W, C], got shape {a.shape}")
  if not jnp.issubdtype(a.dtype, jnp.floating):
    a = a.astype(jnp.result_type(float))
  if not jnp.issubdtype(b.dtype, jnp.floating):
    b = b.astype(jnp.result_type(float))
  return a, b


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean squared error over the last three axes (H, W, C).

  Args:
    a: image(s) [..., H, W, C].
    b: image(s) of the same shape.

  Returns:
    The MSE per image, shape ``a.shape[:-3]``.
  """
  a, b = _check_pair(a, b, "mse")
  return jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))


def psnr(a: jax.Array, b: jax.Array, max_value: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB: ``10·log10(max_value² / MSE)``.

  Identical images give +inf, as in the reference code.

  Args:
    a: image(s) [..., H, W, C], any channel count C.
    b: image(s) of the same shape.
    max_value: the peak value (1.0 for images in [0, 1]).

  Returns:
    The PSNR per image, shape ``a.shape[:-3]``.
  """
  return 10.0 * jnp.log10(max_value**2 / mse(a, b))


def ssim(a: jax.Array, b: jax.Array, max_value: float = 1.0) -> jax.Array:
  """Single-scale SSIM (11×11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) via ``dm_pix.ssim``.

  Args:
    a: image(s) [..., H, W, C] in [0, max_value].
    b: image(s) of the same shape.
    max_value: the dynamic range of the images.

  Returns:
    The mean SSIM per image, shape ``a.shape[:-3]``: SSIM is taken per channel and averaged over
    pixels and channels alike, so any channel count C works (grayscale, RGBA, multispectral).
  """
  a, b = _check_pair(a, b, "ssim")
  return dm_pix.ssim(a, b, max_val=max_value, filter_size=WIN_SIZE, filter_sigma=WIN_SIGMA, k1=K1,
                     k2=K2)


# pytorch-msssim's window ``_fspecial_gauss_1d(11, 1.5)``, exactly as torch builds it in float32
# (exp(-(i - 5)² / 4.5), normalised). Recomputing it with NumPy's float32 exp and sum lands 1 ulp
# off on some taps, which moves MS-SSIM by ~2e-7; the table keeps float64 runs bit-faithful to the
# tool.
_TORCH_WINDOW = np.array([
    0.0010283803567290306, 0.0075987582094967365, 0.036000773310661316, 0.10936068743467331,
    0.21300552785396576, 0.26601171493530273, 0.21300552785396576, 0.10936068743467331,
    0.036000773310661316, 0.0075987582094967365, 0.0010283803567290306
], np.float32)


def _filter_valid(x: jax.Array, win: jax.Array) -> jax.Array:
  """Separable 'valid' Gaussian filtering of x [..., H, W, C] along H then W.

  Written as a sum of shifted slices rather than ``lax.conv``: GPU convolutions may run in TF32 by
  default, which would cost the 1e-5 agreement with pytorch-msssim; elementwise float32 sums do not.
  """
  n = win.shape[0]
  h, w = x.shape[-3], x.shape[-2]
  out = sum(win[i] * x[..., i:i + h - n + 1, :, :] for i in range(n))
  return sum(win[i] * out[..., :, i:i + w - n + 1, :] for i in range(n))


def _ssim_cs(x: jax.Array, y: jax.Array, win: jax.Array, max_value: float):
  """pytorch-msssim's ``_ssim``: per-channel mean SSIM and contrast-structure, each [N, C]."""
  c1 = (K1 * max_value)**2
  c2 = (K2 * max_value)**2
  # Filter the five moments in one pass: stacked on a leading axis they share the slicing.
  moments = _filter_valid(jnp.stack([x, y, x * x, y * y, x * y]), win)
  mu1, mu2, xx, yy, xy = moments
  mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
  sigma1_sq = xx - mu1_sq
  sigma2_sq = yy - mu2_sq
  sigma12 = xy - mu1_mu2
  cs_map = (2 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)
  ssim_map = ((2 * mu1_mu2 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
  return jnp.mean(ssim_map, axis=(-3, -2)), jnp.mean(cs_map, axis=(-3, -2))


def _avg_pool_2x2(x: jax.Array) -> jax.Array:
  """torch ``F.avg_pool2d(x, kernel_size=2, padding=[s % 2 for s in (H, W)])`` on [N, H, W, C].

  An odd side is zero-padded by one on *both* ends (torch pads symmetrically); with floor output
  size the right pad is never read. ``count_include_pad=True`` (torch's default) divides every
  window by 4, padded zeros included.
  """
  h, w = x.shape[-3], x.shape[-2]
  ph, pw = h % 2, w % 2
  x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  oh = (h + 2 * ph - 2) // 2 + 1
  ow = (w + 2 * pw - 2) // 2 + 1
  x = x[:, :2 * oh, :2 * ow, :]
  x = x[:, 0::2] + x[:, 1::2]
  x = x[:, :, 0::2] + x[:, :, 1::2]
  return x / 4


def _safe_pow(x: jax.Array, p: float) -> jax.Array:
  """x**p for x >= 0 whose gradient at x = 0 is 0 instead of inf·0 = NaN."""
  positive = x > 0
  return jnp.where(positive, jnp.where(positive, x, 1.0)**p, 0.0)


def ms_ssim(a: jax.Array, b: jax.Array, max_value: float = 1.0) -> jax.Array:
  """Multi-scale SSIM, matching pytorch-msssim 1.0.0's ``ms_ssim`` with its defaults.

  Five scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); 11-tap Gaussian window with
  sigma 1.5; K1 0.01, K2 0.03; 'valid' filtering; 2×2 average pooling between scales (padding an odd
  side, zeros counted); per-channel contrast-structure (scales 1-4) and SSIM (scale 5) clamped at 0,
  raised to the weights and multiplied; then averaged over channels. This equals
  ``pytorch_msssim.ms_ssim(X, Y, data_range=max_value, size_average=False)``.

  Example::

    ms_ssim(render, target)        # [H, W, 3] -> scalar
    ms_ssim(renders, targets)      # [B, H, W, 3] -> [B]

  Args:
    a: image [H, W, C] or batch [B, H, W, C], float in [0, max_value]; H, W >= 161.
    b: image(s) of the same shape.
    max_value: the dynamic range (pytorch-msssim's ``data_range``).

  Returns:
    MS-SSIM per image: a scalar for [H, W, C], shape [B] for [B, H, W, C].

  Raises:
    InvalidInputError: shapes differ, the rank is not 3 or 4, or the smaller side is below 161 px.
  """
  a, b = _check_pair(a, b, "ms_ssim")
  if a.ndim not in (3, 4):
    raise InvalidInputError(f"ms_ssim: images must be [H, W, C] or [B, H, W, C], got {a.shape}")
  h, w = a.shape[-3], a.shape[-2]
  if min(h, w) < MS_SSIM_MIN_SIDE:
    raise InvalidInputError(
        f"ms_ssim needs images of at least {MS_SSIM_MIN_SIDE}x{MS_SSIM_MIN_SIDE} px (smaller side "
        f">= {MS_SSIM_MIN_SIDE}, so that the 11-px window fits after 4 halvings); got {h}x{w}")
  single = a.ndim == 3
  x, y = (a[None], b[None]) if single else (a, b)
  dtype = jnp.promote_types(x.dtype, y.dtype)
  x, y = x.astype(dtype), y.astype(dtype)
  win = jnp.asarray(_TORCH_WINDOW, dtype)

  levels = []
  for i in range(len(MS_SSIM_WEIGHTS)):
    ssim_c, cs_c = _ssim_cs(x, y, win, max_value)
    if i < len(MS_SSIM_WEIGHTS) - 1:
      levels.append(jax.nn.relu(cs_c))
      x, y = _avg_pool_2x2(x), _avg_pool_2x2(y)
  levels.append(jax.nn.relu(ssim_c))
  val = 1.0
  for level, weight in zip(levels, MS_SSIM_WEIGHTS):
    val = val * _safe_pow(level, weight)
  val = jnp.mean(val, axis=-1)  # over channels
  return val[0] if single else val
