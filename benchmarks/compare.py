"""Speed of one IRNN training step: this project (JAX) beside Keras 3 (TensorFlow) and PyTorch.

    python -m benchmarks.compare                    # jax, keras, torch at batch 32, 256, 1024
    python -m benchmarks.compare --frameworks=jax --batch_sizes=32 --recurrence=scan,fused
    python -m benchmarks.compare --steps=20,5,2 --json_out=/tmp/bench.json --md_out=/tmp/bench.md

One step is forward + backward + RMSprop update (lr 1e-6, global-norm clipping 1.0) of the
pixel-MNIST IRNN: 784 steps of 1 value, 100 ReLU units with identity recurrent init, Dense 10,
softmax cross-entropy. Every (framework, batch size) runs in its own subprocess, so imports,
thread pools and peak memory do not mix. Warm-up steps (compilation) are excluded; each
row is the median over `--repeats` runs of `--steps` steps. A JAX subprocess also measures
the machine's float32 large-matmul FLOP/s, the yardstick for the "% of matmul" column.
Frameworks whose packages are missing are skipped (`pip install -e ".[bench]"` adds them).
"""

import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from absl import app, flags

ROOT = Path(__file__).resolve().parent.parent
SEQ_LEN, INPUTS, CLASSES = 784, 1, 10
# Packages each framework's runner imports; a framework with any of them missing is skipped.
REQUIREMENTS = {"jax": ("jax", "flax"), "keras": ("keras", "tensorflow"), "torch": ("torch",)}
FLOP_NOTE = "forward + backward = 3 x forward, as in REFERENCE.md: 784 x (2x100x100 + 2x100) x 3"


def flop_per_sample(hidden: int, seq_len: int = SEQ_LEN, inputs: int = INPUTS) -> int:
    """Forward + backward FLOP of one sequence through the recurrence (the dense head is negligible)."""
    return 3 * seq_len * (2 * hidden * hidden + 2 * hidden * inputs)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _proc_status_mib(field: str) -> float | None:
    """VmRSS (now) or VmHWM (peak) of this process in MiB, from /proc; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if field == "VmHWM":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return None


# ------------------------------------------------------------ worker side


@dataclasses.dataclass
class Runner:
    """One framework's training step on a fixed batch, ready to time."""

    step: Callable[[], None]
    sync: Callable[[], None]  # waits for queued steps (asynchronous dispatch)
    device: str
    platform: str  # "cpu" or "gpu": which matmul peak applies
    threads: str
    variant: str
    versions: dict
    device_peak_mib: Callable[[], float | None] = lambda: None


def synthetic_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (B, 28, 28) and int32 labels (B,); the values do not change the speed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8), rng.integers(0, CLASSES, batch).astype(np.int32)


def _as_sequences(images: np.ndarray) -> np.ndarray:
    """Row-major pixel sequences in [0, 1]: (B, 784, 1) float32."""
    return (images.reshape(len(images), SEQ_LEN, INPUTS) / 255.0).astype(np.float32)


def setup_jax(spec: dict, mark_baseline: Callable[[], None]) -> Runner:
    """This project's jitted train step on the `keras` preset of pixel MNIST."""
    import flax
    import jax

    from experiments.configs import pixel_mnist
    from irnn_jax import train

    dev = jax.devices()[0]
    mark_baseline()
    config = pixel_mnist.get_config("keras")
    config.batch_size, config.hidden_size = spec["batch"], spec["hidden"]
    if spec["recurrence"]:
        config.recurrence = spec["recurrence"]
    train.validate_config(config)
    state = train.create_state(config)
    train_step, _ = train.jitted_steps(config, state.apply_fn)
    images, labels = synthetic_batch(spec["batch"])
    # Uncommitted, like the state: a committed batch would make the second step compile again.
    batch = jax.device_put({"inputs": images, "targets": labels, "mask": np.ones(len(labels), np.float32)})
    holder = [state]

    def step():
        holder[0] = train_step(holder[0], batch)  # the state is donated: keep only the newest

    def device_peak():
        stats = dev.memory_stats() if dev.platform != "cpu" else None
        return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None

    return Runner(
        step=step,
        sync=lambda: jax.block_until_ready(holder[0]),
        device=dev.platform if dev.platform == "cpu" else f"{dev.platform} ({dev.device_kind})",
        platform="cpu" if dev.platform == "cpu" else "gpu",
        threads=str(_cores()) if dev.platform == "cpu" else "-",
        variant=f"recurrence={spec['recurrence']}" if spec["recurrence"] else "default",
        versions={"jax": jax.__version__, "flax": flax.__version__},
        device_peak_mib=device_peak,
    )


def setup_keras(spec: dict, mark_baseline: Callable[[], None]) -> Runner:
    """Keras 3 on TensorFlow: SimpleRNN + Dense + softmax, timed with `train_on_batch`, as in the source."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    mark_baseline()
    hidden = spec["hidden"]
    model = keras.Sequential(
        [
            keras.Input((SEQ_LEN, INPUTS)),
            keras.layers.SimpleRNN(
                hidden,
                activation="relu",
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                recurrent_initializer=keras.initializers.Identity(gain=1.0),
            ),
            keras.layers.Dense(CLASSES),
            keras.layers.Activation("softmax"),
        ]
    )
    optimizer = keras.optimizers.RMSprop(learning_rate=1e-6, global_clipnorm=1.0)
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    images, labels = synthetic_batch(spec["batch"])
    x, y = _as_sequences(images), keras.utils.to_categorical(labels, CLASSES)

    def device_peak():
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20 if gpus else None

    intra = tf.config.threading.get_intra_op_parallelism_threads()
    return Runner(
        step=lambda: model.train_on_batch(x, y),
        sync=lambda: None,  # train_on_batch returns host values, so each call has finished
        device=f"gpu ({gpus[0].name})" if gpus else "cpu",
        platform="gpu" if gpus else "cpu",
        threads=str(intra) if intra else f"{_cores()} (TF default)",
        variant=f"train_on_batch, jit_compile={model.jit_compile}",
        versions={"keras": keras.__version__, "tensorflow": tf.__version__},
        device_peak_mib=device_peak,
    )


def setup_torch(spec: dict, mark_baseline: Callable[[], None]) -> Runner:
    """PyTorch eager: nn.RNN(relu) + nn.Linear, RMSprop with Keras constants, clip_grad_norm_."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(spec.get("torch_threads") or _cores())
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    mark_baseline()
    torch.manual_seed(0)
    hidden = spec["hidden"]
    rnn = nn.RNN(INPUTS, hidden, nonlinearity="relu", batch_first=True).to(device)
    head = nn.Linear(hidden, CLASSES).to(device)
    with torch.no_grad():  # the IRNN initialisation (speed does not depend on it)
        nn.init.normal_(rnn.weight_ih_l0, std=0.001)
        rnn.weight_hh_l0.copy_(torch.eye(hidden))
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    params = [*rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.RMSprop(params, lr=1e-6, alpha=0.9, eps=1e-7)
    images, labels = synthetic_batch(spec["batch"])
    x = torch.from_numpy(_as_sequences(images)).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, h_1xBxH = rnn(x)
        F.cross_entropy(head(h_1xBxH[0]), y).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return Runner(
        step=step,
        sync=torch.cuda.synchronize if cuda else lambda: None,
        device=f"cuda ({torch.cuda.get_device_name()})" if cuda else "cpu",
        platform="gpu" if cuda else "cpu",
        threads=str(torch.get_num_threads()) if not cuda else "-",
        variant="eager" + (", cuDNN" if cuda and torch.backends.cudnn.is_available() else ""),
        versions={"torch": torch.__version__},
        device_peak_mib=lambda: torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    )


SETUPS = {"jax": setup_jax, "keras": setup_keras, "torch": setup_torch}


def time_runner(runner: Runner, warmup: int, steps: int, repeats: int) -> list[float]:
    """Seconds per step of each repetition, after `warmup` steps."""
    for _ in range(warmup):
        runner.step()
    runner.sync()
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            runner.step()
        runner.sync()
        per_step.append((time.perf_counter() - t0) / steps)
    return per_step


def measure_matmul(size: int, repeats: int) -> dict:
    """float32 size x size jnp.matmul FLOP/s on JAX's CPU and default devices (median of repeats)."""
    import jax
    import jax.numpy as jnp

    matmul = jax.jit(lambda a, b: a @ b)
    out = {}
    for dev in {d.platform: d for d in (jax.devices("cpu")[0], jax.devices()[0])}.values():
        keys = jax.random.split(jax.random.key(0))
        a = jax.device_put(jax.random.normal(keys[0], (size, size), jnp.float32), dev)
        # Norm-preserving factor: the chained product stays finite (and free of denormals).
        b = jax.device_put(jax.random.normal(keys[1], (size, size), jnp.float32) / size**0.5, dev)
        matmul(a, b).block_until_ready()  # compiles
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        count = max(1, int(0.3 / max(time.perf_counter() - t0, 1e-6)))  # about 0.3 s per repetition
        rates = []
        for _ in range(repeats):
            c = a
            t0 = time.perf_counter()
            for _ in range(count):
                c = matmul(c, b)
            c.block_until_ready()
            rates.append(2 * size**3 * count / (time.perf_counter() - t0))
        platform = "cpu" if dev.platform == "cpu" else "gpu"
        out[platform] = {
            "flop_per_s": statistics.median(rates),
            "device": dev.platform if platform == "cpu" else f"{dev.platform} ({dev.device_kind})",
            "threads": _cores() if platform == "cpu" else None,
            "size": size,
            "repeats": repeats,
        }
    return out


def worker_main(spec_json: str) -> None:
    """Subprocess entry point: runs one spec and writes its result as JSON to spec["out"]."""
    spec = json.loads(spec_json)
    if spec["kind"] == "matmul":
        result = measure_matmul(spec["size"], spec["repeats"])
    else:
        baseline = {}
        runner = SETUPS[spec["framework"]](spec, lambda: baseline.setdefault("rss", _proc_status_mib("VmRSS")))
        per_step = time_runner(runner, spec["warmup"], spec["steps"], spec["repeats"])
        peak = _proc_status_mib("VmHWM")
        seconds = statistics.median(per_step)
        result = {
            "ms_per_step": 1e3 * seconds,
            "ms_per_step_all": [1e3 * s for s in per_step],
            "samples_per_s": spec["batch"] / seconds,
            "rss_peak_mib": peak,
            "rss_added_mib": peak - baseline["rss"] if peak and baseline.get("rss") else None,
            "device_peak_mib": runner.device_peak_mib(),
            **{k: getattr(runner, k) for k in ("device", "platform", "threads", "variant", "versions")},
        }
    Path(spec["out"]).write_text(json.dumps(result))


# ------------------------------------------------------------ parent side


@dataclasses.dataclass
class Options:
    frameworks: Sequence[str] = ("jax", "keras", "torch")
    batch_sizes: Sequence[int] = (32, 256, 1024)
    steps: Sequence[int] = (10, 3, 1)  # per batch size; the last value repeats
    repeats: int = 5
    warmup: int = 2
    recurrence: Sequence[str] = ()  # JAX config.recurrence values; empty: the config's default
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
        code = "import sys; from benchmarks.compare import worker_main; worker_main(sys.argv[1])"
        cmd = [sys.executable, "-c", code, json.dumps({**spec, "out": str(out)})]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout_s:.0f} s"
        if proc.returncode or not out.exists():
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            return None, f"exit code {proc.returncode}: {lines[-1] if lines else 'no output'}"
        return json.loads(out.read_text()), None


def _recurrences(options: Options, notes: list[str]) -> list[str]:
    """The config.recurrence values to time ("" = the config's default)."""
    if not options.recurrence:
        return [""]
    from experiments.configs import pixel_mnist

    if "recurrence" in pixel_mnist.get_config("keras"):
        return list(options.recurrence)
    notes.append(
        f"--recurrence={','.join(options.recurrence)} ignored: the config has no 'recurrence' field, "
        "so only the default recurrence was timed."
    )
    return [""]


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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def run(options: Options, log: Callable[[str], None] = print) -> dict:
    """Runs every requested measurement; returns the report (rows, skipped frameworks, matmul peak)."""
    unknown = set(options.frameworks) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"unknown frameworks {sorted(unknown)}; choose from {sorted(REQUIREMENTS)}")
    if not options.batch_sizes or not options.steps or min(*options.batch_sizes, *options.steps) < 1:
        raise ValueError("batch sizes and steps must be positive integers")
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

    recurrences = _recurrences(options, notes)
    rows = []
    for i, batch in enumerate(options.batch_sizes):
        steps = options.steps[min(i, len(options.steps) - 1)]
        for fw in frameworks:
            for recurrence in recurrences if fw == "jax" else [""]:
                spec = {
                    "kind": "step",
                    "framework": fw,
                    "batch": batch,
                    "hidden": options.hidden,
                    "recurrence": recurrence,
                    "warmup": options.warmup,
                    "steps": steps,
                    "repeats": options.repeats,
                    "torch_threads": options.torch_threads,
                }
                log(
                    f"{fw}{' ' + recurrence if recurrence else ''} batch {batch}: {steps} steps x {options.repeats} ..."
                )
                result, err = run_worker(spec, options.timeout_s)
                row = {"framework": fw, "batch": batch, "steps": steps, "repeats": options.repeats}
                row.update(result or {"error": err, "variant": f"recurrence={recurrence}" if recurrence else ""})
                rows.append(row)
                log(f"  {err}" if err else f"  {row['ms_per_step']:.1f} ms/step on {row['device']}")

    flop = flop_per_sample(options.hidden)
    _add_derived(rows, peaks, flop)
    return {
        "task": f"pixel-MNIST IRNN training step: {SEQ_LEN} steps x {INPUTS} value, hidden {options.hidden}, "
        "Dense 10, softmax cross-entropy, RMSprop lr 1e-6, global-norm clip 1.0",
        "flop_per_sample": flop,
        "flop_note": FLOP_NOTE,
        "machine": {
            "cpu": _cpu_model(),
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
_STEPS = flags.DEFINE_list("steps", "10,3,1", "Timed steps per repetition, per batch size (the last repeats).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Repetitions; the median is reported.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first compiles).", lower_bound=1)
_RECURRENCE = flags.DEFINE_list("recurrence", "", "JAX config.recurrence values to time, e.g. scan,fused.")
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
