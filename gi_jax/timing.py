"""Timing device work honestly: warm-up excluded, ``block_until_ready``, median of repeats."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def median_seconds(fn: Callable[[], object], repeats: int = 10, warmup: int = 2,
                   min_seconds: float = 0.0) -> float:
  """Median wall time of ``fn()`` with its outputs synchronised.

  Args:
    fn: a function of no arguments returning JAX arrays (a jitted call, say).
    repeats: timed calls (at least this many).
    warmup: untimed calls first (compilation, caches).
    min_seconds: keep repeating until this much time has been measured.

  Returns:
    The median seconds per call.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  start = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def compile_seconds(jitted, *args) -> tuple[float, Callable]:
  """Compiles ``jitted`` for ``args`` ahead of time; returns (seconds, compiled function)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return time.perf_counter() - t0, compiled
