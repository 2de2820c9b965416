"""Runs that span hosts: the flags a dataset CLI takes to initialise ``jax.distributed``.

Importing this module defines the flags; a CLI calls :func:`initialize` first thing in ``main``
(before anything asks JAX for its devices), and writes its outputs only where :func:`is_writer`.
Every process then runs the same command on the same images: the library's default mesh spans
every process's devices (``gi_jax.sharding``), so each batch is fitted by all of them, and
process 0 writes the files and records.

Usage, two hosts (the same command on each, its own ``--process_id``)::

  python experiments/fit.py --dataset=DIR --batch_size=8 --coordinator_address=host0:1234 \\
      --num_processes=2 --process_id=0      # process_id=1 on the other host

or, under a cluster manager JAX recognises (Slurm, Open MPI, Kubernetes, Cloud TPU),
``--distributed`` alone: ``jax.distributed.initialize()`` reads the cluster's environment.
"""

from __future__ import annotations

from absl import flags
import jax

from gi_jax import errors

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator: initialises "
    "jax.distributed so the run spans processes (with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.",
                                      lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 to "
                                   "--num_processes - 1; process 0 writes the outputs.",
                                   lower_bound=0)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Initialise jax.distributed from the cluster's environment (Slurm, "
    "Open MPI, ...); flags given above override what it finds.")


def initialize() -> bool:
  """Initialises ``jax.distributed`` as the flags say; nothing without them.

  On CPU the processes' collectives go through gloo (JAX's CPU default has none across
  processes).

  Returns:
    Whether the run spans several processes.

  Raises:
    errors.InvalidInputError: flags that do not make a run (a coordinator without a process count
      and index, an index out of range), or ``jax.distributed`` failing to start.
  """
  address, count, index = _COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  if not _DISTRIBUTED.value and address is None and count is None and index is None:
    return False
  if not _DISTRIBUTED.value and None in (address, count, index):
    raise errors.InvalidInputError(
        "--coordinator_address, --num_processes and --process_id go together (or --distributed "
        "to read them from the cluster's environment)")
  if count is not None and index is not None and index >= count:
    raise errors.InvalidInputError(f"--process_id={index} must be below --num_processes={count}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=index)
  except (RuntimeError, ValueError) as e:
    raise errors.InvalidInputError(f"jax.distributed did not start: {e}") from None
  return jax.process_count() > 1


def is_writer() -> bool:
  """Whether this process writes the run's files and records (process 0)."""
  return jax.process_index() == 0
