"""One check of the GPU paths, for a machine with a GPU, in a few minutes: tests, compiled Pallas, timings.

    python -m benchmarks.gpu_check                     # on a machine with a GPU and a CUDA jaxlib
    python -m benchmarks.gpu_check --json_out=gpu.json --md_out=gpu.md
    python -m benchmarks.gpu_check --allow_cpu --batch_sizes=8 --steps=2 --unrolls=1,2   # the script itself, on CPU

It does three things, each printing one line that says what it did or why it skipped:

1. **The recurrence tests on the GPU**: `tests/test_recurrence.py`, `tests/test_lstm.py` and
   `tests/test_model.py` under pytest, where JAX's default backend is the GPU (the Pallas tests then
   compile their kernels through Triton instead of interpreting them).
2. **Compiled Pallas against `scan`**: the pixel-MNIST IRNN's recurrence (784 steps, 100 units, batch
   32 and the largest `--batch_sizes`), relu and tanh, values and gradients, with Pallas compiled for
   the GPU (never interpret mode), to float32 rounding (rtol 1e-4 of the largest value).
3. **One table of timings**: the training step as `experiments.pixel_mnist` runs it (the `keras`
   preset; `grad_chunk_rows` left to auto, which is off on GPU) for `scan` (nn.scan, `unroll` 1 and
   each of `--unrolls`), `fused` and `pallas`, at each of `--batch_sizes`: the best of `--repeats`
   calls of `--steps` steps, and the epoch (60,000 images) that rate gives.

Without a GPU it says so and stops (exit 0), unless `--allow_cpu` runs steps 3 on the CPU (Pallas
left out: it has no CPU compiler), which is how `tests/test_benchmarks.py` checks the script. What
it needs: a jaxlib with CUDA (`pip install -U "jax[cuda12]"`), the project installed with its test
extras (`pip install -e ".[test]"`).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from benchmarks import timing
from benchmarks.machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
TESTS = ("tests/test_recurrence.py", "tests/test_lstm.py", "tests/test_model.py")
EPOCH = 60_000  # MNIST training images

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", "32,1024", "Global batch sizes to time.")
_STEPS = flags.DEFINE_list("steps", "50,10", "Optimiser steps per timed call, per batch size (the last repeats).")
_UNROLLS = flags.DEFINE_list("unrolls", "1,8,16", "config.unroll values of nn.scan to time.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls of each; the best is reported.", lower_bound=1)
_ALLOW_CPU = flags.DEFINE_bool("allow_cpu", False, "Without a GPU, time on the CPU instead of stopping.")
_SKIP_TESTS = flags.DEFINE_bool("skip_tests", False, "Leave out step 1 (the test files under pytest).")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Write the results as JSON here.")
_MD_OUT = flags.DEFINE_string("md_out", "", "Write the table as Markdown here.")


def run_tests() -> tuple[bool, str]:
    """Step 1: (passed, pytest's last line)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *TESTS],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode == 0, lines[-1] if lines else done.stderr[-500:]


def pallas_against_scan(batch: int) -> float:
    """Step 2: the largest difference of compiled Pallas from scan (values and gradients, relu and tanh),
    as a fraction of the largest value; raises AssertionError when over 1e-4."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from irnn_jax import pallas_rnn, recurrence

    assert not pallas_rnn._interpret(None), "Pallas would run in interpret mode here"
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (batch, 784, 1)), jnp.float32)
    worst = 0.0
    for activation in ("relu", "tanh"):
        h = 100
        rec = np.eye(h) * 0.98 + rng.normal(0, 0.01, (h, h)) if activation == "relu" else rng.normal(0, 0.1, (h, h))
        params = {
            "kernel": jnp.asarray(rng.normal(0, 0.5, (1, h)), jnp.float32),
            "recurrent_kernel": jnp.asarray(rec, jnp.float32),
            "bias": jnp.asarray(rng.normal(0, 0.1, h) - (0.05 if activation == "relu" else 0), jnp.float32),
        }

        def loss(p, x, name=None, act=activation):
            return jnp.sum(jnp.sin(recurrence.final_state(name, p, x, act)))

        outs = {}
        for name in ("scan", "pallas"):
            f = jax.jit(jax.value_and_grad(lambda p, x, n=name: loss(p, x, n), argnums=(0, 1)))
            outs[name] = jax.tree.map(np.asarray, f(params, x))
        for got, want in zip(jax.tree.leaves(outs["pallas"]), jax.tree.leaves(outs["scan"]), strict=True):
            scale = max(float(np.abs(want).max()), 1e-6)
            worst = max(worst, float(np.abs(got - want).max()) / scale)
    assert worst <= 1e-4, f"compiled Pallas differs from scan by {worst:.2e} of the largest value"
    return worst


def time_paths(batches, steps, unrolls, repeats, with_pallas: bool) -> list[dict]:
    """Step 3: one row per (batch, path)."""
    paths = [("scan", u) for u in unrolls] + [("fused", 1)] + ([("pallas", 1)] if with_pallas else [])
    rows = []
    for batch, n in zip(batches, steps, strict=False):
        for rec, unroll in paths:
            started = time.perf_counter()
            call, devices, _ = timing.train_fn(batch, n, rec, unroll=unroll)
            timing.best_ms(call)  # compiles
            compile_s = time.perf_counter() - started
            ms = min(timing.best_ms(call) for _ in range(repeats)) / n
            rows.append(
                {
                    "batch": batch,
                    "path": rec if rec != "scan" else f"scan (nn.scan, unroll {unroll})",
                    "devices": devices,
                    "step_ms": ms,
                    "epoch_s": ms * -(-EPOCH // batch) / 1e3,
                    "samples_per_s": 1e3 * batch / ms,
                    "compile_s": compile_s,
                }
            )
            print(f"  batch {batch}, {rows[-1]['path']}: {ms:.2f} ms a step", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| batch | path | ms a step (best) | an epoch of 60,000 (s) | samples/s | compile + first call (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['path']} | {r['step_ms']:.2f} | {r['epoch_s']:.1f} | {r['samples_per_s']:,.0f} "
            f"| {r['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    import jax

    started = time.perf_counter()
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    device = f"{gpus[0].device_kind} x {len(gpus)}" if gpus else f"no GPU ({cpu_model()})"
    print(f"device: {device}; jax {jax.__version__}; default backend {jax.default_backend()}")
    if not gpus and not _ALLOW_CPU.value:
        print(
            "SKIP all: JAX sees no GPU here (install a CUDA jaxlib, pip install -U 'jax[cuda12]', on a machine "
            "with one); --allow_cpu runs the timings on the CPU instead"
        )
        return
    result = {"device": device, "jax": jax.__version__}
    if not gpus:
        print("SKIP tests on the GPU: no GPU")
    elif _SKIP_TESTS.value:
        print("SKIP tests on the GPU: --skip_tests")
    else:
        ok, last = run_tests()
        result["tests"] = {"passed": ok, "summary": last}
        print(f"{'PASS' if ok else 'FAIL'} tests on the GPU ({', '.join(TESTS)}): {last}", flush=True)
    batches = [int(b) for b in _BATCH_SIZES.value]
    if gpus:
        for batch in sorted({32, max(batches)}):
            worst = pallas_against_scan(batch)
            print(f"PASS compiled Pallas against scan at batch {batch}: off by {worst:.1e} of the largest value")
        result["pallas_checked"] = True
    else:
        print("SKIP compiled Pallas against scan: no GPU (Pallas has no CPU compiler; the tests run it interpreted)")
    steps = [int(s) for s in _STEPS.value]
    steps += [steps[-1]] * (len(batches) - len(steps))
    print("timings:", flush=True)
    rows = time_paths(batches, steps, [int(u) for u in _UNROLLS.value], _REPEATS.value, with_pallas=bool(gpus))
    if not gpus:
        print("SKIP pallas timings: no GPU")
    text = table(rows)
    print(f"\n{device}, jax {jax.__version__}:\n\n{text}\n\ntotal {time.perf_counter() - started:.0f} s")
    result["rows"] = rows
    if _JSON_OUT.value:
        Path(_JSON_OUT.value).write_text(json.dumps(result, indent=1))
    if _MD_OUT.value:
        Path(_MD_OUT.value).write_text(f"{device}, jax {jax.__version__}\n\n{text}\n")
    if "tests" in result and not result["tests"]["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    app.run(main)
