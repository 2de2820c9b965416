"""Refinement of the colour symbols after fine-tuning, exact in the decoder's render.

The render is a sum of ``weight · colour`` over the Gaussians, so it is linear in the colours: with
positions and covariances fixed, what any change of colour symbols does to the image is known.
Fine-tuning never uses that. Its codewords are EMA means of the colour features, not the
codewords that make the best image, and each index is the codeword nearest to a float feature,
not the one that best corrects the error under its Gaussian. Two moves fix both, alternated, each
kept only where the decoder's clipped render improves:

- **indices**: one render and two VJPs give each Gaussian's colour gradient ``g`` and curvature
  ``h = Σ weight²`` over the pixels the clip leaves in range, so the best colour for it alone is
  ``c − g/h``. The codeword combination (one codeword per stage) nearest to that, weighted by
  ``h``, is its proposal. A round tries the proposals with the largest predicted gain whose
  Gaussians touch disjoint tiles: no pixel sees two of them, so one render scores each exactly
  (the loss change over its tiles), and only those that gain are kept.
- **codewords**: a damped Gauss–Newton step on the codebooks with the indices fixed. The basis
  image of each codeword (the render of the Gaussians that use it, with colour 1) makes the
  normal equations, one small system per colour channel. The result is rounded as the file stores
  codewords.

A rate term (``rd_slope`` dB of PSNR per doubling of the file) keeps index changes from buying
small gains with rarer codewords. Positions, covariances and the file format do not change.

Example::

  tuned = codec.finetune(fitted, image, steps=5000, config=config)
  refined = codec.refine_colors(tuned.quantized, image, fraction_bits=config.codeword_fraction_bits)
  data = codec.encode(refined.quantized, *image.shape[:2])
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from gi_jax import binning, errors
from gi_jax.fitting import check_target_image, psnr_from_mse
from gi_jax.raster_reference import image_to_tiles
from gi_jax.render import rasterizer, resolve_backend
from gi_jax.codec.format import encode
from gi_jax.codec.quantize import QuantizedGaussians
from gi_jax.codec.render import quantized_mse
from gi_jax.codec.rvq import rvq_dequantize, transmitted
from gi_jax.codec.rd import rd_score

# Index proposals search every combination of one codeword per stage up to this many.
MAX_COMBINATIONS = 1024
# A round that gains less than this share of the loss ends the index moves.
_MIN_GAIN = 1e-5
# Gaussians whose in-range Σ weight² is below this in a channel (all but hidden by the clip)
# propose nothing: their quadratic model says nothing about the pixels they would bring back.
_MIN_CURVATURE = 1e-3
# Gauss–Newton steps per codeword move, and its ridge relative to the mean curvature (it also
# pins codewords no Gaussian uses, and the shift between stages that leaves every colour alone).
_CODEBOOK_STEPS = 4
_RIDGE = 1e-6
# Codeword moves between index rounds.
_CODEBOOK_EVERY = 10
# At s dB of PSNR per doubling of the file, a share x more bytes is worth a share
# s·ln(10)/(10·ln(2))·x less squared error.
_SLOPE_TO_LOSS_SHARE = math.log(10) / (10 * math.log(2))


@dataclasses.dataclass(frozen=True)
class RefineResult:
  """The outcome of :func:`refine_colors`.

  Attributes:
    quantized: the refined set (the input itself when nothing improved).
    mse: MSE of the decoder's render of ``quantized`` against the target.
    initial_mse: that of the input.
    bytes: the file size of ``quantized`` (bits-back ordering).
    initial_bytes: that of the input.
    index_changes: colour index changes kept (a Gaussian changed in several rounds counts in
      each).
    codebook_steps: accepted Gauss–Newton steps on the codewords.
    rounds: index rounds run.
    seconds: wall time.
  """
  quantized: QuantizedGaussians
  mse: float
  initial_mse: float
  bytes: int
  initial_bytes: int
  index_changes: int
  codebook_steps: int
  rounds: int
  seconds: float


class _Scene:
  """The fixed geometry of a set: its projection and bins, and jitted functions of its colours."""

  def __init__(self, q: QuantizedGaussians, target: np.ndarray, backend: str, capacity: int):
    self.height, self.width = target.shape[:2]
    gaussians = q.dequantize()
    grid = binning.TileGrid(self.height, self.width)
    proj = binning.project(gaussians, grid)
    # Binned once: every render below changes only colours (or shrinks the Gaussians).
    capacity = max(binning.binning_capacity(gaussians, grid), capacity)
    binned = binning.bin_gaussians(gaussians, self.height, self.width, capacity=capacity)
    self.bins = binning.tile_lists(binned, proj)
    self.means, self.conics = proj.means, proj.conics
    self.tile_min = np.asarray(proj.tile_min)
    self.tile_max = np.asarray(proj.tile_max)
    self.tiles = (grid.tiles_y, grid.tiles_x)
    self.target = jnp.asarray(target, jnp.float32)
    self.static = (backend, self.height, self.width)

  def geometry(self):
    return self.means, self.conics, self.bins, self.target

  def tile_losses(self, colors: np.ndarray) -> np.ndarray:
    """[tiles_y, tiles_x] half the squared error of the clipped render in each tile."""
    return np.asarray(_tile_half_sse(*self.geometry(), jnp.asarray(colors, jnp.float32),
                                     *self.static), np.float64)

  def local_model(self, colors: np.ndarray):
    """``(tile losses, gradient [N, 3], curvature [N, 3])``: of the clipped render's half
    squared error, in each Gaussian's colour."""
    out = _local_model(*self.geometry(), jnp.asarray(colors, jnp.float32), *self.static)
    return tuple(np.asarray(x, np.float64) for x in out)

  def basis(self, indices: np.ndarray, stages: int, size: int) -> jax.Array:
    """[H·W, S·K] image of each codeword: the render of its Gaussians with colour 1."""
    one_hot = np.zeros((indices.shape[0], stages * size), np.float32)
    for s in range(stages):
      one_hot[np.arange(indices.shape[0]), s * size + indices[:, s]] = 1.0
    return _basis(self.means, self.conics, self.bins, jnp.asarray(one_hot), *self.static)


_STATIC = (5, 6, 7)  # backend, height, width


def _per_tile(values: jax.Array, height: int, width: int) -> jax.Array:
  """[H, W, C] → [tiles_y, tiles_x] sums over each tile."""
  grid = binning.TileGrid(height, width)
  return jnp.sum(image_to_tiles(values, grid), (1, 2)).reshape(grid.tiles_y, grid.tiles_x)


@functools.partial(jax.jit, static_argnums=_STATIC)
def _tile_half_sse(means, conics, bins, target, colors, backend, height, width):
  image = rasterizer(backend)(means, conics, colors, bins, height, width)
  return _per_tile(0.5 * jnp.square(jnp.clip(image, 0.0, 1.0) - target), height, width)


@functools.partial(jax.jit, static_argnums=_STATIC)
def _local_model(means, conics, bins, target, colors, backend, height, width):
  raster = lambda m, k, c, b: rasterizer(backend)(m, k, c, b, height, width)

  def half_sse(c):
    image = raster(means, conics, c, bins)
    pixel_losses = 0.5 * jnp.square(jnp.clip(image, 0.0, 1.0) - target)
    return jnp.sum(pixel_losses), (image, pixel_losses)
  (_, (image, pixel_losses)), grad = jax.value_and_grad(half_sse, has_aux=True)(colors)
  in_range = ((image > 0) & (image < 1)).astype(colors.dtype)
  # Σ weight² over in-range pixels: weight² is the Gaussian with twice the conic.
  _, squared = jax.vjp(lambda c: raster(means, 2 * conics, c, bins), jnp.ones_like(colors))
  return _per_tile(pixel_losses, height, width), grad, squared(in_range)[0]


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _basis(means, conics, bins, one_hot, backend, height, width):
  # Three codewords per render, as three colour channels (the basis is the same for any C).
  raster = rasterizer(backend)
  columns = one_hot.shape[1]
  padded = jnp.pad(one_hot, ((0, 0), (0, -columns % 3)))
  images = [raster(means, conics, padded[:, j:j + 3], bins, height, width)
            for j in range(0, columns, 3)]
  return jnp.concatenate([i.reshape(-1, 3) for i in images], axis=1)[:, :columns]


@jax.jit
def _gauss_newton_step(basis, codewords, target):
  """Damped Gauss–Newton step for ``codewords`` [S·K, 3] on the in-range pixels."""
  image = basis @ codewords
  in_range = ((image > 0) & (image < 1)).astype(basis.dtype)
  gram = jnp.einsum("pk,pc,pl->ckl", basis, in_range, basis)
  rhs = jnp.einsum("pk,pc->ck", basis, in_range * (target - image))
  scale = jnp.mean(jnp.diagonal(gram, axis1=1, axis2=2)) + 1e-12
  eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)
  return jnp.linalg.solve(gram + _RIDGE * scale * eye, rhs[..., None])[..., 0].T


@jax.jit
def _codebook_half_sse(basis, codewords, target):
  return 0.5 * jnp.sum(jnp.square(jnp.clip(basis @ codewords, 0.0, 1.0) - target))


@jax.jit
def _proposals(colors, grad, curvature, combo_colors, combo_bits, current_bits, bit_cost):
  """Each Gaussian's best combination and its predicted gain (loss units, rate included)."""
  valid = jnp.all(curvature >= _MIN_CURVATURE, -1)
  curvature = jnp.maximum(curvature, _MIN_CURVATURE)
  best_color = colors - grad / curvature
  # The loss change of colour v is ½ Σ_c h (t − v)² − ½ Σ_c h (t − c)², t the best colour;
  # the square is expanded to score every combination v at once.
  cost = 0.5 * (jnp.sum(curvature * best_color**2, -1, keepdims=True)
                - 2 * (curvature * best_color) @ combo_colors.T + curvature @ (combo_colors**2).T)
  cost = cost + bit_cost * (combo_bits[None, :] - current_bits[:, None])
  choice = jnp.argmin(cost, axis=1)
  now = 0.5 * jnp.sum(curvature * (best_color - colors) ** 2, -1)
  gain = now - jnp.take_along_axis(cost, choice[:, None], 1)[:, 0]
  return choice, jnp.where(valid, gain, -jnp.inf)


def _code_lengths(indices: np.ndarray, size: int) -> np.ndarray:
  """[S, K] bits of each codeword of each stage under the current index histograms."""
  counts = np.stack([np.bincount(column, minlength=size) for column in indices.T])
  return -np.log2((counts + 0.5) / (indices.shape[0] + 0.5 * size))


def _disjoint(order: np.ndarray, tile_min: np.ndarray, tile_max: np.ndarray,
              tiles: tuple[int, int]) -> np.ndarray:
  """The Gaussians of ``order`` (best first) that touch no tile an earlier kept one touches.

  The greedy choice, made in vectorised rounds rather than a loop over candidates: each round
  keeps every candidate left that ranks first on all its tiles, then drops those that share a
  tile with a kept one. A candidate kept so is one the greedy pass keeps (nothing better is left
  near it), and one dropped is one it drops, so the rounds end with the same set.

  Args:
    order: candidate Gaussians, best first.
    tile_min, tile_max: [N, 2] each Gaussian's tile range (x, y), ``tile_max`` one past the last.
    tiles: (tiles_y, tiles_x).
  """
  count = len(order)
  lo = tile_min[order].astype(np.int64)
  extent = np.maximum(tile_max[order] - lo, 0)
  sizes = extent[:, 0] * extent[:, 1]
  # One (candidate rank, tile) pair per tile a candidate touches.
  rank = np.repeat(np.arange(count), sizes)
  offset = np.arange(rank.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
  row, column = np.divmod(offset, extent[rank, 0])
  tile = (lo[rank, 1] + row) * tiles[1] + lo[rank, 0] + column
  live = np.ones(count, bool)
  kept = np.zeros(count, bool)
  while live.any():
    pairs = live[rank]
    first = np.full(tiles[0] * tiles[1], count)
    np.minimum.at(first, tile[pairs], rank[pairs])
    beaten = np.bincount(rank[pairs & (first[tile] != rank)], minlength=count) > 0
    new = live & ~beaten
    kept |= new
    claimed = np.zeros(tiles[0] * tiles[1], bool)
    claimed[tile[new[rank]]] = True
    live &= ~(new | (np.bincount(rank[claimed[tile]], minlength=count) > 0))
  return order[kept].astype(np.int64)


def refine_colors(q: QuantizedGaussians, target, *, fraction_bits: int = 0, rounds: int = 50,
                  rd_slope: float = 1.7, backend: str = "auto", capacity: int = 0
                  ) -> RefineResult:
  """Improves the colour indices and codewords of a residual-VQ set for the decoder's render.

  Args:
    q: a quantized set with residual-VQ colours (e.g. ``finetune(...).quantized``).
    target: the [H, W, C] image in [0, 1] it was fitted to.
    fraction_bits: the codeword grid the file stores (``QuantizerConfig.codeword_fraction_bits``;
      0: float16).
    rounds: at most this many index rounds (0: codewords only).
    rd_slope: dB of PSNR an index change must gain per doubling of the file it costs (0: ignore
      the rate).
    backend: rendering backend.
    capacity: render with at least this many intersection slots; sets of one size and N refined
      with the same value share compiled renders
      (:func:`~gi_jax.codec.render_capacity`). The result does not depend on it.

  Returns:
    A :class:`RefineResult`. Its set scores at least as well as ``q`` by PSNR −
    ``rd_slope``·log2(file bytes) (with ``rd_slope=0``: its image is at least as close to
    ``target``); sets with uniform colours come back unchanged. Index moves search every combination
    of codewords, so they are skipped where there are more than :data:`MAX_COMBINATIONS`.
  """
  start = time.perf_counter()
  q = q.to_numpy()
  target = np.asarray(check_target_image(target))
  if rounds < 0:
    raise errors.InvalidInputError(f"rounds must be >= 0, got {rounds}")
  if not (math.isfinite(rd_slope) and rd_slope >= 0):
    raise errors.InvalidInputError(f"rd_slope must be a finite number >= 0, got {rd_slope}")
  backend = resolve_backend(backend)
  initial_mse = quantized_mse(q, target, backend, capacity=capacity)
  initial_bytes = len(encode(q, target.shape[0], target.shape[1]))
  if q.color_bits or q.num_gaussians == 0:
    return RefineResult(q, initial_mse, initial_mse, initial_bytes, initial_bytes, 0, 0, 0,
                        time.perf_counter() - start)

  scene = _Scene(q, target, backend, capacity)
  stages, size = q.codebooks.shape[:2]
  indices = q.color_indices.astype(np.int64)
  codebooks = q.codebooks.astype(np.float32)
  colors = lambda: np.asarray(rvq_dequantize(codebooks, indices), np.float32)
  # Loss units (half the squared error) per bit of file, from the slope: a change pays when it
  # gains more than that.
  loss = 0.5 * initial_mse * target.size
  bit_cost = rd_slope * _SLOPE_TO_LOSS_SHARE * loss / (8 * initial_bytes)
  channels = codebooks.shape[-1]
  flat = jnp.asarray(target.reshape(-1, channels))
  changes = steps = done = 0

  def move_codewords():
    nonlocal codebooks, steps
    basis = scene.basis(indices, stages, size)
    words = jnp.asarray(codebooks.reshape(-1, channels))
    best = float(_codebook_half_sse(basis, words, flat))
    for _ in range(_CODEBOOK_STEPS):
      step = words + _gauss_newton_step(basis, words, flat)
      step = transmitted(step.reshape(codebooks.shape), fraction_bits).reshape(-1, channels)
      value = float(_codebook_half_sse(basis, step, flat))
      if not value < best * (1 - 1e-7):
        break
      words, best, steps = step, value, steps + 1
    codebooks = np.asarray(words, np.float32).reshape(codebooks.shape)

  move_codewords()
  search = size**stages <= MAX_COMBINATIONS
  combos = np.stack(np.unravel_index(np.arange(size**stages), (size,) * stages), 1)
  for done in range(1, rounds + 1 if search else 1):
    lengths = _code_lengths(indices, size)
    combo_bits = lengths[np.arange(stages), combos].sum(1)
    current_bits = lengths[np.arange(stages), indices].sum(1)
    now = colors()
    tiles, grad, curvature = scene.local_model(now)
    choice, gain = _proposals(jnp.asarray(now), jnp.asarray(grad, jnp.float32),
                              jnp.asarray(curvature, jnp.float32),
                              jnp.asarray(rvq_dequantize(codebooks, combos)),
                              jnp.asarray(combo_bits, jnp.float32),
                              jnp.asarray(current_bits, jnp.float32), bit_cost)
    choice, gain = np.asarray(choice), np.asarray(gain, np.float64)
    order = np.argsort(-gain)
    chosen = _disjoint(order[gain[order] > 0], scene.tile_min, scene.tile_max, scene.tiles)
    if not len(chosen):
      break
    trial = indices.copy()
    trial[chosen] = combos[choice[chosen]]
    # Disjoint tiles: each change's exact effect is the loss change over its own tiles.
    change = tiles - scene.tile_losses(np.asarray(rvq_dequantize(codebooks, trial), np.float32))
    gained = np.array([change[y0:y1, x0:x1].sum() for (x0, y0), (x1, y1) in
                       zip(scene.tile_min[chosen], scene.tile_max[chosen])])
    gained -= bit_cost * (combo_bits[choice[chosen]] - current_bits[chosen])
    kept = chosen[gained > 0]
    indices[kept] = combos[choice[kept]]
    changes += len(kept)
    if gained[gained > 0].sum() < _MIN_GAIN * tiles.sum():
      break
    if done % _CODEBOOK_EVERY == 0:
      move_codewords()
  if done and done % _CODEBOOK_EVERY:
    move_codewords()

  refined = dataclasses.replace(q, color_indices=indices.astype(np.uint8),
                                codebooks=codebooks.astype(np.float32))
  mse = quantized_mse(refined, target, backend, capacity=capacity)
  num_bytes = len(encode(refined, target.shape[0], target.shape[1]))
  # Index changes may trade a little error for bits: judge the whole by the same score.
  score = lambda mse, num_bytes: rd_score(psnr_from_mse(mse), num_bytes, rd_slope)
  if not score(mse, num_bytes) > score(initial_mse, initial_bytes):
    refined, mse, num_bytes = q, initial_mse, initial_bytes
  return RefineResult(refined, mse, initial_mse, num_bytes, initial_bytes, changes, steps, done,
                      time.perf_counter() - start)
