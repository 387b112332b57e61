"""Devices and hosts: one mesh over every device, arrays placed on it.

One 1-D mesh axis, "data", spans all devices of all processes. A sweep shards
its run axis over it (each device trains some of the runs); a single run
shards its batch axis (data parallelism; the parameters are replicated and
XLA adds the gradient all-reduce). The same program runs on one CPU, one GPU,
several GPUs or several hosts; `jax.distributed.initialize()` joins the hosts
when the launcher asks for it (SLURM with several tasks, Cloud TPU pods, or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set by hand).
"""

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Joins the other processes of a multi-process launch; no-op otherwise."""
    if jax.distributed.is_initialized():
        return
    explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    if not (explicit or slurm):
        return
    # CPU processes need a collectives backend to talk to each other; GPUs and
    # TPUs ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()  # detects SLURM (and Cloud TPU) by itself
    logging.info(
        "process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count()
    )


def is_main_process() -> bool:
    return jax.process_index() == 0


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def axis_sharding(mesh: Mesh, size: int, axis: int = 0) -> NamedSharding:
    """Shards `axis` (of length `size`) when the device count divides it, else replicates."""
    if size % mesh.size == 0:
        return NamedSharding(mesh, P(*[None] * axis, AXIS))
    return NamedSharding(mesh, P())


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put(tree, shardings):
    """Global arrays from host values every process holds in full."""

    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree, shardings)


def put_replicated(tree, mesh: Mesh):
    return put(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def put_state(state, mesh: Mesh, stacked: bool):
    """A sweep's state sharded along its run axis; a single run's replicated."""
    if not stacked:
        return put_replicated(state, mesh)
    runs = jax.tree.leaves(state)[0].shape[0]
    return put(state, jax.tree.map(lambda _: axis_sharding(mesh, runs), state))


def abstract_like(state):
    """ShapeDtypeStructs with the state's shardings: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def fetch(tree):
    """Host copies of (possibly multi-process, sharded) arrays."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(x):
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def any_process(flag: bool) -> bool:
    """True when `flag` is true in any process, so that all stop at the same step."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
