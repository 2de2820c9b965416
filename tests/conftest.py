"""Test set-up, before JAX starts: four virtual CPU devices, so sharding tests run on one host,
and one persistent compilation cache for the whole run.

Most of the suite's time is XLA compiling, and the same functions are compiled by both xdist
workers and by every test that starts an experiment as a process of its own; through the cache
(set in the environment, so those processes inherit it) each is compiled once. Entries are keyed
by the program, the flags and the JAX version, so a cache left by an earlier run is only reused
where it is valid; delete the folder to measure a cold run.
"""

import os

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The CPU unless the caller names a platform (scripts/gpu_plan.sh runs the kernel tests with
# JAX_PLATFORMS=cuda, compiled).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# On the CPU, compiling is most of the suite's time and the tests' programs run briefly: LLVM
# without its optimisation passes compiles each a quarter faster, more than the slower code costs.
# The results the tests compare are computed under the same flags on both sides (an XLA_FLAGS of
# the caller's that sets them wins).
_FAST_COMPILE = (("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
                 if os.environ["JAX_PLATFORMS"] == "cpu" else ())
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_flags, "--xla_force_host_platform_device_count=4"] +
    [f for f in _FAST_COMPILE if f.split("=")[0] not in _flags]).strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_REPO, ".pytest_cache", "xla"))
# Cache every compilation: the suite's are many and small (eager ops included).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# Unbounded: JAX's size bound (JAX_COMPILATION_CACHE_MAX_SIZE) reads every entry's size and access
# time on each write, thousands of writes over thousands of entries here. Runs after code changes
# add entries (tens of MB); delete the folder to reclaim them.

import gc  # noqa: E402

import pytest  # noqa: E402

# Each compiled XLA:CPU program maps its code into the process (about five mappings), and JAX keeps
# every program it has compiled. A worker of a cold run compiles thousands, and past Linux's limit
# of 65,530 mappings a process (vm.max_map_count) memory can no longer be mapped and the worker
# dies: a segfault loading or saving a compilation-cache entry. After a test, a worker within
# 17,500 mappings of that limit (the largest test, the compress experiment's, compiles about 300
# programs) lets its compiled programs go; later tests get theirs back from the persistent cache.
# That reloading costs time, so it waits until it is needed: once or twice a worker in a cold run.
_MAPPINGS_BEFORE_RELEASE = 48_000


def _mappings() -> int:
  try:
    with open("/proc/self/maps", "rb") as f:
      return sum(1 for _ in f)
  except OSError:  # not Linux: no such limit to keep under
    return 0


@pytest.fixture(autouse=True)
def _release_compiled_programs():
  yield
  if _mappings() > _MAPPINGS_BEFORE_RELEASE:
    import jax
    from gi_jax import fitting
    fitting.clear_device_calls()
    jax.clear_caches()
    gc.collect()
