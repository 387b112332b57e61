"""Large batches against the machine's matmul peak: the training step with the batch's gradient taken
whole and in row chunks (`config.grad_chunk_rows`), side by side in one process.

    python -m benchmarks.large_batch                                   # batch 32, 256, 1024; whole vs auto
    python -m benchmarks.large_batch --chunk_rows=0,16,32,64 --batch_sizes=1024 --steps=2
    python -m benchmarks.large_batch --recurrence=native,fused,scan --chunk_rows=0,32 --batch_sizes=1024 --steps=2

The step is the pixel-MNIST IRNN's (the `keras` preset, as `experiments.pixel_mnist` runs it: the CPU
split into one device per core unless `--cpu_devices` says otherwise, the batch divided among them).
Its rate is set against the float32 2048 x 2048 `jnp.matmul` rate of the same machine, measured in
the same run before and after the steps (the higher is kept):

    % of matmul = 47.5 MFLOP a sample x samples/s / matmul FLOP/s

(47.5 M = 784 x (2x100x100 + 2x100) x 3, forward and backward; `benchmarks/compare.py`; `--cell=lstm`
times the LSTM of `budget_lstm`, four times that). `per sample
against the first batch` divides each row's samples/s by the first batch size's best. The variants of
a batch size take turns, one repetition each, best of `--repeats`, so load from elsewhere hits all.
"""

import json
import os

from absl import app, flags

from benchmarks import timing
from benchmarks.frameworks import flop_per_sample, measure_matmul
from benchmarks.machine import cpu_model

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", "32,256,1024", "Global batch sizes to time.")
_STEPS = flags.DEFINE_list("steps", "10,4,2", "Optimiser steps per jitted call, per batch size (the last repeats).")
_CHUNK_ROWS = flags.DEFINE_list(
    "chunk_rows", "0,-1", "config.grad_chunk_rows values, side by side (0: whole, -1: auto, N: N rows a chunk)."
)
_RECURRENCE = flags.DEFINE_list("recurrence", "auto", "config.recurrence values of the step; several: side by side.")
_CELL = flags.DEFINE_enum("cell", "irnn", ["irnn", "lstm"], "irnn: the keras preset; lstm: budget_lstm.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "As the command line's --cpu_devices (0: one per core).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Repetitions of each; the best is reported.", lower_bound=1)
_JSON_OUT = flags.DEFINE_string("json_out", "", "Write the rows as JSON here.")


def measure(batch: int, steps: int, chunk_values, recurrences, repeats: int, cell: str = "irnn") -> list[dict]:
    """One row per (recurrence, grad_chunk_rows value) at `batch`, timed in turns."""
    import jax

    from experiments.configs import pixel_mnist
    from irnn_jax import recurrence as recurrence_lib
    from irnn_jax import train

    calls = []
    for recurrence in recurrences:
        for value in chunk_values:
            call, devices, hidden = timing.train_fn(batch, steps, recurrence, cell, grad_chunk_rows=value)
            timing.best_ms(call)  # compiles
            calls.append(((recurrence, value), call))
    times = {key: [] for key, _ in calls}
    for _ in range(repeats):
        for key, call in calls:
            times[key].append(timing.best_ms(call) / steps)
    rows = []
    per_device = batch // devices
    for (recurrence, value), _ in calls:
        c = pixel_mnist.get_config("budget_lstm" if cell == "lstm" else "keras")
        c.batch_size, c.recurrence, c.grad_chunk_rows = batch, recurrence, value
        ms = min(times[(recurrence, value)])
        resolved = train.resolve_chunk_rows(c, per_device, jax.devices()[0].platform)
        rows.append(
            {
                "batch": batch,
                "devices": devices,
                "per_device_batch": per_device,
                "recurrence": recurrence,
                "ran": recurrence_lib.resolve(
                    recurrence, c.cell, c.hidden_size, batch=train.chunk_size(per_device, resolved)
                ),
                "grad_chunk_rows": value,
                "chunk_rows_resolved": resolved,
                "step_ms": ms,
                "step_ms_all": times[(recurrence, value)],
                "samples_per_s": 1e3 * batch / ms,
                "cell": cell,
                "gflops": flop_per_sample(hidden, cell=cell) * 1e3 * batch / ms / 1e9,
            }
        )
    return rows


def main(argv):
    del argv
    from irnn_jax import native, parallel

    batches = [int(b) for b in _BATCH_SIZES.value]
    steps = [int(s) for s in _STEPS.value]
    steps += [steps[-1]] * (len(batches) - len(steps))
    parallel.use_cpu_devices(_CPU_DEVICES.value, max(batches))
    peak = measure_matmul(2048, 5)["cpu"]["flop_per_s"]
    chunk_values = [int(v) for v in _CHUNK_ROWS.value]
    rows = []
    for batch, n in zip(batches, steps, strict=False):
        rows += measure(batch, n, chunk_values, _RECURRENCE.value, _REPEATS.value, _CELL.value)
    peak = max(peak, measure_matmul(2048, 5)["cpu"]["flop_per_s"])
    best_first = max(r["samples_per_s"] for r in rows if r["batch"] == batches[0])
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average {os.getloadavg()[0]:.2f}")
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s (float32 2048x2048 jnp.matmul, best of two medians)")
    print(f"native kernels: {native.status().variant or native.status().reason}\n")
    print(
        "| batch | devices x rows | recurrence (ran) | grad_chunk_rows (resolved) | step ms (best) | samples/s "
        "| GFLOP/s | % of matmul | per sample against the first batch |"
    )
    print("|" + "---|" * 9)
    for r in rows:
        r["matmul_flop_per_s"] = peak
        r["fraction_of_matmul"] = r["gflops"] * 1e9 / peak
        r["per_sample_vs_first"] = r["samples_per_s"] / best_first
        print(
            f"| {r['batch']} | {r['devices']} x {r['per_device_batch']} | {r['recurrence']} ({r['ran']}) "
            f"| {r['grad_chunk_rows']} "
            f"({r['chunk_rows_resolved']}) | {r['step_ms']:.1f} | {r['samples_per_s']:,.0f} | {r['gflops']:.1f} "
            f"| {100 * r['fraction_of_matmul']:.0f}% | {r['per_sample_vs_first']:.2f} |"
        )
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump({"cpu": cpu_model(), "matmul_flop_per_s": peak, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
