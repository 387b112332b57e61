"""One core's float32 FMA peak per instruction set: the ceiling that the recurrence's products work under.

    python -m benchmarks.fma_peak                    # every instruction set this CPU runs (avx512, avx2)
    python -m benchmarks.fma_peak --isa=avx2 --repeats=9

A loop of independent FMAs on vectors held in registers (no memory traffic: 24 accumulators on
AVX-512, 12 on AVX2, in its 32 or 16 registers, enough to cover the FMA's latency), compiled
with the flags of that variant in csrc/build.json (the native kernels' own), run in one thread. The
rate is FLOPs (2 per lane per FMA) over the thread's CPU time, best of `--repeats`, so that a core
shared with another process still gives the core's rate; the wall-clock rate is printed beside it.
`docs/performance.md` sets the bare chain of `benchmarks.variants` (XLA's `relu(h @ W + x w)` over
784 steps) and the native kernels against it: how close to the arithmetic ceiling each runs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
LANES = {"avx512": 16, "avx2": 8}  # float32 lanes of one vector register
ACCUMULATORS = {"avx512": 24, "avx2": 12}  # independent FMAs in flight, in the registers the set has
CPU_FLAG = {"avx512": "avx512f", "avx2": "avx2"}


def source(lanes: int, accumulators: int) -> str:
    """The C++ of the loop: `accumulators` vectors of `lanes` floats, each a variable of its own (an
    array would live on the stack, its FMAs reading memory)."""
    names = [f"a{i}" for i in range(accumulators)]
    init = "\n".join(f"  vec {n} = b * {i}.0f;" for i, n in enumerate(names))
    body = "\n".join(f'      {n} = {n} * b + c; asm volatile("" : "+v"({n}));' for n in names)
    total = " + ".join(f"{n}[0]" for n in names)
    return rf"""
#include <cstdio>
#include <cstdlib>
#include <ctime>
typedef float vec __attribute__((vector_size({lanes} * sizeof(float))));
static double seconds(clockid_t clock) {{ timespec t; clock_gettime(clock, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }}
int main(int argc, char** argv) {{
  const long iterations = std::atol(argv[1]);
  const int repeats = std::atoi(argv[2]);
  vec b, c;
  for (int l = 0; l < {lanes}; ++l) {{ b[l] = 1.0000001f; c[l] = 1e-7f; }}
{init}
  double best_cpu = 1e30, best_wall = 1e30;
  for (int r = 0; r < repeats; ++r) {{
    const double cpu0 = seconds(CLOCK_THREAD_CPUTIME_ID), wall0 = seconds(CLOCK_MONOTONIC);
    for (long n = 0; n < iterations; ++n) {{
      // Each accumulator stays in a register and every FMA is kept (the empty asm hides its value).
{body}
    }}
    const double cpu = seconds(CLOCK_THREAD_CPUTIME_ID) - cpu0, wall = seconds(CLOCK_MONOTONIC) - wall0;
    if (cpu < best_cpu) best_cpu = cpu;
    if (wall < best_wall) best_wall = wall;
  }}
  const double flop = 2.0 * {lanes} * {accumulators} * iterations;
  std::printf("{{\"gflops_cpu_time\": %.2f, \"gflops_wall\": %.2f, \"check\": %g}}\n", flop / best_cpu / 1e9,
              flop / best_wall / 1e9, static_cast<double>({total}));
}}
"""


def runnable(isa: str) -> bool:
    """Whether this CPU has the instruction set (/proc/cpuinfo's flags)."""
    try:
        return CPU_FLAG[isa] in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def peak(isa: str, iterations: int, repeats: int, workdir: Path) -> dict:
    """Compile the loop for `isa` (csrc/build.json's flags for that variant) and run it: GFLOP/s."""
    recipe = json.loads((ROOT / "csrc" / "build.json").read_text())
    code = workdir / f"fma_peak_{isa}.cc"
    code.write_text(source(LANES[isa], ACCUMULATORS[isa]))
    binary = workdir / f"fma_peak_{isa}"
    command = [os.environ.get("CXX", "g++"), *recipe["variants"][isa].split(), str(code), "-o", str(binary)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    done = subprocess.run([str(binary), str(iterations), str(repeats)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", default="avx512,avx2", help="instruction sets, those this CPU lacks skipped")
    parser.add_argument("--iterations", type=int, default=20_000_000, help="loop iterations (of 24 or 12 FMAs) a run")
    parser.add_argument("--repeats", type=int, default=5, help="runs, the best kept")
    args = parser.parse_args(argv)
    rows = []
    print(f"{cpu_model()}; one thread; FLOPs over the thread's CPU time (wall clock beside), best of {args.repeats}")
    print("| instruction set | float32 lanes | GFLOP/s (CPU time) | GFLOP/s (wall) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for isa in filter(None, (s.strip() for s in args.isa.split(","))):
            if isa not in LANES:
                raise SystemExit(f"--isa: {isa!r} is not one of {', '.join(LANES)}")
            if not runnable(isa):
                print(f"SKIP {isa}: this CPU lacks {CPU_FLAG[isa]}")
                continue
            rate = peak(isa, args.iterations, args.repeats, Path(tmp))
            rows.append({"isa": isa, **rate})
            print(f"| {isa} | {LANES[isa]} | {rate['gflops_cpu_time']:.1f} | {rate['gflops_wall']:.1f} |")
    sys.stdout.flush()
    return rows


if __name__ == "__main__":
    main()
