"""The IRNN training step against the sequential work it cannot avoid, side by side in one process.

    python -m benchmarks.step_ratio                        # batch 32 and 256, one device per core
    python -m benchmarks.step_ratio --cpu_devices=1        # the whole batch on one device
    python -m benchmarks.step_ratio --batch_sizes=32 --repeats=9 --json_out=ratio.json
    python -m benchmarks.step_ratio --batch_sizes=32 --block_rows=512,1000000   # backward blocks vs one
    python -m benchmarks.step_ratio --cell=lstm --batch_sizes=32 --steps=10      # the LSTM (budget_lstm)
    python -m benchmarks.step_ratio --recurrence=fused,native --batch_sizes=32   # the XLA loops vs the kernel

A training step of the pixel-MNIST IRNN (the `keras` preset, as `experiments.pixel_mnist` runs it:
the CPU split into devices, the batch divided among them, `steps` optimiser steps per jitted call)
has to run three dependent chains of 784 small matmuls: the forward h_t = relu(x_t w + h_{t-1} W),
the backward dz_t W^T, and the weight-gradient sum over the same (T, B, H) rows, about as much
arithmetic again. The floor is one bare forward chain, timed here at the batch each device sees, in
a jitted `lax.scan` on one device: 784 x relu(h @ W + x_t w), nothing kept (the LSTM: its matmul
and gates a step, `--cell=lstm`). Reported is

    ratio = training step (ms) / (3 x bare chain (ms))

1.0 would be a step that does nothing but its three chains at the rate the core runs one. The two
are measured in alternation (one repetition of each, then the next), each the best of
`--repeats`, so a burst of load from elsewhere on a shared machine hits both.
"""

import json
import os

from absl import app, flags

from benchmarks import chains
from benchmarks.machine import cpu_model
from benchmarks.timing import best_ms, train_fn

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", "32,256", "Global batch sizes to time.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "As the command line's --cpu_devices (0: one per core).")
_STEPS = flags.DEFINE_list("steps", "25,10", "Optimiser steps per jitted call, per batch size (the last repeats).")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Repetitions of each; the best is reported.", lower_bound=1)
_CHAIN_CALLS = flags.DEFINE_integer("chain_calls", 5, "Chain calls per repetition (its time is their mean).")
_RECURRENCE = flags.DEFINE_list(
    "recurrence", "fused", "config.recurrence of the training step; several: each timed, in alternation."
)
_CELL = flags.DEFINE_enum(
    "cell", "irnn", ["irnn", "lstm"], "irnn: the keras preset; lstm: budget_lstm, against the LSTM's bare chain."
)
_BLOCK_ROWS = flags.DEFINE_list(
    "block_rows",
    [],
    "Time the step at each of these recurrence.BLOCK_ROWS, side by side (default: the library's). "
    "A value >= 784 x the per-device batch gives one block of all T steps, the weight gradients in one "
    "matmul after the backward loop; the per-device batch itself gives blocks of 1 step.",
)
_JSON_OUT = flags.DEFINE_string("json_out", "", "Write the rows as JSON here.")

T = 784  # pixel-MNIST sequence length


def chain_fn(batch: int, hidden: int, device, cell: str = "irnn"):
    """A zero-argument call running the bare forward chain at `batch` on `device`."""
    import jax
    import numpy as np

    weights, chain = chains.bare_chain(cell, batch, hidden)
    x_TxBx1 = np.random.default_rng(1).uniform(0, 1, (T, batch, 1)).astype(np.float32)
    args = jax.device_put((*weights, x_TxBx1), device)
    chain = jax.jit(chain)
    return lambda: chain(*args)


def chain_everywhere_fn(batch: int, hidden: int, cell: str = "irnn"):
    """A zero-argument call running one bare forward chain at `batch` on every device at once: the
    floor when all cores work, so that what the cores share (memory, caches, clock) weighs on it as it
    weighs on a training step split over them."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
    weights, local = chains.bare_chain(cell, batch, hidden)
    x_TxNBx1 = np.random.default_rng(1).uniform(0, 1, (T, len(devices) * batch, 1)).astype(np.float32)
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "d"))  # each device: `batch` columns
    args = (*(jax.device_put(w, replicated) for w in weights), jax.device_put(x_TxNBx1, split))
    chain = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(None, "d")), out_specs=P("d"), check_vma=False)
    )
    return lambda: chain(*args)


def measure(
    batch: int, steps: int, repeats: int, chain_calls: int, recurrences, block_rows=(None,), cell: str = "irnn"
) -> list:
    """One row per recurrence in `recurrences` and value of `block_rows` (recurrence.BLOCK_ROWS
    while the step compiles; None: the default), all timed in alternation with the chains."""
    import statistics

    import jax

    from irnn_jax import recurrence as recurrence_lib

    default_rows = recurrence_lib.BLOCK_ROWS
    trains = []
    for rec in recurrences:
        for rows in block_rows if rec == "fused" else [None]:  # the blocks are the XLA loops'
            recurrence_lib.BLOCK_ROWS = default_rows if rows is None else rows
            train, devices, hidden = train_fn(batch, steps, rec, cell)
            best_ms(train)  # compiles now, with this BLOCK_ROWS
            trains.append((rec, recurrence_lib.BLOCK_ROWS, train))
    recurrence_lib.BLOCK_ROWS = default_rows
    per_device = batch // devices
    chain = chain_fn(per_device, hidden, jax.devices()[0], cell)
    everywhere = chain_everywhere_fn(per_device, hidden, cell) if devices > 1 else chain
    for _ in range(2):  # compile and warm up
        for *_, train in trains:
            best_ms(train)
        best_ms(chain)
        best_ms(everywhere)
    step_ms, chain_ms, everywhere_ms = [[] for _ in trains], [], []
    for _ in range(repeats):
        for k, (*_, train) in enumerate(trains):
            step_ms[k].append(best_ms(train) / steps)
        chain_ms.append(best_ms(chain, chain_calls))
        everywhere_ms.append(best_ms(everywhere, chain_calls))
    bare, busy = min(chain_ms), min(everywhere_ms)
    flop = 2 * T * per_device * hidden * hidden * (4 if cell == "lstm" else 1)
    out = []
    for (rec, rows, _), times in zip(trains, step_ms, strict=True):
        step = min(times)
        out.append(
            {
                "batch": batch,
                "devices": devices,
                "per_device_batch": per_device,
                "cell": cell,
                "recurrence": rec,
                "block_rows": rows,
                "block_steps": recurrence_lib.block_steps(T, per_device, rows),
                "step_ms": step,
                "step_ms_median": statistics.median(times),
                "chain_ms": bare,
                "ratio_to_3_chains": step / (3 * bare),
                "chain_all_devices_ms": busy,  # the chain on every device at once (= chain_ms on one device)
                "ratio_to_3_chains_all_devices": step / (3 * busy),
                "chain_gflops": flop / bare / 1e6,
                "samples_per_s": 1e3 * batch / step,
                "step_ms_all": times,
                "chain_ms_all": chain_ms,
                "chain_all_devices_ms_all": everywhere_ms,
            }
        )
    return out


def format_rows(rows: list[dict]) -> str:
    head = (
        "| batch | devices x per-device batch | recurrence | backward blocks | step ms (median) | bare chain ms "
        "| step / 3 chains | chain on all devices at once ms | step / 3 of those | chain GFLOP/s | samples/s |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        blocks = f"{r['block_steps']} steps" if r["recurrence"] == "fused" else "-"
        lines.append(
            f"| {r['batch']} | {r['devices']} x {r['per_device_batch']} | {r['recurrence']} | {blocks} "
            f"| {r['step_ms']:.2f} ({r['step_ms_median']:.2f}) | {r['chain_ms']:.2f} "
            f"| {r['ratio_to_3_chains']:.2f}x | {r['chain_all_devices_ms']:.2f} "
            f"| {r['ratio_to_3_chains_all_devices']:.2f}x | {r['chain_gflops']:.1f} | {r['samples_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    batches = [int(b) for b in _BATCH_SIZES.value]
    steps = [int(s) for s in _STEPS.value]
    if min(batches + steps) < 1:
        raise app.UsageError("batch sizes and steps must be positive")
    from irnn_jax import parallel

    n = parallel.use_cpu_devices(_CPU_DEVICES.value, batches[0])
    for b in batches:
        if n and b % n:
            raise app.UsageError(f"batch {b} does not split over {n} devices; give sizes divisible by {n}")
    import jax

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    block_rows = [int(r) for r in _BLOCK_ROWS.value] or [None]
    rows = [
        row
        for i, b in enumerate(batches)
        for row in measure(
            b,
            steps[min(i, len(steps) - 1)],
            _REPEATS.value,
            _CHAIN_CALLS.value,
            _RECURRENCE.value,
            block_rows,
            _CELL.value,
        )
    ]
    print(
        f"jax {jax.__version__}; {cpu_model()}, {os.cpu_count()} cores; load average before {load}; cell {_CELL.value}"
    )
    print(format_rows(rows))
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump({"machine": cpu_model(), "jax": jax.__version__, "load_before": load, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
