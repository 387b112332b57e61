"""Devices and hosts: one mesh over every device, arrays placed on it.

One 1-D mesh axis, "data", spans all devices of all processes. A sweep shards
its run axis over it (each device trains some of the runs); a single run
shards its batch axis (data parallelism: the parameters are replicated, and
`sum_over_batch_shards` runs each device's share of the batch with `shard_map`
and sums the results with one all-reduce). The same program runs on one CPU, one GPU,
several GPUs or several hosts; `jax.distributed.initialize()` joins the hosts
when the launcher asks for it (SLURM with several tasks, Cloud TPU pods, or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set by hand).
"""

import atexit
import os

import jax
import numpy as np
from absl import logging
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from irnn_jax import peers

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
    timeout_s, interval_s = peers.settings()
    heartbeat = peers.jax_heartbeat_timeout(timeout_s)
    _join(explicit, heartbeat)
    logging.info(
        "process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count()
    )
    # The coordination service's client: no public accessor in JAX 0.10; without it, JAX's own
    # (slower, aborting) heartbeat is all there is.
    client = getattr(getattr(jax_distributed, "global_state", None), "client", None)
    if client is None:
        logging.warning("no jax.distributed client found: a lost process will be noticed only by JAX itself")
        return
    watchdog = peers.start(client, jax.process_index(), jax.process_count(), timeout_s, interval_s)
    atexit.register(watchdog.done)  # registered after JAX's shutdown hook, so it runs before it


def _join(explicit: bool, heartbeat_timeout_seconds: int) -> None:
    if explicit:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        )
    else:  # detects SLURM (and Cloud TPU) by itself
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: what taskset, SLURM or a container allow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_device_count(requested: int, share: int, cores: int) -> int:
    """How many CPU devices to make: `requested` if > 0, else the largest count <= `cores` that divides
    `share` (the batch size, or a sweep's number of runs), so that every device gets an equal part."""
    if requested > 0:
        return requested
    return max(n for n in range(1, max(cores, 1) + 1) if share % n == 0)


def use_cpu_devices(requested: int, share: int) -> int | None:
    """Splits the host CPU into JAX devices, by default one per usable core (see `cpu_device_count`).

    XLA runs the small matmuls of a batch-32 recurrence on one core; one device per core with the
    batch split across them uses them all (`benchmarks/compare.py`). Must run before JAX starts its
    backends; GPUs and TPUs are not affected (the CPU devices are then unused). Returns the count, or
    None where the user already chose one through XLA_FLAGS or JAX_NUM_CPU_DEVICES, which win.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") or os.environ.get(
        "JAX_NUM_CPU_DEVICES"
    ):
        return None
    n = cpu_device_count(requested, share, usable_cores())
    jax.config.update("jax_num_cpu_devices", n)  # RuntimeError if a JAX computation already ran
    return n


def is_main_process() -> bool:
    return jax.process_index() == 0


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def axis_sharding(mesh: Mesh, size: int, axis: int = 0) -> NamedSharding:
    """Shards `axis` (of length `size`) when the device count divides it, else replicates."""
    if size % mesh.size == 0:
        return NamedSharding(mesh, P(*[None] * axis, AXIS))
    return NamedSharding(mesh, P())


def split_batch_mesh(mesh: Mesh, batch_size: int) -> Mesh | None:
    """`mesh` when a batch of `batch_size` is split over its devices (see `axis_sharding`), else None.

    The train and eval steps take it to run each device's share and add up the results."""
    return mesh if mesh.size > 1 and batch_size % mesh.size == 0 else None


def device_rows(mesh: Mesh, batch_size: int, is_sweep: bool = False) -> int:
    """The rows of a batch each device runs: its share where `split_batch_mesh` splits the batch, else
    all of it (a sweep's runs keep their batches whole)."""
    split = not is_sweep and split_batch_mesh(mesh, batch_size) is not None
    return batch_size // mesh.size if split else batch_size


def sum_over_batch_shards(fn, mesh: Mesh):
    """fn(replicated, batch) run by each device on its share of the batch (axis 0 split over `mesh`),
    the results summed over devices with one all-reduce: data parallelism written out.

    `fn` may itself call `jax.lax.psum(..., AXIS)`, e.g. for the whole batch's example count. Its
    outputs are per-device partial sums until the final psum, hence check_vma=False."""

    def local(replicated_args, batch):
        return jax.lax.psum(fn(replicated_args, batch), AXIS)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False)


def map_over_run_shards(fn, mesh: Mesh, in_axes: tuple, out_axis: int = 0):
    """fn run by each device on its own runs of a sweep, with no communication between devices.

    `in_axes[i]` is argument i's run axis (None: the same on every device, e.g. the data). A
    sweep's runs are independent, so each device steps its share with `fn` (the chunk over its
    runs, `sweep.over_runs`) and nothing crosses devices, by construction rather than by the
    automatic partitioner's choice. Measured on 2 CPU devices, it made no difference in speed
    against the partitioner (41.9 against 43.0 ms for 2 vmapped runs at batch 32): the sweep's
    slowness there came from vmap's batched matmuls, which `sweep.over_runs` removes on CPU."""

    def spec(axis):
        return P() if axis is None else P(*[None] * axis, AXIS)

    return jax.shard_map(
        fn, mesh=mesh, in_specs=tuple(spec(a) for a in in_axes), out_specs=spec(out_axis), check_vma=False
    )


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


def put_state(state, mesh: Mesh, is_sweep: bool):
    """A sweep's state sharded along its run axis; a single run's replicated."""
    if not is_sweep:
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

    def one(x):
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def any_process(flag: bool) -> bool:
    """True when `flag` is true in any process, so that all stop at the same step."""
    if jax.process_count() == 1:
        return bool(flag)

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def barrier(name: str) -> None:
    """Waits until every process gets here; no-op in a single process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
