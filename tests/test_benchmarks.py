"""The benchmarks: compare.py's tiny JAX-only run end to end and its skip path for a missing framework,
and every entry point run for a step or two on tiny sizes, so that none can rot unnoticed (timings
are not checked: benchmarks measure, tests do not)."""

import json
import subprocess
import sys

import pytest

from benchmarks import compare, kernel_ab, recurrence_cpu
from irnn_jax import native, parallel
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # benchmark subprocesses


def test_flop_per_sample_matches_reference():
    # docs/sources.md: 784 x (2x100x100 + 2x100) x 3, 47.5 MFLOP forward and backward.
    assert compare.flop_per_sample(100) == 784 * (2 * 100 * 100 + 2 * 100) * 3 == 47_510_400


def test_jax_runs_and_missing_framework_is_skipped(tmp_path, monkeypatch):
    # "torch" now needs a module that does not exist, whether or not PyTorch is installed here.
    monkeypatch.setitem(compare.REQUIREMENTS, "torch", ("irnn_bench_no_such_module",))
    options = compare.Options(
        frameworks=("jax", "torch"), batch_sizes=(2,), steps=(2,), repeats=1, warmup=1, hidden=8, matmul_size=64
    )
    report = compare.run(options, log=lambda s: None)
    json_out, md_out = tmp_path / "bench.json", tmp_path / "bench.md"
    compare.write_outputs(report, str(json_out), str(md_out))

    saved = json.loads(json_out.read_text())
    (row,) = saved["rows"]
    assert "error" not in row, row
    # Split like the training command: one CPU device per core, as many as divide the batch of 2.
    devices = parallel.cpu_device_count(0, 2, parallel.usable_cores())
    assert (row["framework"], row["batch"], row["device"]) == ("jax", 2, f"cpu x {devices}")
    ran = "native" if native.available() else "fused"  # the preset's "auto", as it resolved here
    assert row["variant"] == f"recurrence={ran}, {devices} device(s) (--cpu_devices=0)"
    assert row["samples_per_s"] > 0 and row["jax_speedup"] == pytest.approx(1.0)
    assert row["flop_per_s"] == pytest.approx(compare.flop_per_sample(8) * row["samples_per_s"])
    assert saved["matmul_peak"]["cpu"]["flop_per_s"] > 0 and row["peak_fraction"] > 0
    assert saved["skipped"] == [{"framework": "torch", "reason": "not installed: irnn_bench_no_such_module"}]
    md = md_out.read_text()
    assert "| jax " in md and "Skipped torch: not installed" in md


def test_unknown_framework_is_an_error():
    with pytest.raises(ValueError, match="unknown frameworks"):
        compare.run(compare.Options(frameworks=("jax", "tensorflow_v1")), log=lambda s: None)


TINY = ["--reps=1", "--seq_len=12", "--hidden=8"]


def test_recurrence_cpu_table_and_profile(capsys):
    recurrence_cpu.main(["--batch_sizes=2", "--unrolls=1,2", "--profile", "--profile_batches=2", *TINY])
    out = capsys.readouterr().out
    assert "fused unroll=2" in out and "scan" in out
    assert "fused backward loop (dz)" in out and "us/step" in out  # the --profile table


def test_recurrence_cpu_backward_forms(capsys):
    recurrence_cpu.main(["--backward", "--backward_batches=2,4", *TINY])
    out = capsys.readouterr().out
    assert "B=2 " in out and "B=4 " in out and "after the loop" in out and "step by step" in out
    assert "in blocks of 12 steps" in out  # TINY: 12 steps at batch 2, all in one block of <= 512 rows


def test_recurrence_cpu_lstm(capsys):
    recurrence_cpu.main(["--lstm", "--batch_sizes=2", *TINY])
    out = capsys.readouterr().out
    assert "LSTM(8), 12 steps" in out and "scan / fused" in out


def test_recurrence_cpu_native_parts(capsys):
    recurrence_cpu.main(["--native_parts", "--batch_sizes=2,3", *TINY])
    out = capsys.readouterr().out
    for batch in (2, 3):
        lines = [line for line in out.splitlines() if line.startswith(f"  batch    {batch} ")]
        assert len(lines) == 5 and "bare chain (XLA)" in lines[0] and "1.00x" in lines[0]
        assert "native backward (difference)" in lines[-1]


def test_lstm_flop_and_refusal():
    assert compare.flop_per_sample(100, cell="lstm") == 4 * compare.flop_per_sample(100)
    with pytest.raises(ValueError, match="timed for JAX only"):
        compare.run(compare.Options(frameworks=("jax", "torch"), cell="lstm"), log=lambda s: None)


def test_compare_times_the_lstm_step():
    options = compare.Options(
        frameworks=("jax",), batch_sizes=(2,), steps=(2,), repeats=1, warmup=1, hidden=8, matmul_size=64,
        recurrence=("scan", "fused"), cpu_devices=(1,), cell="lstm",
    )  # fmt: skip
    report = compare.run(options, log=lambda s: None)
    assert [r["variant"].split(",")[0] for r in report["rows"]] == ["recurrence=scan", "recurrence=fused"]
    assert all("error" not in r and r["samples_per_s"] > 0 for r in report["rows"])
    assert report["task"].startswith("pixel-MNIST LSTM training step")


def test_step_ratio_command_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.step_ratio", "--batch_sizes=4", "--steps=2", "--repeats=1",
         "--chain_calls=1", "--cpu_devices=2", "--block_rows=512,2", "--recurrence=fused,native",
         f"--json_out={tmp_path / 'r.json'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    row, step_by_step, kernel = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert (row["block_steps"], step_by_step["block_steps"]) == (196, 1)  # at 2 per device: 196 | 784, <= 256
    assert [r["recurrence"] for r in (row, step_by_step, kernel)] == ["fused", "fused", "native"]
    assert kernel["step_ms"] > 0 and "| native | - |" in out.stdout
    assert (row["batch"], row["devices"], row["per_device_batch"]) == (4, 2, 2)
    assert row["ratio_to_3_chains"] == pytest.approx(row["step_ms"] / (3 * row["chain_ms"]))
    assert row["ratio_to_3_chains_all_devices"] == pytest.approx(row["step_ms"] / (3 * row["chain_all_devices_ms"]))
    assert "| 4 | 2 x 2 |" in out.stdout


def test_sweep_scaling_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.sweep_scaling", "--runs=1,2", "--batch_size=2", "--steps=1",
         "--repeats=1", "--cpu_devices=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| 1 |" in out.stdout and "| 2 |" in out.stdout


def test_compare_command_line(tmp_path):
    md = tmp_path / "bench.md"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--frameworks=jax", "--batch_sizes=2", "--steps=1",
         "--repeats=1", "--warmup=1", "--hidden=8", "--matmul_size=64", f"--md_out={md}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| jax " in md.read_text()


def test_kernel_ab_builds_a_ref_and_times_it_beside_the_installed_kernel(tmp_path, monkeypatch, capsys):
    """HEAD's csrc/ compiled here (at -O0, for speed) against the package's own build: both sides load
    through IRNN_JAX_NATIVE_LIBRARY in their workers, and their values and gradients agree."""
    installed = native.status().library  # the variant this CPU runs
    monkeypatch.setenv("IRNN_JAX_NATIVE_FLAGS", "-O0")
    report = kernel_ab.main(
        ["--base=HEAD", f"--candidate={installed}", "--cases=relu:2,tanh:2,lstm:2", "--rounds=1", "--repeats=1",
         f"--json_out={tmp_path / 'ab.json'}"]
    )  # fmt: skip
    assert [r["case"] for r in report["rows"]] == ["relu:2", "tanh:2", "lstm:2"]
    assert all(r["a_ms"] > 0 and r["b_ms"] > 0 and r["speedup"] == r["a_ms"] / r["b_ms"] for r in report["rows"])
    assert json.loads((tmp_path / "ab.json").read_text())["rows"] == report["rows"]
    assert "| lstm:2 |" in capsys.readouterr().out


def test_kernel_ab_refuses_bad_sides_and_cases_and_catches_a_disagreement(tmp_path):
    with pytest.raises(ValueError, match="KIND:BATCH"):
        kernel_ab.parse_cases("relu:16,gru:16")
    with pytest.raises(ValueError, match="KIND:BATCH"):
        kernel_ab.parse_cases("lstm:0")
    assert kernel_ab.parse_cases(" relu:16, lstm:32 ") == [("relu", 16), ("lstm", 32)]
    with pytest.raises(ValueError, match="not a git ref"):
        kernel_ab.build("no-such-ref-anywhere", tmp_path / "A", log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="no such kernel library"):
        kernel_ab.build(str(tmp_path / "missing.so"), tmp_path / "B", log=lambda s: None)
    grads = [1.5, [1.0, -2.0, 3.0]]
    assert kernel_ab.disagreement(grads, [1.5, [1.0, -2.0, 3.0 * (1 + 1e-6)]], rtol=1e-4) < 1
    assert kernel_ab.disagreement(grads, [1.5, [1.0, -2.0, 3.0 * (1 + 1e-3)]], rtol=1e-4) > 1


def test_kernel_ab_catches_a_side_that_does_not_repeat_itself(tmp_path, monkeypatch):
    """Round 2 of side B computes a gradient other than round 1's: refused before any figure."""
    a, b = tmp_path / "a.so", tmp_path / "b.so"
    a.write_bytes(b""), b.write_bytes(b"")  # build() only checks that a given .so exists
    calls = []

    def fake_side(library, cases, repeats, out):
        calls.append(library.name)
        drift = 1e-7 if library.name == "b.so" and calls.count("b.so") == 2 else 0.0
        return {"times": {"relu:2": 0.01}, "outputs": {"relu:2": [1.5, [1.0, 2.0 + drift]]}}

    monkeypatch.setattr(kernel_ab, "run_side", fake_side)
    with pytest.raises(AssertionError, match=r"B \(.*b.so\) computed other values in round 2 .* relu:2"):
        kernel_ab.compare(str(a), str(b), [("relu", 2)], rounds=3, repeats=1, rtol=1e-4, log=lambda s: None)
    assert calls == ["a.so", "b.so", "a.so", "b.so"]  # stopped at the first round that differs
    calls.clear()
    monkeypatch.setattr(kernel_ab, "run_side", lambda *args: fake_side(a, *args[1:]))  # both sides repeat
    report = kernel_ab.compare(str(a), str(b), [("relu", 2)], rounds=3, repeats=1, rtol=1e-4, log=lambda s: None)
    assert [r["case"] for r in report["rows"]] == ["relu:2"] and len(calls) == 6


def test_variants_takes_each_sides_best_over_rounds_and_sets_it_against_fused(monkeypatch):
    from benchmarks import variants

    times = iter([(10.0, 8.0), (12.0, 6.0), (9.0, 9.0), (11.0, 7.5)])  # (fused, native) per worker

    def fake_worker(variant, recurrences, options, out):
        fused, native_ms = next(times)
        row = {"batch": 32, "chain_ms": 2.5}
        return [row | {"recurrence": "fused", "step_ms": fused}, row | {"recurrence": "native", "step_ms": native_ms}]

    monkeypatch.setattr(variants, "worker", fake_worker)
    rows = variants.compare(["avx512", "avx2"], ["fused"], {}, rounds=2, log=lambda s: None)
    by_side = {r["side"]: r for r in rows}
    assert by_side["fused"]["step_ms"] == 9.0  # the best of every worker's fused
    assert by_side["native (avx512)"]["step_ms"] == 8.0 and by_side["native (avx2)"]["step_ms"] == 6.0
    assert by_side["native (avx2)"]["vs_fused"] == 1.5 and by_side["native (avx2)"]["ratio_to_3_chains"] == 0.8
    assert "| 32 | native (avx2) | 6.00 | 0.80x | 1.50x |" in variants.format_table(rows)


def test_variants_runs_a_real_worker(tmp_path):
    """One worker of the variant this CPU loads, at batch 2: step_ratio's JSON comes back as rows."""
    from benchmarks import variants

    if not native.available():
        pytest.skip(f"no native kernel here: {native.status().reason}")
    options = dict(batch_sizes="2", steps="1", cell="irnn", repeats=1, xla_max_isa="")
    rows = variants.worker(native.status().variant, ["fused", "native"], options, tmp_path / "w.json")
    assert {r["recurrence"] for r in rows} == {"fused", "native"} and all(r["step_ms"] > 0 for r in rows)


def test_gpu_check_without_a_gpu_says_so_and_times_the_cpu_when_asked(tmp_path):
    bare = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert bare.returncode == 0, bare.stderr[-2000:]
    assert "SKIP all: JAX sees no GPU" in bare.stdout and "| batch |" not in bare.stdout
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--allow_cpu", "--batch_sizes=4", "--steps=1",
         "--unrolls=1,2", "--repeats=1", f"--json_out={tmp_path / 'g.json'}", f"--md_out={tmp_path / 'g.md'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("SKIP tests on the GPU: no GPU", "SKIP compiled Pallas against scan: no GPU", "SKIP pallas timings"):
        assert line in out.stdout
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert [r["path"] for r in rows] == ["scan (nn.scan, unroll 1)", "scan (nn.scan, unroll 2)", "fused"]
    for r in rows:
        assert r["step_ms"] > 0 and r["epoch_s"] == pytest.approx(r["step_ms"] * 15_000 / 1e3)
    assert (tmp_path / "g.md").read_text().count("| 4 |") == 3


def test_large_batch_sets_whole_and_chunked_gradients_against_the_matmul_peak(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.large_batch", "--batch_sizes=4,8", "--steps=1", "--repeats=1",
         "--cpu_devices=1", "--chunk_rows=0,2", "--recurrence=fused", f"--json_out={tmp_path / 'l.json'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "l.json").read_text())
    rows = report["rows"]
    assert [(r["batch"], r["grad_chunk_rows"], r["chunk_rows_resolved"]) for r in rows] == [
        (4, 0, 0), (4, 2, 2), (8, 0, 0), (8, 2, 2)
    ]  # fmt: skip
    for r in rows:
        assert r["fraction_of_matmul"] == pytest.approx(r["gflops"] * 1e9 / report["matmul_flop_per_s"])
        assert r["gflops"] == pytest.approx(47.5e6 * r["samples_per_s"] / 1e9, rel=0.01)
    assert max(r["per_sample_vs_first"] for r in rows[:2]) == pytest.approx(1.0)
    assert "| 8 | 1 x 8 | fused (fused) | 2 (2) |" in out.stdout


def test_fma_peak_measures_each_instruction_set_the_cpu_runs_and_skips_the_others(capsys, monkeypatch):
    from benchmarks import fma_peak

    rows = fma_peak.main(["--iterations=200000", "--repeats=2"])
    out = capsys.readouterr().out
    for isa in ("avx512", "avx2"):
        if fma_peak.runnable(isa):
            row = next(r for r in rows if r["isa"] == isa)
            assert row["gflops_cpu_time"] > 1.0 and row["gflops_wall"] > 0.1  # a real rate, not a stub
            assert f"| {isa} | {fma_peak.LANES[isa]} |" in out
        else:
            assert f"SKIP {isa}: this CPU lacks" in out
    # A CPU without the set is skipped by name, not run into an illegal instruction.
    monkeypatch.setattr(fma_peak, "runnable", lambda isa: False)
    assert fma_peak.main(["--isa=avx2", "--iterations=10"]) == []
    assert "SKIP avx2: this CPU lacks avx2" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not one of"):
        fma_peak.main(["--isa=sse9"])
