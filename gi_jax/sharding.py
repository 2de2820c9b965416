"""Sharding a batch of images over devices: a 1-D mesh with the axis ``"batch"``.

A batch of B independent problems (Gaussian sets and their targets, stacked [B, ...]) lives on a
``NamedSharding(mesh, P("batch"))``; the loss runs under ``jax.shard_map`` (:func:`sharded_loss`:
each device renders only its own images, no collectives) and the elementwise optimiser update is
partitioned by ``jit``. A batch that does not divide evenly is padded with copies of its last
image, whose results are dropped (:func:`plan_shards`). ``fit_batch`` and ``finetune_batch`` both
follow this recipe: :func:`plan_shards`, :func:`place_batch`, :func:`sharded_loss`,
:func:`unstack_batch`.

Across hosts (``jax.distributed.initialize()`` called first) the default mesh spans the global
``jax.devices()``; every process must pass the same batch, each one builds its own devices' shards
with ``jax.make_array_from_callback``, and results are gathered back with ``process_allgather``.
That path is written for, but not tested on, more than one process.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gi_jax import errors

BATCH_AXIS = "batch"


def default_mesh(batch_size: int | None = None) -> Mesh:
  """A 1-D mesh with axis ``"batch"`` over the devices a batch should use.

  With one process it uses at most ``batch_size`` local devices (so a small batch is not padded to
  the device count); with several processes it uses every global device, as each process must
  take part in each computation.

  Args:
    batch_size: the number of images (None: all devices).

  Returns:
    A ``jax.sharding.Mesh``.
  """
  devices = jax.devices()
  if jax.process_count() == 1 and batch_size is not None:
    devices = devices[:max(1, min(int(batch_size), len(devices)))]
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def plan_shards(count: int, mesh: Mesh | None) -> tuple[Mesh | None, list[int]]:
  """Where a batch of ``count`` images runs, and which image fills each slot of the padded batch.

  Args:
    count: the number of images B >= 1.
    mesh: a mesh with an axis ``"batch"``, or None for :func:`default_mesh` where there are several
      devices (no sharding with one).

  Returns:
    ``(mesh, order)``: the mesh (None: one device) and the image index of each batch slot. The batch
    is padded to a multiple of the shard count by repeating the last image (and its seed): real work
    whose results are dropped.
  """
  if mesh is None and len(jax.devices()) > 1:
    mesh = default_mesh(count)
  if mesh is not None and BATCH_AXIS not in mesh.axis_names:
    raise errors.InvalidInputError(
        f"mesh needs an axis named {BATCH_AXIS!r}, has {mesh.axis_names}")
  shards = num_shards(mesh)
  padded = -(-count // shards) * shards
  return mesh, list(range(count)) + [count - 1] * (padded - count)


def num_shards(mesh: Mesh | None) -> int:
  """The number of shards of the batch axis (1 without a mesh)."""
  return mesh.shape[BATCH_AXIS] if mesh is not None else 1


def place_batch(slots: Sequence, mesh: Mesh | None):
  """One pytree per batch slot, stacked along a leading batch axis onto the devices (sharded over
  ``mesh`` if given)."""
  tree = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *slots)
  if mesh is None:
    return jax.tree.map(jnp.asarray, tree)
  sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))

  def place(x):
    # Each process fills only its own devices' shards from its (full) host copy: multi-host safe.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(place, tree)


def _to_host(x) -> np.ndarray:
  """A NumPy copy of a (possibly multi-process) array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def unstack_batch(tree, count: int) -> list:
  """The first ``count`` slots of a (possibly sharded, multi-process) batched pytree, one pytree
  each, gathered to this process."""
  host = jax.tree.map(_to_host, tree)
  return [jax.tree.map(lambda x, i=i: jnp.asarray(x[i]), host) for i in range(count)]


def sharded_loss(make_loss, mesh: Mesh):
  """Wraps ``capacity -> loss_fn`` (stateless or stateful, see :data:`gi_jax.fitting.LossFn`) so
  each device renders its own slice of the batch.

  The per-image losses and counts come back replicated (they are tiny), so the driver can read them
  on every process; ``with_sharding_constraint`` has an identity gradient, so the gradient of the
  summed loss still reaches each image's parameters exactly.
  """
  batch = PartitionSpec(BATCH_AXIS)
  replicated = NamedSharding(mesh, PartitionSpec())

  def make(capacity):
    # check_vma=False: the renderer's scans start from unsharded zeros, and nothing here
    # communicates across devices, so there is no replication to track.
    shard = functools.partial(jax.shard_map, make_loss(capacity), mesh=mesh, check_vma=False)
    local_loss = shard(in_specs=(batch, batch, batch), out_specs=(batch, batch))
    # A stateful loss (gi_jax.fitting.LossFn) keeps its state sharded like the parameters.
    stateful_loss = shard(in_specs=(batch, batch, batch, batch), out_specs=(batch, (batch, batch)))

    def loss_fn(params, target, binned=None, state=None):
      if state is None:
        loss, count = local_loss(params, target, binned)
      else:
        loss, (count, state) = stateful_loss(params, target, binned, state)
      loss, count = (jax.lax.with_sharding_constraint(loss, replicated),
                     jax.lax.with_sharding_constraint(count, replicated))
      return (loss, count) if state is None else (loss, (count, state))
    return loss_fn

  return make
