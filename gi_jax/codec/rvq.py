"""Residual vector quantization of colours (the paper's): k-means initialisation, EMA updates.

2 stages × 8 codewords of dimension 3 by default, as vector_quantize_pytorch's ``ResidualVQ``:
each stage quantizes the residual the stages before it left (:func:`rvq_indices`); codebooks start
from k-means on those residuals (:func:`rvq_init`) and follow exponential moving averages of what
they quantize (:func:`rvq_ema_update`), not gradients. A file stores the codebooks as float16 or
fixed point (:func:`transmitted`), and training quantizes with those same values.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gi_jax.codec.ste import straight_through, to_half

# vector_quantize_pytorch's Laplace smoothing of the EMA cluster sizes (its default eps).
EMA_EPS = 1e-5

# Fixed-point codewords: ``i · 2**-e`` with ``|i| <= MAX_CODEWORD_INT`` (float32 holds every such
# ``i`` exactly) and ``e <= 20``.
MAX_CODEWORD_FRACTION_BITS = 20
MAX_CODEWORD_INT = 1 << 24


class ResidualVQ(NamedTuple):
  """Residual VQ codebooks with their EMA statistics (state, not gradient-trained).

  Attributes:
    codebooks: [S, K, D] codewords of each stage.
    ema_sum: [S, K, D] EMA of the sum of the vectors assigned to each codeword.
    ema_count: [S, K] EMA of the number of vectors assigned to each codeword.
  """
  codebooks: jax.Array
  ema_sum: jax.Array
  ema_count: jax.Array


def nearest(x: jax.Array, codebook: jax.Array) -> jax.Array:
  """[N] int32 index of the nearest codeword (squared Euclidean; ties to the lowest index)."""
  d = jnp.sum(jnp.square(x[..., :, None, :] - codebook[..., None, :, :]), axis=-1)
  return jnp.argmin(d, axis=-1).astype(jnp.int32)


def kmeans(key: jax.Array, x: jax.Array, k: int, iters: int) -> tuple[jax.Array, jax.Array]:
  """Lloyd's k-means as vector_quantize_pytorch initialises codebooks.

  Centres start at ``k`` distinct random rows of ``x`` (with repetition only if ``N < k``); a
  centre that loses all its points keeps its position.

  Args:
    key: PRNG key.
    x: [N, D] vectors.
    k: number of centres.
    iters: Lloyd iterations.

  Returns:
    ``(centres [k, D], counts [k])``: the centres and how many rows are nearest to each.
  """
  n = x.shape[0]
  centres = x[jax.random.choice(key, n, (k,), replace=n < k)]

  def counts_and_sums(centres):
    onehot = jax.nn.one_hot(nearest(x, centres), k, dtype=x.dtype)
    return onehot.sum(0), onehot.T @ x

  def step(_, centres):
    counts, sums = counts_and_sums(centres)
    updated = sums / jnp.maximum(counts, 1)[:, None]
    return jnp.where((counts > 0)[:, None], updated, centres)

  centres = jax.lax.fori_loop(0, iters, step, centres)
  return centres, counts_and_sums(centres)[0]


def rvq_init(key: jax.Array, x: jax.Array, stages: int, codebook_size: int,
             kmeans_iters: int) -> ResidualVQ:
  """Initialises each stage by k-means on the residual left by the stages before it.

  The EMA statistics start consistent with the codebooks (``ema_sum = centre · count``), so the
  first EMA updates move codewords smoothly.
  """
  codebooks, counts = [], []
  residual = x
  for key_s in jax.random.split(key, stages):
    centres, count = kmeans(key_s, residual, codebook_size, kmeans_iters)
    residual = residual - centres[nearest(residual, centres)]
    codebooks.append(centres)
    counts.append(count)
  codebooks = jnp.stack(codebooks)
  counts = jnp.stack(counts)
  return ResidualVQ(codebooks=codebooks, ema_sum=codebooks * counts[..., None], ema_count=counts)


def transmitted(codebooks: jax.Array, fraction_bits: int = 0) -> jax.Array:
  """The codebooks as a file stores them (values kept in float32).

  Training quantizes with these too, so its renders are the decoder's.

  Args:
    codebooks: [..., K, D] codewords.
    fraction_bits: 0 rounds to float16 (the paper's; 16 bits a value, at a colour error below
      1/2000 of the value); ``e > 0`` rounds to the nearest multiple of ``2**-e``, clipped to
      ``±MAX_CODEWORD_INT·2**-e``. At ``e = 10`` the error is below 1/2000 of full intensity, and
      a codebook's channels span 7 to 13 bits instead of 16.

  Returns:
    The rounded codebooks, same shape and dtype.
  """
  if not fraction_bits:
    return to_half(codebooks)
  scale = float(1 << fraction_bits)
  return jnp.clip(jnp.round(codebooks * scale), -MAX_CODEWORD_INT, MAX_CODEWORD_INT) / scale


def rvq_indices(codebooks: jax.Array, x: jax.Array) -> jax.Array:
  """[N, S] int32 codeword index of each stage (greedy residual search; no gradient)."""
  indices = []
  residual = x
  for s in range(codebooks.shape[0]):
    index = nearest(residual, codebooks[s])
    residual = residual - codebooks[s][index]
    indices.append(index)
  return jnp.stack(indices, axis=-1)


def rvq_dequantize(codebooks: jax.Array, indices: jax.Array) -> jax.Array:
  """[N, D] sum over stages of the indexed codewords (the decoder's formula)."""
  out = codebooks[0][indices[..., 0]]
  for s in range(1, codebooks.shape[0]):
    out = out + codebooks[s][indices[..., s]]
  return out


def rvq_quantize(rvq: ResidualVQ, x: jax.Array,
                 fraction_bits: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Fake-quantizes ``x`` [N, D] with the residual VQ (its :func:`transmitted` codebooks, with
  ``fraction_bits`` as there).

  Returns:
    ``(quantized, indices, commitment)``: the decoder's values with an identity derivative in
    ``x``; the [N, S] indices; and the commitment loss ``Σ_s MSE(q_s, r_s)`` where ``r_s = x −
    Σ_{t<s} q_t`` (codewords held constant, so it pulls only ``x``).
  """
  codebooks = transmitted(jax.lax.stop_gradient(rvq.codebooks), fraction_bits)
  indices = rvq_indices(codebooks, jax.lax.stop_gradient(x))
  commitment = jnp.zeros((), x.dtype)
  residual = x
  for s in range(codebooks.shape[0]):
    q = codebooks[s][indices[..., s]]
    commitment = commitment + jnp.mean(jnp.square(q - residual))
    residual = residual - q
  return straight_through(x, rvq_dequantize(codebooks, indices)), indices, commitment


def rvq_ema_update(rvq: ResidualVQ, x: jax.Array, indices: jax.Array, decay: float,
                   fraction_bits: int = 0) -> ResidualVQ:
  """One EMA codebook update (vector_quantize_pytorch's ``EuclideanCodebook``), all stages.

  Each stage's statistics are updated with the residuals it quantized (``x`` minus the codewords of
  the stages before it, with the codebooks that chose ``indices``); a codeword is the smoothed EMA
  mean ``ema_sum / ema_count``.

  Args:
    rvq: the state that produced ``indices``.
    x: [N, D] the quantized vectors.
    indices: [N, S] from :func:`rvq_indices`.
    decay: EMA decay (0.8 in the paper).
    fraction_bits: how the codebooks that chose ``indices`` were transmitted.

  Returns:
    The updated :class:`ResidualVQ` (no gradient flows through it).
  """
  rvq = jax.tree.map(jax.lax.stop_gradient, rvq)
  x = jax.lax.stop_gradient(x)
  used = transmitted(rvq.codebooks, fraction_bits)  # what chose ``indices``
  k = rvq.codebooks.shape[1]
  residual = x
  sums, counts = [], []
  for s in range(rvq.codebooks.shape[0]):
    onehot = jax.nn.one_hot(indices[..., s], k, dtype=x.dtype)
    counts.append(onehot.sum(0))
    sums.append(onehot.T @ residual)
    residual = residual - used[s][indices[..., s]]
  ema_count = decay * rvq.ema_count + (1 - decay) * jnp.stack(counts)
  ema_sum = decay * rvq.ema_sum + (1 - decay) * jnp.stack(sums)
  total = jnp.sum(ema_count, axis=-1, keepdims=True)
  smoothed = (ema_count + EMA_EPS) / (total + k * EMA_EPS) * total
  return ResidualVQ(codebooks=ema_sum / smoothed[..., None], ema_sum=ema_sum, ema_count=ema_count)
