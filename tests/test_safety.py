"""Nothing a bad native library, a non-finite value or a bad sweep value does is silent or kills the
process: a library that cannot run here (built for another CPU, truncated, trapping) is refused with
one line before it is loaded, and "auto" takes the XLA path; every recurrence carries a non-finite
value to the loss, so the divergence stop fires on each; non-finite config values are refused."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irnn_jax import checkpoint as checkpoint_lib
from irnn_jax import config_check, loop, native, native_library, recurrence, train
from irnn_jax import workdir as workdir_lib
from tests.conftest import ROOT, tiny_config
from tests.test_native import loaded_afresh

HAS_COMPILER = bool(shutil.which("cc") or shutil.which("gcc"))
INSTALLED = native_library.package_libraries()  # best first


def _fake_library(tmp_path: Path, body: str, isa: str = "sse4_2,") -> Path:
    """A shared library with the kernel's marker and entry points, whose self-test runs `body` (C)."""
    source = tmp_path / "fake.c"
    source.write_text(
        f'const char IrnnBuildIsa[] __attribute__((used)) = "irnn-jax-native-isa:{isa};";\n'
        f"int IrnnSelfTest(void) {{ {body} }}\n"
        + "".join(f"void {s}(void) {{ __builtin_trap(); }}\n" for s in native.TARGETS.values())
    )
    out = tmp_path / "fake.so"
    subprocess.run([shutil.which("cc") or "gcc", "-shared", "-fPIC", "-O1", str(source), "-o", str(out)], check=True)
    return out


def _cli(tmp_path: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The pixel_mnist command on a tiny generated data set, 3 steps of a 4-unit IRNN on one device."""
    from tests.conftest import write_idx_dir

    data = write_idx_dir(tmp_path / "idx", n_train=16, n_test=8)
    command = [
        sys.executable, "-m", "experiments.pixel_mnist", f"--workdir={tmp_path / 'run'}", "--cpu_devices=1",
        f"--config.data_dir={data}", "--config.hidden_size=4", "--config.batch_size=4", "--config.num_train_steps=3",
        "--config.eval_every_steps=3", "--config.eval_batch_size=8", "--config.progress_bar=False", *flags,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})


def _last_session(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "run.json").read_text())["sessions"][-1]


# ---------------------------------------------------------------------------------- the native library


@pytest.mark.slow
@pytest.mark.skipif(not INSTALLED, reason="no native kernel built here (no C++ compiler at install)")
def test_a_truncated_library_is_refused_and_auto_trains_on_the_xla_path(tmp_path):
    """A partial copy of the library: on main before the checks, dlopen died of a bus error (exit 135)."""
    cut = tmp_path / "cut.so"
    cut.write_bytes(INSTALLED[0].read_bytes()[:20_000])
    done = _cli(tmp_path, "--config.recurrence=auto", env={native.LIBRARY_ENV: str(cut)})
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "native kernel unavailable" in line]
    assert len(warnings) == 1 and "truncated" in warnings[0], done.stderr[-3000:]
    session = _last_session(tmp_path)
    assert session["recurrence"] == "fused" and "truncated" in session["recurrence_why"]
    assert "native_variant" not in session


@pytest.mark.slow
@pytest.mark.skipif(not HAS_COMPILER, reason="needs a C compiler to make the trapping library")
def test_a_library_that_traps_is_refused_with_native_and_stepped_around_with_auto(tmp_path):
    """Its entry points execute an illegal instruction, as a build for another CPU does: the self-test
    in a child process dies of it, not the run."""
    trap = _fake_library(tmp_path, "__builtin_trap(); return 0;")
    done = _cli(tmp_path, "--config.recurrence=native", env={native.LIBRARY_ENV: str(trap)})
    assert done.returncode == 1, done.stderr[-3000:]
    assert "SIGILL" in done.stderr and "Traceback" not in done.stderr
    done = _cli(tmp_path, "--config.recurrence=auto", env={native.LIBRARY_ENV: str(trap)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert _last_session(tmp_path)["recurrence"] == "fused"


def test_a_library_for_a_cpu_with_more_features_is_refused_before_it_loads(monkeypatch, tmp_path):
    """The feature check, simulated: IRNN_JAX_CPU_FLAGS names a CPU with no AVX2, below what any
    x86 build of the package's kernel (AVX2 or AVX-512) needs."""
    if not INSTALLED:
        pytest.skip("no native kernel built here")
    monkeypatch.setenv(native.CPU_FLAGS_ENV, "fpu sse sse2")
    with loaded_afresh(monkeypatch):
        with pytest.raises(native.NativeUnavailable, match="which this CPU lacks"):
            native.check("relu", 8)
        name, why = recurrence.explain("auto", "irnn", 8, "cpu")
        assert name == "fused" and "lacks" in why


def test_a_library_whose_self_test_fails_or_is_missing_is_refused(monkeypatch, tmp_path):
    if not HAS_COMPILER:
        pytest.skip("needs a C compiler to make the library")
    wrong = _fake_library(tmp_path, "return 7;")
    monkeypatch.setenv(native.LIBRARY_ENV, str(wrong))
    with loaded_afresh(monkeypatch):
        with pytest.raises(native.NativeUnavailable, match="self-test failed"):
            native.check("relu", 8)
        unmarked = tmp_path / "unmarked.so"
        unmarked.write_bytes(wrong.read_bytes().replace(b"irnn-jax-native-isa:", b"xxxx-xxx-xxxxxx-isa:"))
        monkeypatch.setenv(native.LIBRARY_ENV, str(unmarked))
        native._load.cache_clear()
        with pytest.raises(native.NativeUnavailable, match="damaged or out of date"):
            native.check("relu", 8)


def test_the_package_library_passes_its_own_checks_and_says_what_it_was_built_for():
    if not INSTALLED:
        pytest.skip("no native kernel built here")
    loaded = Path(native.status().library)
    features = native_library.build_features(loaded)
    assert features and native_library.variant_name(features) in ("avx512", "avx2", "x86-64", "aarch64")
    assert native_library.truncated(loaded) is None
    assert native_library._probe(loaded) is None
    assert native.status().variant == native_library.variant_name(features)
    if forced := os.environ.get(native_library.ISA_ENV):  # a run of the suite with the variant forced
        assert native.status().variant == forced
        return
    # The best variant this CPU runs: no variant ranked above it passes the CPU check here.
    above = INSTALLED[: [p.resolve() for p in INSTALLED].index(loaded.resolve())]
    assert all("which this CPU lacks" in (native_library.try_library(p.resolve()).reason or "") for p in above)


def test_every_x86_build_has_its_variants_and_the_cpu_picks_among_them(monkeypatch):
    """setup.py builds AVX-512 and AVX2 libraries on x86-64; a CPU without AVX-512 takes the AVX2 one,
    IRNN_JAX_NATIVE_ISA forces a variant, and one not built is refused by name."""
    import platform

    if not INSTALLED or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("no x86-64 native kernel built here")
    assert {native_library.variant_of_file(p) for p in INSTALLED} >= {"avx512", "avx2"}
    avx2 = next(p for p in INSTALLED if native_library.variant_of_file(p) == "avx2")
    avx512 = next(p for p in INSTALLED if native_library.variant_of_file(p) == "avx512")
    flags = set(native_library.build_features(avx2))
    # Each library holds its own variant's code (not another's objects, linked in by a shared build path).
    assert "avx2" in flags and "fma" in flags and not any(f.startswith("avx512") for f in flags)
    assert "avx512f" in native_library.build_features(avx512)
    if not flags <= (native_library.cpu_flags() or set()):
        pytest.skip("this CPU cannot run the AVX2 build")
    # Chosen, not loaded: a process registers one library's kernels for good (XLA refuses a second).
    monkeypatch.setenv(native.CPU_FLAGS_ENV, " ".join(flags))  # this CPU, less AVX-512
    library, status = native_library.choose()
    assert status.reason is None and status.variant == "avx2" and "_rnn_kernel_avx2" in library.name
    monkeypatch.delenv(native.CPU_FLAGS_ENV)
    monkeypatch.setenv(native_library.ISA_ENV, "avx2")
    library, status = native_library.choose()
    assert status.variant == "avx2" and "_rnn_kernel_avx2" in library.name
    monkeypatch.setenv(native_library.ISA_ENV, "neon")
    library, status = native_library.choose()
    assert library is None and "IRNN_JAX_NATIVE_ISA=neon: no such variant is built here" in status.reason


def test_auto_leaves_an_unmeasured_build_to_native_alone(monkeypatch):
    """A build below AVX2 (or for ARM) runs when asked for, but `auto` takes the XLA path: nobody has
    measured it against XLA."""
    for variant in ("x86-64", "aarch64"):
        monkeypatch.setattr(native, "_load", lambda variant=variant: native.Status(None, "/lib/k.so", variant))
        native.check("relu", 8)  # recurrence=native would run it
        name, why = recurrence.explain("auto", "irnn", 100, "cpu")
        assert name == "fused" and f"{variant} build, which has not been measured" in why


@pytest.mark.slow
def test_each_variant_this_cpu_runs_matches_scan(tmp_path):
    """The native kernel's tests (values and gradients against scan, the LSTM, the presets' rows) for
    every variant but the one the rest of the suite uses, in a process of its own."""
    others = [
        native_library.variant_of_file(p) for p in INSTALLED if native_library.try_library(p.resolve()).reason is None
    ]
    others = [v for v in others if v != native.status().variant]
    if not others:
        pytest.skip("this CPU runs one variant only: the rest of the suite tests it")
    for variant in others:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests/test_native.py",
             "-k", "matches_scan or lstm or rows_of_scan"],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, native_library.ISA_ENV: variant},
        )  # fmt: skip
        assert done.returncode == 0, (variant, done.stdout[-3000:])
        assert " passed" in done.stdout and "failed" not in done.stdout


def test_the_command_line_takes_every_recurrence_value(tmp_path):
    """recurrence=native used to die at the config check with 'jax_num_cpu_devices config should be
    updated before backends are initialized' (the check asked JAX for its backend first)."""
    for value in recurrence.CONFIG_VALUES:
        if value == "native" and not native.available():
            continue  # refused with its reason instead; tested above
        done = _cli(tmp_path / value, f"--config.recurrence={value}")
        assert done.returncode == 0, (value, done.stderr[-3000:])
        session = _last_session(tmp_path / value)
        want = recurrence.resolve(value, "irnn", 4, "cpu")
        assert session["recurrence"] == want and session["recurrence_why"], session
        assert session["cpu_affinity"]
        if want == "native":
            assert session["native_variant"] == native.status().variant
        assert session["grad_chunk_rows"] == (train.AUTO_CHUNK_ROWS if want == "native" else 0), session


# ------------------------------------------------------------------------------- non-finite values


def _poisoned_create_state(create_state):
    """train.create_state with the recurrent cell's input kernel set to inf: every pre-activation is
    +-inf or NaN from the first step (what --config.input_init_std=inf did before it was refused)."""

    def make(config, num_steps, steps_per_epoch=0):
        state = create_state(config, num_steps, steps_per_epoch)

        def poison(path, x):
            return jnp.full_like(x, jnp.inf) if [getattr(k, "key", "") for k in path] == ["rnn", "kernel"] else x

        params = jax.tree_util.tree_map_with_path(poison, state.params)
        return state.replace(params=params)

    return make


@pytest.mark.parametrize("rec", ["scan", "fused", "native", pytest.param("pallas", marks=pytest.mark.slow)])
def test_every_recurrence_carries_a_non_finite_input_to_the_divergence_stop(idx_dir, tmp_path, monkeypatch, rec):
    """The native ReLU once mapped NaN to 0 (z > 0 ? z : 0): the same poisoned weights trained on
    silently there while "fused" stopped at step 1."""
    if rec == "native" and not native.available():
        pytest.skip(f"no native kernel here: {native.status().reason}")
    monkeypatch.setattr(train, "create_state", _poisoned_create_state(train.create_state))
    config = tiny_config(idx_dir, recurrence=rec, hidden_size=20, num_train_steps=6)
    with pytest.raises(train.DivergenceError, match="non-finite at step 1 "):
        loop.train_and_evaluate(config, tmp_path / rec)


def test_the_native_relu_keeps_nan_and_inf():
    if not native.available():
        pytest.skip(f"no native kernel here: {native.status().reason}")
    params = {
        "kernel": np.asarray([[np.nan, np.inf, -np.inf, 1.0] + [0.5] * 16], np.float32),
        "recurrent_kernel": np.eye(20, dtype=np.float32),
        "bias": np.zeros(20, np.float32),
    }
    h = np.asarray(native.final_state(params, jnp.ones((2, 1, 1)), "relu"))  # one step: relu(x W_in)
    assert np.isnan(h[:, 0]).all() and np.isposinf(h[:, 1]).all() and (h[:, 2] == 0).all()
    assert np.allclose(h[:, 3], 1.0) and np.allclose(h[:, 4:], 0.5)
    h = np.asarray(native.final_state(params, jnp.ones((2, 3, 1)), "relu"))  # the NaN reaches every unit
    assert np.isnan(h).all()


@pytest.mark.parametrize(
    "field,value",
    [("input_init_std", math.inf), ("input_init_std", math.nan), ("learning_rate", math.inf),
     ("clip_norm", math.nan), ("recurrent_gain", -math.inf), ("input_std", math.inf)],
)  # fmt: skip
def test_non_finite_config_values_are_refused(idx_dir, field, value):
    with pytest.raises(config_check.ConfigError, match=field):
        config_check.validate_config(tiny_config(idx_dir, **{field: value}))


# ---------------------------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize(
    "spec,bad",
    [("learning_rate=-1e-3,1e-3", "learning_rate"), ("clip_norm=-1", "clip_norm"),
     ("input_init_std=0", "input_init_std"), ("seed=-1,0", "seed"), ("learning_rate=nan", "learning_rate")],
)  # fmt: skip
def test_each_run_of_a_sweep_passes_the_single_run_checks(idx_dir, spec, bad):
    with pytest.raises(config_check.ConfigError, match=rf"sweep run 000_.*{bad}"):
        config_check.validate_config(tiny_config(idx_dir, sweep=spec))
    config_check.validate_config(tiny_config(idx_dir, sweep="seed=0,1 learning_rate=1e-3,2e-3"))


@pytest.mark.slow
def test_a_bad_sweep_value_is_refused_before_the_workdir_exists(tmp_path):
    done = _cli(tmp_path, "--config.sweep=learning_rate=-1e-3,1e-3")
    assert done.returncode == 1 and "learning_rate must be > 0" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------- the filesystem


@pytest.mark.slow
@pytest.mark.parametrize("where", ["a_file", "under_proc"])
def test_a_workdir_that_cannot_be_written_is_one_line_and_exit_1(tmp_path, where):
    """A workdir that is a file, or a path under /proc, was a raw traceback."""
    target = tmp_path / "run"
    if where == "a_file":
        target.write_text("not a folder")
        flag = f"--workdir={target}"
    else:
        flag = "--workdir=/proc/irnn_jax_run"
    done = _cli(tmp_path, flag)
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot write" in errors[0], done.stderr[-3000:]
    assert ("run" if where == "a_file" else "/proc/irnn_jax_run") in errors[0]
    assert "Traceback" not in done.stderr


def test_a_full_disk_stops_the_run_with_its_cause_and_the_resume_is_exact(idx_dir, tmp_path, monkeypatch):
    """Orbax's writers fail as they do when the disk is full (ValueError: RESOURCE_EXHAUSTED ...
    [os_error_code='28']) from the save of step 8 on: one StorageError naming the folder and the
    cause; the session's outcome says so; the checkpoints before are kept, the unfinished one is
    removed; after the space is back, the same call resumes and ends with the uninterrupted rows."""
    import orbax.checkpoint as ocp

    from tests.conftest import read_rows

    config = tiny_config(idx_dir, num_train_steps=12)
    loop.train_and_evaluate(config, tmp_path / "straight")
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step >= 8:
            raise ValueError(
                f'RESOURCE_EXHAUSTED: Error writing local file "{self.directory}/{step}.orbax-checkpoint-tmp/x": '
                "Failed to write 408 bytes to file 8: No space left on device [os_error_code='28']"
            )
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    work = tmp_path / "full"
    with pytest.raises(checkpoint_lib.StorageError, match=r"checkpoints: No space left on device.*newest: step 4"):
        loop.train_and_evaluate(config, work)
    session = json.loads((work / "run.json").read_text())["sessions"][-1]
    assert session["outcome"].startswith("error: StorageError") and "No space left" in session["outcome"]
    assert not list((work / "checkpoints").glob("*tmp*"))
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    loop.train_and_evaluate(config, work)
    assert read_rows(work) == read_rows(tmp_path / "straight")


def test_a_failed_save_lets_an_earlier_save_still_in_flight_finish(tmp_path):
    """The full-disk test above once lost step 4: step 8's save failed at once while step 4's was still
    being written, and the clean-up deleted step 4's temporary folder. The clean-up now waits first."""
    ckpt = checkpoint_lib.Checkpointer(tmp_path / "checkpoints")
    in_flight = ckpt.directory / "4.orbax-checkpoint-tmp-123"
    in_flight.mkdir(parents=True)
    (in_flight / "state").write_text("x")

    class Writing:  # an Orbax manager whose pending save of step 4 completes when waited for
        def wait_until_finished(self):
            if in_flight.exists():
                in_flight.rename(ckpt.directory / "4")

        def latest_step(self):
            return 4 if (ckpt.directory / "4").exists() else None

    real, ckpt._manager = ckpt._manager, Writing()
    try:
        with pytest.raises(checkpoint_lib.StorageError, match="newest: step 4"):
            with ckpt._storage_errors():
                raise OSError(28, "No space left on device")
    finally:
        ckpt._manager = real
        ckpt.close()
    assert (ckpt.directory / "4" / "state").read_text() == "x"
    assert not list(ckpt.directory.glob("*tmp*"))


def test_a_session_reads_unrecorded_until_it_records_its_end(idx_dir, tmp_path):
    """A process killed (or out of disk) before end_session leaves a session that says so, not one
    with no outcome at all."""
    workdir_lib.record_session(tmp_path, tiny_config(idx_dir), experiment="pixel_mnist", command="x")
    session = json.loads((tmp_path / "run.json").read_text())["sessions"][-1]
    assert session["outcome"] == workdir_lib.UNRECORDED_OUTCOME and "killed" in session["outcome"]
    workdir_lib.end_session(tmp_path, 4, "finished")
    assert json.loads((tmp_path / "run.json").read_text())["sessions"][-1]["outcome"] == "finished"


def test_the_divergence_advice_knows_whether_clipping_is_on(idx_dir):
    clipped = train.divergence_advice(tiny_config(idx_dir, clip_norm=1.0))
    assert "clipping is already on, clip_norm=1" in clipped and "set clip_norm" not in clipped
    assert "set clip_norm" in train.divergence_advice(tiny_config(idx_dir, clip_norm=0.0))


def test_auto_takes_scan_where_the_avx2_build_measured_slower(monkeypatch):
    monkeypatch.setattr(native, "_load", lambda: native.Status(None, "/lib/k.so", "avx2"))
    assert recurrence.explain("auto", "irnn", 100, "cpu", batch=16)[0] == "native"
    assert recurrence.explain("auto", "irnn", 100, "cpu", batch=None)[0] == "native"
    name, why = recurrence.explain("auto", "irnn", 100, "cpu", batch=recurrence.AVX2_SCAN_FROM_ROWS)
    assert name == "scan" and "slower than nn.scan" in why
    assert recurrence.explain("auto", "lstm", 100, "cpu", batch=1024)[0] == "native"  # measured at 16 rows only
    monkeypatch.setattr(native, "_load", lambda: native.Status(None, "/lib/k.so", "avx512"))
    assert recurrence.explain("auto", "irnn", 100, "cpu", batch=512)[0] == "native"
