"""The kernels a GPU would launch for a program, counted on any machine.

XLA compiles for a GPU it does not have ("deviceless" ahead-of-time compilation) once the CUDA
PJRT plugin is installed; neither a driver nor CUDA's libraries are needed. What comes out is the
optimized HLO a GPU would run: after fusion, each instruction of a computation that is not itself
fused, other than bookkeeping (parameters, tuples, bitcasts, ...), is one kernel launch, and a
device loop pays its body and its condition every iteration, plus a read of the condition by the
host unless a command buffer captures the loop. ``launches`` counts them per pass through a
program and per iteration of each of its loops; ``planned_bytes`` reads the device memory XLA
plans for the program on that GPU.

The StableHLO op counts of ``bench.py --structure`` say how much a program asks for; these say
what survives fusion, which is what a step costs in launches.

Set-up (``scripts/kernel_counts.sh`` does it): the plugin of the installed JAX's version, without
its CUDA libraries, in a folder of its own on ``PYTHONPATH``, with ``JAX_PLATFORMS=cpu``::

  pip install --no-deps --target .cuda_aot jax-cuda12-plugin==VERSION jax-cuda12-pjrt==VERSION

Sorts: with no GPU to measure CUB's scratch space, XLA compiles a sort as its own kernel instead
of CUB's radix sort (several kernels on a GPU); each counts once here, and ``sorts`` says how
many there are.
"""

from __future__ import annotations

import collections
import dataclasses
import re

# What XLA needs to know of the GPU it compiles for (an H100 SXM, as the `device` tool lends).
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

H100_KIND = "NVIDIA H100 80GB HBM3"

# Instructions outside fusions that launch nothing.
_BOOKKEEPING = frozenset({"parameter", "constant", "get-tuple-element", "tuple", "bitcast",
                          "after-all", "opt-barrier", "partition-id", "replica-id"})
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = .*? ([a-z][a-z\-]*)\(")


class Unavailable(RuntimeError):
  """No CUDA plugin to compile for a GPU with."""


@dataclasses.dataclass
class Launches:
  """Kernel launches of one pass through a computation, its loops apart."""
  kernels: collections.Counter  # by kind: fusion, triton, copy, sort, custom-call, ...
  loops: list  # [(body: Launches, condition: Launches)], in program order

  @property
  def total(self) -> int:
    return sum(self.kernels.values())

  def innermost(self) -> "tuple[Launches, Launches] | None":
    """The first loop nested deepest: for a fit's device call, the loop of steps."""
    best, depth = None, 0
    stack = [(loop, 1) for loop in self.loops]
    while stack:
      (body, cond), d = stack.pop(0)
      if d > depth:
        best, depth = (body, cond), d
      stack += [(loop, d + 1) for loop in body.loops]
    return best


def _computations(text: str) -> tuple[dict, str]:
  comps, current, entry = {}, None, None
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(1)
      comps[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif line.startswith("}"):
      current = None
    elif current is not None:
      instruction = _INSTRUCTION.match(line)
      if instruction:
        comps[current].append((instruction.group(1), line))
  if entry is None:
    raise ValueError("not an HLO module's text: no ENTRY computation")
  return comps, entry


def _branches(line: str) -> list[str]:
  if "branch_computations={" in line:
    names = line.split("branch_computations={", 1)[1].split("}", 1)[0]
    return re.findall(r"%([\w.\-]+)", names)
  return [re.search(a + r"=%([\w.\-]+)", line).group(1)
          for a in ("true_computation", "false_computation")]


def launches(hlo_text: str) -> Launches:
  """Counts the kernels of a compiled (optimized) HLO module's text, per loop level."""
  comps, entry = _computations(hlo_text)
  sorting = {name for name, body in comps.items() if any(op == "sort" for op, _ in body)}

  def called(line, attribute):
    return re.search(attribute + r"=%([\w.\-]+)", line).group(1)

  def walk(name) -> Launches:
    kernels, loops = collections.Counter(), []
    for op, line in comps[name]:
      if op in _BOOKKEEPING:
        continue
      if op == "while":
        loops.append((walk(called(line, "body")), walk(called(line, "condition"))))
        continue
      if op == "call":
        inner = walk(called(line, "to_apply"))
        kernels.update(inner.kernels)
        loops += inner.loops
        continue
      if op == "conditional":
        # The costlier branch, and the host's read of the predicate.
        heaviest = max((walk(b) for b in _branches(line)), key=lambda b: b.total)
        kernels.update(heaviest.kernels)
        loops += heaviest.loops
        kernels["conditional"] += 1
        continue
      if op == "custom-call":
        op = "triton" if "triton" in line else "custom-call"
      elif op == "fusion" and called(line, "calls") in sorting:
        op = "sort"
      kernels[op] += 1
    return Launches(kernels, loops)

  return walk(entry)


def summary(result: Launches) -> dict:
  """``kernels`` (one pass, loops once each), ``loop_kernels`` (an iteration of the innermost
  loop: body and condition) and ``loop_sorts``; None where the program has no loop."""
  def total(launch: Launches) -> int:
    return launch.total + sum(total(b) + total(c) for b, c in launch.loops)

  def sorts(launch: Launches) -> int:
    return launch.kernels["sort"]
  inner = result.innermost()
  return dict(kernels=total(result),
              loop_kernels=None if inner is None else inner[0].total + inner[1].total,
              loop_sorts=None if inner is None else sorts(inner[0]) + sorts(inner[1]))


def h100_mesh():
  """An abstract one-H100 mesh: under it, the Pallas kernels lower for that GPU on any machine."""
  import jax
  gpu = jax.sharding.AbstractDevice(device_kind=H100_KIND, num_cores=132, platform="cuda")
  return jax.sharding.AbstractMesh((1,), ("x",), abstract_device=gpu)


def h100_device():
  """A compile-only H100 to compile for; raises `Unavailable` without the CUDA plugin."""
  import jax
  from jax.experimental import topologies
  try:
    topology = topologies.get_topology_desc(platform="cuda", target_config=H100_TARGET_CONFIG,
                                            topology="1x1x1")
  except Exception as e:  # the plugin missing surfaces as several error types
    raise Unavailable(
        "counting kernels needs JAX's CUDA plugin (no GPU, driver or CUDA libraries): "
        f"pip install --no-deps --target .cuda_aot jax-cuda12-plugin=={jax.__version__} "
        f"jax-cuda12-pjrt=={jax.__version__}, then run with PYTHONPATH=.cuda_aot "
        f"JAX_PLATFORMS=cpu (scripts/kernel_counts.sh does both); {type(e).__name__}: "
        f"{str(e)[:200]}") from None
  return topology.devices[0]


def compile_for(device, fn, args):
  """``jax.jit(fn)(*args)`` compiled for ``device`` (from `h100_device`): a ``Compiled`` whose
  ``as_text()`` is the optimized HLO that `launches` reads."""
  import jax
  sharding = jax.sharding.SingleDeviceSharding(device)
  placed = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), args)
  with jax.sharding.use_abstract_mesh(h100_mesh()):
    lowered = jax.jit(fn).trace(*placed).lower(lowering_platforms=("cuda",))
  return lowered.compile()


def planned_bytes(compiled) -> int:
  """Device memory XLA plans for one call of ``compiled``: its arguments, outputs and temporary
  buffers (donated arguments counted once). What the GPU's allocator and CUDA add is not in it."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
          m.alias_size_in_bytes)
