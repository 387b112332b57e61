"""Recurrence "native" (the C++ kernels of csrc/rnn_kernel.cc and csrc/lstm_kernel.cc through XLA FFI)
equals "scan", the reference, to float32 rounding: values and gradients at the shapes its vector
blocking treats apart, for the simple RNNs and the LSTM, a training run's metric rows, a sweep's runs;
and it refuses what it cannot run, with the reason.

Tolerances as in tests/test_recurrence.py: the kernel sums the same products in another order."""

import contextlib
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irnn_jax import config_check, loop, native, native_library, recurrence, sweep
from tests import test_lstm
from tests.conftest import ROOT, read_rows, tiny_config
from tests.test_recurrence import check_against_scan, make_params


def test_the_kernel_is_built_where_a_compiler_is():
    """`pip install -e .` compiles it (setup.py); on a machine with a C++ compiler, CI's among them, a
    missing kernel is a broken build, not a reason to test less."""
    if shutil.which("c++") or shutil.which("g++"):
        assert native.available(), native._load()


def test_every_kernel_source_is_in_the_build_recipe():
    """csrc/build.json is what setup.py and benchmarks/kernel_ab.py compile: a .cc left out of it
    would be missing from the library, a .h from setup.py's rebuild triggers."""
    root = ROOT / "csrc"
    recipe = json.loads((root / "build.json").read_text())
    assert sorted(recipe["sources"]) == sorted(f"csrc/{p.name}" for p in root.glob("*.cc"))
    assert sorted(recipe["depends"]) == sorted(f"csrc/{p.name}" for p in root.glob("*.h"))
    assert "build.json" in (ROOT / "setup.py").read_text() and "build.json" in (ROOT / "MANIFEST.in").read_text()


# (batch, steps, inputs, hidden): batch below, at and off the kernel's row blocks of 3 and 4; hidden
# within one vector of 16, off a multiple of it (the pixel presets' 100), exactly 8 vectors (128); a
# last vector of 1 to 4 units after whole ones, computed as a quarter vector (20, 50, 100), and of 5.
SHAPES = [
    (2, 8, 3, 1),
    (3, 12, 2, 5),
    (4, 9, 3, 16),
    (4, 9, 3, 20),
    (3, 8, 1, 37),
    (7, 12, 1, 100),
    (5, 10, 28, 50),
    (16, 6, 2, 128),
]


@pytest.mark.parametrize("activation,w_rec", [("relu", "identity"), ("relu", "random"), ("tanh", "random")])
@pytest.mark.parametrize("batch,steps,inputs,hidden", SHAPES)
def test_native_matches_scan(batch, steps, inputs, hidden, activation, w_rec):
    x_BxTxC = jnp.asarray(np.random.default_rng(1).normal(size=(batch, steps, inputs)), jnp.float32)
    params = make_params(inputs, hidden, w_rec, seed=2)
    check_against_scan("native", activation, params, x_BxTxC, rtol=1e-5)


def test_native_matches_scan_over_784_pixels_in_many_blocks():
    """The pixel presets' length and width at a device's batch of 16: the backward runs 24 blocks of
    32 steps (K*B = 512 rows), and ReLU units switch on and off along the way."""
    x_BxTxC = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (16, 784, 1)), jnp.float32)
    rng = np.random.default_rng(4)
    params = make_params(1, 100, "identity", seed=4)
    params["recurrent_kernel"] = jnp.asarray(0.97 * np.eye(100) + rng.normal(0, 0.002, (100, 100)), jnp.float32)
    params["bias"] = params["bias"] - 0.05
    check_against_scan("native", "relu", params, x_BxTxC, rtol=1e-4)


def test_native_tanh_matches_scan_over_784_pixels():
    """The tanh RNN at the pixel length: the kernel's tanh is a rational approximation (3e-7)."""
    x_BxTxC = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (16, 784, 1)), jnp.float32)
    check_against_scan("native", "tanh", make_params(1, 100, "random", seed=6), x_BxTxC, rtol=1e-4)


# (batch, steps, inputs, hidden) of the LSTM: batch below, at and off the row blocks of 2 to 4; steps
# in one block of the weight gradients and in many (at batch 3, 128 rows: blocks of 40 of 160 steps);
# hidden of 1, off a multiple of 16 (the presets' 100), and 128; 28 inputs (row MNIST).
LSTM_SHAPES = [(2, 9, 3, 1), (5, 30, 2, 12), (7, 28, 28, 16), (3, 160, 1, 100), (16, 12, 1, 128), (4, 20, 2, 33)]


@pytest.mark.parametrize("batch,steps,inputs,hidden", LSTM_SHAPES)
def test_native_lstm_matches_scan(batch, steps, inputs, hidden):
    params = test_lstm.make_params(inputs, hidden, seed=steps + hidden)
    x = jnp.asarray(np.random.default_rng(batch).uniform(-1, 1, (batch, steps, inputs)), jnp.float32)
    want_h, want_grads = test_lstm.outputs("scan", params, x)
    got_h, got_grads = test_lstm.outputs("native", params, x)
    assert min(float(jnp.abs(g).max()) for g in jax.tree.leaves(want_grads)) > 1e-3  # every gradient is alive
    test_lstm.assert_close(got_h, want_h, 1e-5)
    test_lstm.assert_close(got_grads, want_grads, 1e-5)


def test_native_lstm_matches_scan_over_784_pixels():
    """The pixel presets' LSTM at a device's batch of 16: 98 blocks of 8 steps in the backward."""
    params = test_lstm.make_params(1, 100, seed=7)
    x = jnp.asarray(np.random.default_rng(8).uniform(0, 1, (16, 784, 1)), jnp.float32)
    test_lstm.assert_close(test_lstm.outputs("native", params, x), test_lstm.outputs("scan", params, x), 1e-4)


def test_native_lstm_would_catch_a_wrong_gate():
    """The comparison's tolerance is far below one wrong term: swapping the input and forget gates'
    columns moves the gradients by more than it allows."""
    params = test_lstm.make_params(1, 8, seed=3)
    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (4, 40, 1)), jnp.float32)
    _, want = test_lstm.outputs("scan", params, x)
    swapped = {k: jnp.concatenate([v[..., 8:16], v[..., :8], v[..., 16:]], -1) for k, v in params.items()}
    _, got = test_lstm.outputs("native", swapped, x)
    with pytest.raises(AssertionError):
        test_lstm.assert_close(got[0]["recurrent_kernel"], want[0]["recurrent_kernel"], 1e-4)


@pytest.mark.parametrize(
    "kind,hidden,platform,reason",
    [
        ("sigmoid", 8, "cpu", "relu and tanh RNNs and the LSTM only"),
        ("relu", 129, "cpu", "1 to 128 hidden units"),
        ("lstm", 129, "cpu", "1 to 128 hidden units"),
        ("relu", 8, "gpu", "CPU only"),
        ("lstm", 8, "tpu", "CPU only"),
    ],
)
def test_what_it_cannot_run_is_refused_with_the_reason(kind, hidden, platform, reason):
    with pytest.raises(native.NativeUnavailable, match=reason):
        native.check(kind, hidden, platform)


def test_the_simple_rnn_kernel_refuses_the_lstm_kind():
    with pytest.raises(native.NativeUnavailable, match="lstm_final_state"):
        native.final_state(make_params(1, 4, "random", seed=0), jnp.zeros((1, 3, 1)), "lstm")


@contextlib.contextmanager
def loaded_afresh(monkeypatch):
    """native._load run again under the test's monkeypatching; after it, the patches undone and the
    package's own kernel registered again (where a compiler built it)."""
    native._load.cache_clear()
    try:
        yield
    finally:
        monkeypatch.undo()
        native._load.cache_clear()
    assert native.available() == bool(shutil.which("c++") or shutil.which("g++"))


def test_a_missing_kernel_is_refused_with_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setattr(native_library, "__file__", str(tmp_path / "native_library.py"))  # a folder with no .so
    monkeypatch.delenv(native_library.ISA_ENV, raising=False)  # a forced variant has its own message
    with loaded_afresh(monkeypatch), pytest.raises(native.NativeUnavailable, match="pip install -e"):
        native.check("relu", 8)


def test_a_library_named_by_the_environment_is_loaded_or_refused(monkeypatch, tmp_path):
    """IRNN_JAX_NATIVE_LIBRARY (another build, as benchmarks/kernel_ab.py times) replaces the package's."""
    monkeypatch.setenv(native.LIBRARY_ENV, str(tmp_path / "gone.so"))
    with loaded_afresh(monkeypatch):
        with pytest.raises(native.NativeUnavailable, match="gone.so is not a file: unset it"):
            native.check("relu", 8)
        (tmp_path / "empty.so").write_bytes(b"")
        monkeypatch.setenv(native.LIBRARY_ENV, str(tmp_path / "empty.so"))
        native._load.cache_clear()
        with pytest.raises(native.NativeUnavailable, match="empty.so is damaged or out of date"):
            native.check("relu", 8)


def test_the_config_check_names_what_native_cannot_run(idx_dir):
    for overrides in (dict(hidden_size=200), dict(cell="lstm", hidden_size=200)):
        with pytest.raises(config_check.ConfigError, match="1 to 128 hidden units"):
            config_check.validate_config(tiny_config(idx_dir, recurrence="native", **overrides))
    assert all(recurrence.supports("native", cell) for cell in ("irnn", "rnn_relu", "rnn_tanh", "lstm"))
    assert not recurrence.supports("pallas", "lstm")


def test_a_run_with_native_gives_the_rows_of_scan(idx_dir, tmp_path):
    """The whole training loop (the keras preset shrunk: 784 steps, batch 4), metric rows to 1e-4."""
    rows = {}
    for rec in ("native", "scan"):
        loop.train_and_evaluate(tiny_config(idx_dir, recurrence=rec, hidden_size=20), tmp_path / rec)
        rows[rec] = read_rows(tmp_path / rec)
    assert [r["step"] for r in rows["native"]] == [5, 10, 12]
    for got, want in zip(rows["native"], rows["scan"], strict=True):
        assert got == {k: pytest.approx(v, rel=1e-4, abs=1e-7) for k, v in want.items()}


def test_each_run_of_a_native_sweep_equals_the_run_alone(idx_dir, tmp_path):
    """On CPU a sweep steps its runs one after the other (lax.map): each native call sees one run."""
    config = tiny_config(idx_dir, recurrence="native", num_train_steps=4, eval_every_steps=2, sweep="seed=0,1")
    result = loop.train_and_evaluate(config, tmp_path / "sweep")
    name, alone_config = sweep.expand(config)[1]
    alone = loop.train_and_evaluate(alone_config, tmp_path / "alone")
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, b), sweep.unstack(result.state.params, 1), alone.state.params
    )
    assert read_rows(tmp_path / "sweep" / "runs" / name) == read_rows(tmp_path / "alone")


def test_auto_is_native_where_it_can_run_and_fused_elsewhere(idx_dir, tmp_path):
    built = "native" if native.available() else "fused"
    assert [recurrence.resolve("auto", cell, 100) for cell in ("irnn", "rnn_relu", "rnn_tanh", "lstm")] == [built] * 4
    assert recurrence.resolve("auto", "irnn", 100, platform="gpu") == "fused"
    assert recurrence.resolve("auto", "lstm", 100, platform="gpu") == "fused"
    assert recurrence.resolve("auto", "irnn", 129) == "fused"
    assert recurrence.resolve("fused", "irnn", 100) == "fused" and recurrence.resolve("scan", "lstm", 8) == "scan"
    # run.json records what ran in each session: a run moved between machines may change.
    loop.train_and_evaluate(tiny_config(idx_dir, recurrence="auto", num_train_steps=2, eval_every_steps=2), tmp_path)
    (session,) = json.loads((tmp_path / "run.json").read_text())["sessions"]
    assert session["recurrence"] == built
