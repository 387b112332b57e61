"""benchmarks/compare.py: a tiny JAX-only run end to end, and the skip path for a missing framework."""

import json

import pytest

from benchmarks import compare
from irnn_jax import parallel

pytestmark = pytest.mark.slow  # benchmark subprocesses


def test_flop_per_sample_matches_reference():
    # REFERENCE.md: 784 x (2x100x100 + 2x100) x 3, "about 47 MFLOP forward and backward".
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
    assert row["variant"] == f"recurrence=fused, {devices} device(s) (--cpu_devices=0)"
    assert row["samples_per_s"] > 0 and row["jax_speedup"] == pytest.approx(1.0)
    assert row["flop_per_s"] == pytest.approx(compare.flop_per_sample(8) * row["samples_per_s"])
    assert saved["matmul_peak"]["cpu"]["flop_per_s"] > 0 and row["peak_fraction"] > 0
    assert saved["skipped"] == [{"framework": "torch", "reason": "not installed: irnn_bench_no_such_module"}]
    md = md_out.read_text()
    assert "| jax " in md and "Skipped torch: not installed" in md


def test_unknown_framework_is_an_error():
    with pytest.raises(ValueError, match="unknown frameworks"):
        compare.run(compare.Options(frameworks=("jax", "tensorflow_v1")), log=lambda s: None)
