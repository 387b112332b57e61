"""Speed of one IRNN training step: this project (JAX) beside Keras 3 (TensorFlow) and PyTorch.

    python -m benchmarks.compare                    # jax, keras, torch at batch 32, 256, 1024
    python -m benchmarks.compare --frameworks=jax --batch_sizes=32 --recurrence=scan,fused --cpu_devices=1,0
    python -m benchmarks.compare --steps=20,5,2 --json_out=bench.json --md_out=bench.md

One step is forward + backward + RMSprop update (lr 1e-6, global-norm clipping 1.0) of the
pixel-MNIST IRNN: 784 steps of 1 value, 100 ReLU units with identity recurrent init, Dense 10,
softmax cross-entropy. Every (framework, batch size) runs in its own subprocess, so imports,
thread pools and peak memory do not mix. Warm-up steps (compilation) are excluded; each
row is the median over `--repeats` runs of `--steps` steps. JAX runs as the training loop does:
the CPU split into `--cpu_devices` devices (0: one per core, the batch divided among them), and a
repetition's steps in one jitted call (`steps_per_call`). A JAX subprocess also measures
the machine's float32 large-matmul FLOP/s, the yardstick for the "% of matmul" column.
Frameworks whose packages are missing are skipped (`pip install -e ".[bench]"` adds them).
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags

from benchmarks.frameworks import INPUTS, SEQ_LEN, _cores, flop_per_sample  # noqa: F401 (flop_per_sample: for callers)
from benchmarks.machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
# Packages each framework's runner imports; a framework with any of them missing is skipped.
REQUIREMENTS = {"jax": ("jax", "flax"), "keras": ("keras", "tensorflow"), "torch": ("torch",)}
# The workload's arithmetic (the project brief's physical figures): forward 784 x (2x100x100 + 2x100)
# FLOP per sample, and the backward pass twice the forward.
FLOP_NOTE = "forward + backward = 3 x forward: 784 x (2x100x100 + 2x100) x 3"


@dataclasses.dataclass
class Options:
    frameworks: Sequence[str] = ("jax", "keras", "torch")
    batch_sizes: Sequence[int] = (32, 256, 1024)
    steps: Sequence[int] = (25, 10, 8)  # per batch size; the last value repeats
    repeats: int = 5
    warmup: int = 2
    recurrence: Sequence[str] = ()  # JAX config.recurrence values; empty: the config's default
    cell: str = "irnn"  # JAX only: config.cell ("lstm": the same step with the Keras LSTM)
    cpu_devices: Sequence[int] = (0,)  # JAX: CPU device counts, as --cpu_devices (0: one per core)
    hidden: int = 100
    matmul_size: int = 2048
    torch_threads: int = 0  # 0: one per core
    timeout_s: float = 1800.0


def missing_packages(framework: str) -> list[str]:
    """The packages `framework` needs that cannot be imported here."""
    return [m for m in REQUIREMENTS[framework] if importlib.util.find_spec(m) is None]


def run_worker(spec: dict, timeout_s: float) -> tuple[dict | None, str | None]:
    """Runs `worker_main(spec)` in a fresh Python; returns (result, None) or (None, error)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        code = "import sys; from benchmarks.frameworks import worker_main; worker_main(sys.argv[1])"
        cmd = [sys.executable, "-c", code, json.dumps({**spec, "out": str(out)})]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout_s:.0f} s"
        if proc.returncode or not out.exists():
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            return None, f"exit code {proc.returncode}: {lines[-1] if lines else 'no output'}"
        return json.loads(out.read_text()), None


def _add_derived(rows: list[dict], peaks: dict, flop: int) -> None:
    """Achieved FLOP/s, fraction of the matmul peak, and the best JAX row's speed-up over each row."""
    best_jax = {}
    for r in rows:
        if r.get("samples_per_s") and r["framework"] == "jax":
            best_jax[r["batch"]] = max(best_jax.get(r["batch"], 0.0), r["samples_per_s"])
    for r in rows:
        if not r.get("samples_per_s"):
            continue
        r["flop_per_s"] = flop * r["samples_per_s"]
        peak = peaks.get(r["platform"], {}).get("flop_per_s")
        r["peak_fraction"] = r["flop_per_s"] / peak if peak else None
        r["jax_speedup"] = best_jax[r["batch"]] / r["samples_per_s"] if r["batch"] in best_jax else None


def run(options: Options, log: Callable[[str], None] = print) -> dict:
    """Runs every requested measurement; returns the report (rows, skipped frameworks, matmul peak)."""
    unknown = set(options.frameworks) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"unknown frameworks {sorted(unknown)}; choose from {sorted(REQUIREMENTS)}")
    if not options.batch_sizes or not options.steps or min(*options.batch_sizes, *options.steps) < 1:
        raise ValueError("batch sizes and steps must be positive integers")
    if not options.cpu_devices or min(options.cpu_devices) < 0:
        raise ValueError("cpu_devices must be integers >= 0 (0: one per core)")
    if options.cell != "irnn" and set(options.frameworks) != {"jax"}:
        raise ValueError(f"cell {options.cell!r} is timed for JAX only; add --frameworks=jax")
    notes, skipped = [], []
    frameworks = []
    for fw in options.frameworks:
        missing = missing_packages(fw)
        if missing:
            skipped.append({"framework": fw, "reason": f"not installed: {', '.join(missing)}"})
            log(f"skipped {fw}: {', '.join(missing)} not installed (pip install -e '.[bench]')")
        else:
            frameworks.append(fw)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    peaks = {}
    if not missing_packages("jax"):
        log(f"measuring float32 {options.matmul_size}x{options.matmul_size} matmul FLOP/s ...")
        peaks, err = run_worker(
            {"kind": "matmul", "size": options.matmul_size, "repeats": max(3, options.repeats)}, options.timeout_s
        )
        if err:
            notes.append(f"matmul peak not measured: {err}")
            peaks = {}

    # JAX rows: each recurrence ("" = the config's default) on each CPU device count.
    jax_variants = [(r, d) for r in options.recurrence or [""] for d in options.cpu_devices]
    rows = []
    for i, batch in enumerate(options.batch_sizes):
        steps = options.steps[min(i, len(options.steps) - 1)]
        for fw in frameworks:
            for recurrence, cpu_devices in jax_variants if fw == "jax" else [("", 0)]:
                spec = {
                    "kind": "step",
                    "framework": fw,
                    "batch": batch,
                    "hidden": options.hidden,
                    "recurrence": recurrence,
                    "cell": options.cell,
                    "cpu_devices": cpu_devices,
                    "warmup": options.warmup,
                    "steps": steps,
                    "repeats": options.repeats,
                    "torch_threads": options.torch_threads,
                }
                what = f"{fw} {recurrence} cpu_devices={cpu_devices}" if fw == "jax" else fw
                log(f"{what} batch {batch}: {steps} steps x {options.repeats} ...")
                result, err = run_worker(spec, options.timeout_s)
                row = {"framework": fw, "batch": batch, "steps": steps, "repeats": options.repeats}
                row.update(result or {"error": err, "variant": f"recurrence={recurrence}" if recurrence else ""})
                rows.append(row)
                log(f"  {err}" if err else f"  {row['ms_per_step']:.1f} ms/step on {row['device']}")

    flop = flop_per_sample(options.hidden, cell=options.cell)
    _add_derived(rows, peaks, flop)
    return {
        "task": f"pixel-MNIST {options.cell.upper()} training step: {SEQ_LEN} steps x {INPUTS} value, "
        f"hidden {options.hidden}, "
        "Dense 10, softmax cross-entropy, RMSprop lr 1e-6, global-norm clip 1.0",
        "flop_per_sample": flop,
        "flop_note": FLOP_NOTE,
        "machine": {
            "cpu": cpu_model(),
            "cores": _cores(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "options": dataclasses.asdict(options),
        "matmul_peak": peaks,
        "rows": rows,
        "skipped": skipped,
        "notes": notes,
    }


COLUMNS = (
    "framework",
    "variant",
    "device",
    "batch",
    "ms/step",
    "min-max ms",
    "samples/s",
    "best JAX / this",
    "peak RSS MiB",
    "RSS added MiB",
    "device peak MiB",
    "GFLOP/s",
    "% of matmul",
    "threads",
)


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _cells(r: dict) -> list[str]:
    if "error" in r:
        return [r["framework"], r.get("variant", ""), "-", str(r["batch"]), f"failed: {r['error']}"] + [""] * 9
    pct = None if r["peak_fraction"] is None else 100 * r["peak_fraction"]
    return [
        r["framework"],
        r["variant"],
        r["device"],
        str(r["batch"]),
        _fmt(r["ms_per_step"], ".1f"),
        f"{min(r['ms_per_step_all']):.0f}-{max(r['ms_per_step_all']):.0f}",
        _fmt(r["samples_per_s"], ",.0f"),
        _fmt(r["jax_speedup"], ".2f", "x"),
        _fmt(r["rss_peak_mib"], ",.0f"),
        _fmt(r["rss_added_mib"], ",.0f"),
        _fmt(r["device_peak_mib"], ",.0f"),
        _fmt(r["flop_per_s"] / 1e9, ".2f"),
        _fmt(pct, ".1f", "%"),
        r["threads"],
    ]


def format_report(report: dict) -> str:
    """The table as Markdown (aligned, so it also reads as plain text), with its header and notes."""
    table = [list(COLUMNS)] + [_cells(r) for r in report["rows"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    m, opts = report["machine"], report["options"]
    head = [
        f"{report['task']}.",
        f"Median of {opts['repeats']} repetitions after {opts['warmup']} warm-up steps; "
        f"steps per repetition {', '.join(map(str, opts['steps']))} (last repeats).",
        f"FLOP per sample: {report['flop_per_sample'] / 1e6:.1f} M ({report['flop_note']}).",
        f"Machine: {m['cpu']}, {m['cores']} cores; load average (1/5/15 min) "
        f"before {_load(m['load_avg_before'])}, after {_load(m['load_avg_after'])}.",
    ]
    for platform, p in report["matmul_peak"].items():
        threads = f", {p['threads']} threads" if p["threads"] else ""
        head.append(
            f"Matmul peak ({platform}): {p['flop_per_s'] / 1e9:.1f} GFLOP/s, float32 {p['size']}x{p['size']} "
            f"jnp.matmul on {p['device']}{threads}, median of {p['repeats']}."
        )
    foot = [f"Skipped {s['framework']}: {s['reason']}." for s in report["skipped"]] + report["notes"]
    foot.append("'best JAX / this': the fastest JAX row's samples/s at that batch size divided by this row's.")
    return "\n".join(["\n".join(head), "", "\n".join(lines), "", "\n".join(foot)]) + "\n"


def _load(load) -> str:
    return "-" if load is None else "/".join(f"{x:.2f}" for x in load)


def write_outputs(report: dict, json_out: str = "", md_out: str = "") -> None:
    """Writes the report as JSON and/or Markdown where paths are given."""
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")
    if md_out:
        Path(md_out).write_text(format_report(report))


# ------------------------------------------------------------ command line

_FRAMEWORKS = flags.DEFINE_list("frameworks", "jax,keras,torch", f"Any of {','.join(REQUIREMENTS)}.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", "32,256,1024", "Batch sizes to time.")
_STEPS = flags.DEFINE_list(
    "steps", "25,10,8", "Timed steps per repetition, per batch size (the last repeats); JAX runs them in one call."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Repetitions; the median is reported.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first compiles).", lower_bound=1)
_RECURRENCE = flags.DEFINE_list("recurrence", "", "JAX config.recurrence values to time, e.g. scan,fused.")
_CPU_DEVICES = flags.DEFINE_list("cpu_devices", "0", "JAX CPU device counts to time, as --cpu_devices (0: per core).")
_CELL = flags.DEFINE_enum("cell", "irnn", ["irnn", "lstm"], "JAX only: the cell (lstm: 4 gates, 41,810 parameters).")
_HIDDEN = flags.DEFINE_integer("hidden", 100, "Hidden units (smaller only for quick checks).", lower_bound=1)
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 2048, "Side of the square matmul for the FLOP/s peak.")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "PyTorch CPU threads; 0: one per core (its spin-waits suffer on a busy machine).", lower_bound=0
)
_TIMEOUT = flags.DEFINE_float("timeout_s", 1800.0, "Limit for each subprocess.")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Write the report as JSON here.")
_MD_OUT = flags.DEFINE_string("md_out", "", "Write the table as Markdown here.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        options = Options(
            frameworks=tuple(_FRAMEWORKS.value),
            batch_sizes=tuple(int(b) for b in _BATCH_SIZES.value),
            steps=tuple(int(s) for s in _STEPS.value),
            repeats=_REPEATS.value,
            warmup=_WARMUP.value,
            recurrence=tuple(_RECURRENCE.value),
            cpu_devices=tuple(int(d) for d in _CPU_DEVICES.value),
            cell=_CELL.value,
            hidden=_HIDDEN.value,
            matmul_size=_MATMUL_SIZE.value,
            torch_threads=_TORCH_THREADS.value,
            timeout_s=_TIMEOUT.value,
        )
        report = run(options, log=lambda s: print(s, file=sys.stderr, flush=True))
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    print(format_report(report))
    write_outputs(report, _JSON_OUT.value, _MD_OUT.value)


if __name__ == "__main__":
    app.run(main)
