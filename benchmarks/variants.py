"""Each native kernel variant this CPU can run, against the XLA paths, side by side in one run.

    python -m benchmarks.variants                                    # IRNN at batch 32 and 256
    python -m benchmarks.variants --cell=lstm --batch_sizes=32 --steps=10
    python -m benchmarks.variants --xla_max_isa=AVX2 --variants=avx2 # an AVX2 machine, on an AVX-512 one

The package builds one library per instruction set (setup.py: AVX-512 and AVX2 on x86-64) and loads
the best one the CPU runs; IRNN_JAX_NATIVE_ISA forces another. A process holds one library, so each
variant is timed in worker processes of its own (`benchmarks.step_ratio`, which times the training
step of `recurrence=native` and of the XLA paths in alternation, against the bare chain), and the
workers of the variants take turns, round after round: a burst of load from elsewhere hits them all.
Reported is each side's best over the rounds. `--xla_max_isa=AVX2` holds XLA (the XLA paths and the
bare chain) to AVX2 (XLA_FLAGS=--xla_cpu_max_isa), so that with `--variants=avx2` an AVX-512 machine
shows what an AVX2 machine would run: the same instructions, on another core's timings.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags

from benchmarks.machine import cpu_model


def define_flags() -> dict:
    """The command line's flags, defined only when this runs as a program (other benchmarks, imported
    beside it in one process, use the same names)."""
    return {
        "variants": flags.DEFINE_list("variants", [], "Variants to time (default: every one this CPU can run)."),
        "xla": flags.DEFINE_list("xla", "fused,scan", "XLA recurrences to time beside them (in every worker)."),
        "batch_sizes": flags.DEFINE_list("batch_sizes", "32,256", "Global batch sizes."),
        "steps": flags.DEFINE_list("steps", "25,10", "Optimiser steps per jitted call, per batch size."),
        "cell": flags.DEFINE_enum("cell", "irnn", ["irnn", "lstm"], "The cell (step_ratio's --cell)."),
        "rounds": flags.DEFINE_integer("rounds", 2, "Rounds of one worker per variant.", lower_bound=1),
        "repeats": flags.DEFINE_integer("repeats", 3, "Repetitions in each worker.", lower_bound=1),
        "xla_max_isa": flags.DEFINE_string("xla_max_isa", "", "Hold XLA to this instruction set (e.g. AVX2)."),
        "json_out": flags.DEFINE_string("json_out", "", "Write the table's rows as JSON here."),
    }


def runnable_variants() -> list[str]:
    """The package's variants that pass their checks on this CPU, best first."""
    from irnn_jax import native_library

    out = []
    for library in native_library.package_libraries():
        if native_library.try_library(library.resolve()).reason is None:
            out.append(native_library.variant_of_file(library))
    return out


def worker(variant: str, recurrences: list[str], options: dict, out: Path) -> list[dict]:
    """One step_ratio process with `variant` forced; its JSON rows."""
    env = dict(os.environ, **({"IRNN_JAX_NATIVE_ISA": variant} if variant else {}))
    if options["xla_max_isa"]:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_max_isa={options['xla_max_isa']}".strip()
    command = [
        sys.executable, "-m", "benchmarks.step_ratio", f"--recurrence={','.join(recurrences)}",
        f"--batch_sizes={options['batch_sizes']}", f"--steps={options['steps']}", f"--cell={options['cell']}",
        f"--repeats={options['repeats']}", f"--json_out={out}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"worker for {variant or 'XLA'} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())["rows"]


def compare(variants: list[str], xla: list[str], options: dict, rounds: int, log=print) -> list[dict]:
    """Best step time of each side at each batch over `rounds` rounds of one worker per variant (each
    also timing the XLA paths); the bare chain is the best any worker saw."""
    best: dict[tuple[int, str], float] = {}
    chains: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(rounds):
            for k, variant in enumerate(variants):
                # The XLA paths in every worker: each round compares them with the variant beside it.
                rows = worker(variant, [*xla, "native"], options, Path(scratch) / f"{r}_{k}.json")
                for row in rows:
                    side = f"native ({variant})" if row["recurrence"] == "native" else row["recurrence"]
                    key = (row["batch"], side)
                    best[key] = min(best.get(key, float("inf")), row["step_ms"])
                    chains[row["batch"]] = min(chains.get(row["batch"], float("inf")), row["chain_ms"])
                log(f"round {r + 1}, {variant}: done")
    fused = {b: t for (b, side), t in best.items() if side == "fused"}
    return [
        {
            "batch": b,
            "side": side,
            "step_ms": t,
            "ratio_to_3_chains": t / (3 * chains[b]),
            "vs_fused": fused[b] / t if b in fused else None,
        }
        for (b, side), t in sorted(best.items())
    ]


def format_table(rows: list[dict]) -> str:
    lines = ["| batch | path | step ms (best) | step / 3 bare chains | speed against fused |", "|---|---|---|---|---|"]
    for r in rows:
        vs = f"{r['vs_fused']:.2f}x" if r["vs_fused"] else "-"
        lines.append(f"| {r['batch']} | {r['side']} | {r['step_ms']:.2f} | {r['ratio_to_3_chains']:.2f}x | {vs} |")
    return "\n".join(lines)


def main(argv, f: dict) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    variants = f["variants"].value or runnable_variants()
    if not variants:
        raise SystemExit("no native kernel variant runs on this CPU: nothing to compare (fused is what runs)")
    options = dict(batch_sizes=",".join(f["batch_sizes"].value), steps=",".join(f["steps"].value),
                   cell=f["cell"].value, repeats=f["repeats"].value, xla_max_isa=f["xla_max_isa"].value)  # fmt: skip
    rows = compare(variants, f["xla"].value, options, f["rounds"].value)
    held = f"; XLA held to {options['xla_max_isa']}" if options["xla_max_isa"] else ""
    print(f"{cpu_model()}, {os.cpu_count()} cores; cell {options['cell']}; variants {', '.join(variants)}{held}")
    print(format_table(rows))
    if f["json_out"].value:
        Path(f["json_out"].value).write_text(json.dumps({"machine": cpu_model(), "xla_max_isa": options["xla_max_isa"],
                                                         "cell": options["cell"], "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    _flags = define_flags()
    app.run(lambda argv: main(argv, _flags))
