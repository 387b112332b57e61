"""Time per training step of a sweep of R runs against one run (pixel-MNIST IRNN).

    python -m benchmarks.sweep_scaling [--runs=1,8,32] [--batch_size=32] [--steps=10]

Times the same jitted chunk of `steps_per_call` steps the training loop runs
(`irnn_jax.loop`), over R runs that differ in seed (`sweep.over_runs`), on random pixels,
after one warm-up call; median of --repeats calls. The CPU is split into
devices as the command line does (--cpu_devices; 0: one per core, as many as
divide the batch and every sweep size): one run splits its batch over them,
a sweep its runs.
"""

import math
import time

import jax
import numpy as np
from absl import app, flags

from experiments.configs import pixel_mnist
from irnn_jax import data, loop, parallel

_RUNS = flags.DEFINE_list("runs", ["1", "8", "32"], "sweep sizes to time")
_BATCH = flags.DEFINE_integer("batch_size", 32, "batch per run")
_STEPS = flags.DEFINE_integer("steps", 10, "optimiser steps per timed call")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls; the median is reported")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "CPU devices, as the experiments' flag", lower_bound=0)


def time_sweep(num_runs: int, batch_size: int, steps: int, repeats: int) -> float:
    """Median seconds per optimiser step (all runs together)."""
    c = pixel_mnist.get_config("keras")
    c.batch_size = batch_size
    if num_runs > 1:
        c.sweep = "seed=" + ",".join(str(s) for s in range(num_runs))
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (1000, 28, 28), np.uint8), rng.integers(0, 10, 1000, np.int32))
    s = loop.setup(c, dataset=data.Dataset("random pixels", split, split, source="random"))
    state, chunk, data_on_device = s.state, s.chunk_fn, s.train_data
    idx, mask = s.train_indices(0, steps)
    state = jax.block_until_ready(chunk(state, data_on_device, idx, mask))  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        state = jax.block_until_ready(chunk(state, data_on_device, idx, mask))
        times.append((time.perf_counter() - t) / steps)
    return float(np.median(times))


def main(argv):
    del argv
    sizes = [int(x) for x in _RUNS.value]
    parallel.use_cpu_devices(_CPU_DEVICES.value, math.gcd(_BATCH.value, *(r for r in sizes if r > 1)))
    print(
        f"pixel-MNIST IRNN (hidden 100, 784 steps), batch {_BATCH.value} per run, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    )
    print("| runs | ms per step (all runs) | ms per run-step | speed-up over separate runs |")
    print("|---|---|---|---|")
    base = None
    for r in sizes:
        t = time_sweep(r, _BATCH.value, _STEPS.value, _REPEATS.value)
        if r == 1:
            base = t
        speedup = f"{r * base / t:.2f}x" if base else ""
        print(f"| {r} | {1000 * t:.1f} | {1000 * t / r:.2f} | {speedup} |", flush=True)


if __name__ == "__main__":
    app.run(main)
