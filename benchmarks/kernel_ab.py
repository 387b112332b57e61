"""Two builds of the native kernels (csrc/) side by side: a change to the C++ against what it replaces.

    python -m benchmarks.kernel_ab                           # the working tree's csrc/ against HEAD's
    python -m benchmarks.kernel_ab --base=HEAD~3 --rounds=21 # against an older commit, best of 21
    python -m benchmarks.kernel_ab --base=HEAD --candidate=HEAD   # the noise floor: one source, two builds
    python -m benchmarks.kernel_ab --base=old.so --candidate=new.so --cases=lstm:16
    python -m benchmarks.kernel_ab --cases=relu:16,relu:128,tanh:16,lstm:16,lstm:32 --json_out=ab.json

Each side is a git ref, "worktree" (csrc/ as it is on disk), or a kernel library already built (a
path ending in .so). A ref's csrc/ is taken with `git archive` and compiled as setup.py compiles it
(`$CXX`, default g++, with the sources and arguments of its csrc/build.json, the working tree's for
a ref older than that file, and IRNN_JAX_NATIVE_FLAGS in place of its default flags). What is timed is
`jax.value_and_grad` of the sum of h_T of the recurrence alone (784 pixel steps, 100 units, one
input; no head, no optimiser, no data pipeline) through `irnn_jax.native`, with the library that
IRNN_JAX_NATIVE_LIBRARY names, one case a subprocess worker on one CPU device. The sides alternate:
round r runs A's worker, then B's, each taking the best of `--repeats` calls per case; a side's
figure is its best over the rounds, so a burst of load from elsewhere hits both. Before any figure is
reported, each side's values and gradients must be the same bit for bit in every round (a kernel that
reads memory it never wrote fails here), and the two sides' must agree to float32 rounding (`--rtol`):
a faster kernel that computes something else fails here too.

The Python side (irnn_jax/native.py: the shapes of what the kernels keep) is the working tree's for
both builds: a ref whose C++ expects other shapes is refused by the kernels' shape check, or fails
the agreement check.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.machine import cpu_model
from irnn_jax import native

ROOT = Path(__file__).resolve().parent.parent
T, HIDDEN = 784, 100
KINDS = ("relu", "tanh", "lstm")
RECIPE = Path("csrc") / "build.json"  # sources and compiler arguments, shared with setup.py


def parse_cases(text: str) -> list[tuple[str, int]]:
    """ "relu:16,lstm:32" -> [("relu", 16), ("lstm", 32)]; an unknown kind or a bad batch is refused."""
    cases = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        kind, _, batch = item.partition(":")
        if kind not in KINDS or not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"--cases: {item!r} is not KIND:BATCH with KIND one of {', '.join(KINDS)}")
        cases.append((kind, int(batch)))
    if not cases:
        raise ValueError("--cases: no case given")
    return cases


def build(side: str, out_dir: Path, log=print) -> Path:
    """The kernel library of one side: a .so as given, or csrc/ of a git ref (or the worktree) compiled."""
    if side.endswith(".so"):
        if not Path(side).is_file():
            raise FileNotFoundError(f"{side}: no such kernel library")
        return Path(side).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if side == "worktree":
        src = ROOT
    else:
        src = out_dir / "src"
        try:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", "--format=tar", side, "csrc"], check=True, capture_output=True
            ).stdout
        except subprocess.CalledProcessError as e:
            raise ValueError(f"{side!r} is not a git ref with csrc/: {e.stderr.decode().strip()}") from None
        src.mkdir()
        with tempfile.TemporaryFile() as f:
            f.write(archive)
            f.seek(0)
            tarfile.open(fileobj=f).extractall(src, filter="data")
    library = out_dir / "kernel.so"
    recipe = json.loads((src / RECIPE if (src / RECIPE).is_file() else ROOT / RECIPE).read_text())
    flags = os.environ.get("IRNN_JAX_NATIVE_FLAGS", recipe["default_flags"]).split()
    command = [
        os.environ.get("CXX", "g++"),
        *recipe["compile_args"],
        *flags,
        "-shared",
        "-fPIC",
        f"-I{jax.ffi.include_dir()}",
        *(f"-I{src / d}" for d in recipe["include_dirs"]),
        *(str(src / s) for s in recipe["sources"]),
        "-o",
        str(library),
    ]
    log(f"building {side}: {' '.join(command[: 1 + len(recipe['compile_args']) + len(flags)])} ...")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"building {side} failed:\n{done.stderr[-4000:]}")
    log(f"  {time.perf_counter() - started:.0f} s")
    return library


def worker(cases: list[tuple[str, int]], repeats: int, out: Path) -> None:
    """In a subprocess whose IRNN_JAX_NATIVE_LIBRARY names one side: best time and outputs per case."""
    if reason := native._load().reason:
        raise SystemExit(f"kernel_ab worker: {reason}")
    rng = np.random.default_rng(0)
    rnn = {
        "kernel": rng.normal(0, 0.5, (1, HIDDEN)),
        "recurrent_kernel": np.eye(HIDDEN) + rng.normal(0, 0.01, (HIDDEN, HIDDEN)),
        "bias": rng.normal(0, 0.01, HIDDEN),
    }
    lstm = {
        "kernel": rng.normal(0, 1.0, (1, 4 * HIDDEN)),
        "recurrent_kernel": rng.normal(0, 1.0 / np.sqrt(HIDDEN), (HIDDEN, 4 * HIDDEN)),
        "bias": rng.normal(0, 0.5, 4 * HIDDEN),
    }
    steps = {}
    for kind, batch in cases:
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), lstm if kind == "lstm" else rnn)
        x = jnp.asarray(rng.uniform(0, 1, (batch, T, 1)), jnp.float32)
        if kind == "lstm":
            loss = lambda p, x: jnp.sum(native.lstm_final_state(p, x))  # noqa: E731
        else:
            loss = lambda p, x, kind=kind: jnp.sum(native.final_state(p, x, kind))  # noqa: E731
        steps[f"{kind}:{batch}"] = (jax.jit(jax.value_and_grad(loss)), params, x)
    result = {"times": {}, "outputs": {}}
    for name, (f, params, x) in steps.items():  # compile, and keep what it computes
        value, grads = jax.block_until_ready(f(params, x))
        result["outputs"][name] = [float(value), *(np.asarray(grads[k]).ravel().tolist() for k in sorted(grads))]
    for _ in range(repeats):  # the cases interleaved, as the sides are
        for name, (f, params, x) in steps.items():
            started = time.perf_counter()
            jax.block_until_ready(f(params, x))
            elapsed = time.perf_counter() - started
            result["times"][name] = min(result["times"].get(name, float("inf")), elapsed)
    out.write_text(json.dumps(result))


def run_side(library: Path, cases, repeats: int, out: Path) -> dict:
    env = dict(os.environ, IRNN_JAX_NATIVE_LIBRARY=str(library), XLA_FLAGS="--xla_force_host_platform_device_count=1")
    command = [sys.executable, "-m", "benchmarks.kernel_ab", "--worker", f"--out={out}", f"--repeats={repeats}"]
    command.append("--cases=" + ",".join(f"{k}:{b}" for k, b in cases))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the worker for {library} failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def disagreement(a: list, b: list, rtol: float) -> float:
    """The largest |a - b| / (rtol * max|a|) over value and gradients; above 1 is a disagreement."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = np.atleast_1d(np.asarray(x)), np.atleast_1d(np.asarray(y))
        scale = rtol * max(float(np.max(np.abs(x))), 1e-30)
        worst = max(worst, float(np.max(np.abs(x - y))) / scale)
    return worst


def compare(base: str, candidate: str, cases, rounds: int, repeats: int, rtol: float, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="kernel_ab_") as tmp:
        tmp = Path(tmp)
        libraries = {"A": build(base, tmp / "A", log), "B": build(candidate, tmp / "B", log)}
        best, outputs = {}, {}
        load = os.getloadavg()[0]
        for r in range(rounds):
            for side, library in libraries.items():
                result = run_side(library, cases, repeats, tmp / f"{side}{r}.json")
                if outputs.setdefault(side, result["outputs"]) != result["outputs"]:
                    changed = [n for n in result["outputs"] if result["outputs"][n] != outputs[side][n]]
                    raise AssertionError(
                        f"{side} ({library}) computed other values in round {r + 1} than in round 1 for "
                        f"{', '.join(changed)}: one build on one machine must repeat itself bit for bit"
                    )
                for name, t in result["times"].items():
                    best[side, name] = min(best.get((side, name), float("inf")), t)
        rows = []
        for kind, batch in cases:
            name = f"{kind}:{batch}"
            off = disagreement(outputs["A"][name], outputs["B"][name], rtol)
            if off > 1:
                raise AssertionError(
                    f"{name}: the builds disagree ({off:.1f} x rtol {rtol:g} on the value or a gradient)"
                )
            a, b = best["A", name], best["B", name]
            rows.append(dict(case=name, a_ms=a * 1e3, b_ms=b * 1e3, speedup=a / b))
    return dict(
        base=base,
        candidate=candidate,
        machine=cpu_model(),
        load_before=load,
        load_after=os.getloadavg()[0],
        rounds=rounds,
        repeats=repeats,
        rows=rows,
    )


def table(report: dict) -> str:
    lines = [
        f"A = {report['base']}, B = {report['candidate']}; {report['machine']}; best of {report['rounds']} rounds x "
        f"{report['repeats']} calls; load average {report['load_before']:.2f} before, {report['load_after']:.2f} after",
        "",
        "| value_and_grad, T=784, H=100 | A ms | B ms | A / B |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['case']} | {row['a_ms']:.2f} | {row['b_ms']:.2f} | {row['speedup']:.3f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="A: a git ref, worktree, or a built .so")
    parser.add_argument("--candidate", default="worktree", help="B: a git ref, worktree, or a built .so")
    parser.add_argument("--cases", default="relu:16,relu:128,lstm:16", help="KIND:BATCH, KIND in relu, tanh, lstm")
    parser.add_argument("--rounds", type=int, default=7, help="alternations of the sides (A, B, A, B, ...)")
    parser.add_argument("--repeats", type=int, default=3, help="calls of each case per round, the best kept")
    parser.add_argument("--rtol", type=float, default=1e-4, help="how far the two sides' outputs may differ")
    parser.add_argument("--json_out", default="", help="also write the report as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cases = parse_cases(args.cases)
    except ValueError as e:
        parser.error(str(e))
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")
    if args.worker:
        worker(cases, args.repeats, Path(args.out))
        return None
    if not shutil.which(os.environ.get("CXX", "g++")) and not (
        args.base.endswith(".so") and args.candidate.endswith(".so")
    ):
        parser.error("building a side needs a C++ compiler ($CXX or g++); or give two built .so files")
    report = compare(args.base, args.candidate, cases, args.rounds, args.repeats, args.rtol)
    print(table(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
