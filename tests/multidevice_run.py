"""Runs a tiny experiment in a fresh process; tests/test_parallel.py starts it with
XLA_FLAGS=--xla_force_host_platform_device_count=N to get N CPU devices, or as
one of several processes (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID), which train_and_evaluate joins through jax.distributed."""

import json
import sys

import jax
import numpy as np

from irnn_jax import loop, parallel
from tests.conftest import tiny_config


def main(workdir: str, data_dir: str, overrides: str) -> None:
    config = tiny_config(data_dir, **json.loads(overrides))
    result = loop.train_and_evaluate(config, workdir)
    leaves = jax.tree_util.tree_flatten_with_path(parallel.fetch(result.state.params))[0]
    if parallel.is_main_process():
        np.savez(f"{workdir}/params.npz", **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves})
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(), "step": result.step}))


if __name__ == "__main__":
    main(*sys.argv[1:])
