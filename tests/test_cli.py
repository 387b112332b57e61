"""The command line as a user meets it: --help, presets, clear errors."""

import json
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli
from experiments.configs import base, pixel_mnist
from irnn_jax import metrics, parallel, train
from tests.conftest import ROOT


def _run(*args, timeout=120, experiment="pixel_mnist"):
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{experiment}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_help_lists_every_field_and_preset():
    out = _run("--help")  # absl's --help exits 1 by convention
    assert "CONFIG FIELDS" in out.stdout, out.stderr
    for field in base.base_config():
        assert f"\n  {field} " in out.stdout, field
    listed = next(line for line in out.stdout.splitlines() if line.startswith("PRESETS ("))
    assert listed.split(": ", 1)[1].split(", ") == list(pixel_mnist.PRESETS)
    for preset in ("keras", "keras_900", "keras_default_init"):  # each described in the docstring
        assert f"\n{preset}\n" in out.stdout, preset


def _first_update(config, grads_scale=100.0):
    """The parameter change of one optimiser step on a fixed gradient."""
    state = train.create_state(config)
    tx = train.make_optimizer(config)
    grads = jax.tree.map(lambda p: jnp.full_like(p, grads_scale), state.params)
    updates, _ = tx.update(grads, tx.init(state.params), state.params)
    return jax.tree.map(np.asarray, updates)


def test_the_main_fields_each_change_what_a_run_does():
    """The fields a user sets most (batch, length, optimiser, seed) are not only present but used."""
    steps = train.total_steps(pixel_mnist.get_config("keras"), 60_000)
    assert steps == 200 * 1875
    for field, value, want in (
        ("batch_size", 64, 200 * 938),  # the last batch of an epoch is partial, not dropped
        ("num_epochs", 3, 3 * 1875),
        ("num_train_steps", 777, 777),  # replaces the epoch count
        ("num_train_steps", 10 * steps, 10 * steps),  # and can make the run longer
    ):
        changed = pixel_mnist.get_config("keras")
        changed[field] = value
        assert train.total_steps(changed, 60_000) == want, field

    base = _first_update(pixel_mnist.get_config("keras"))
    for field, value in (("learning_rate", 2e-6), ("clip_norm", 0.5), ("clip_norm", 0.0)):
        changed = pixel_mnist.get_config("keras")
        changed[field] = value
        update = _first_update(changed)
        assert not np.array_equal(update["rnn"]["recurrent_kernel"], base["rnn"]["recurrent_kernel"]), field

    seeded = pixel_mnist.get_config("keras")
    seeded.seed = 1
    a = train.create_state(pixel_mnist.get_config("keras")).params
    b = train.create_state(seeded).params
    assert not np.array_equal(np.asarray(a["rnn"]["kernel"]), np.asarray(b["rnn"]["kernel"]))


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        pixel_mnist.get_config("nope")


def test_keras_presets_match_the_sources():
    s0, s1 = pixel_mnist.get_config("keras"), pixel_mnist.get_config("keras_default_init")
    assert (s0.cell, s0.batch_size, s0.num_epochs, s0.learning_rate, s0.clip_norm) == ("irnn", 32, 200, 1e-6, 1.0)
    assert (s0.recurrent_gain, s0.input_init_std, s0.hidden_size) == (1.0, 0.001, 100)
    assert pixel_mnist.get_config("keras_900").num_epochs == 900
    assert (s1.cell, s1.batch_size, s1.num_epochs, s1.learning_rate) == ("rnn_relu", 1024, 10, 1e-6)


@pytest.mark.slow
def test_bad_value_exits_1_with_a_message(tmp_path):
    out = _run(f"--workdir={tmp_path}", "--config.batch_size=0")
    assert out.returncode == 1
    assert "batch_size must be an integer >= 1" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_missing_data_dir_exits_1_with_a_message(tmp_path):
    out = _run(f"--workdir={tmp_path / 'w'}", f"--config.data_dir={tmp_path / 'none'}")
    assert out.returncode == 1
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr


def _run_tiny(idx_dir, workdir, *args):
    """Three steps of a 4-unit model at batch 2 on the test's IDX files."""
    return _run(
        f"--workdir={workdir}",
        f"--config.data_dir={idx_dir}",
        "--config.hidden_size=4",
        "--config.num_train_steps=3",
        "--config.batch_size=2",
        "--config.progress_bar=False",
        *args,
    )


@pytest.mark.slow
def test_runs_end_to_end_from_idx_files(idx_dir, tmp_path):
    out = _run_tiny(idx_dir, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "done: step 3, test accuracy" in out.stdout
    assert (tmp_path / "checkpoints" / "3").is_dir()
    # By default the CPU is split into one device per core, as many as divide the batch of 2.
    expected = parallel.cpu_device_count(0, 2, parallel.usable_cores())
    assert json.loads((tmp_path / "run.json").read_text())["sessions"][0]["devices"] == f"{expected} x cpu"


@pytest.mark.slow
def test_cpu_devices_flag_splits_the_batch(idx_dir, tmp_path):
    out = _run(
        f"--workdir={tmp_path}",
        f"--config.data_dir={idx_dir}",
        "--cpu_devices=3",
        "--config.hidden_size=4",
        "--config.num_train_steps=2",
        "--config.batch_size=6",
        "--config.eval_batch_size=30",
        "--config.progress_bar=False",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "run.json").read_text())["sessions"][0]["devices"] == "3 x cpu"
    assert "3 device(s)" in out.stderr  # the loop's start-up line


@pytest.mark.slow
def test_adding_reports_its_test_loss_at_the_end(tmp_path):
    # A regression task: the closing line has a test loss and no accuracy.
    out = _run(
        f"--workdir={tmp_path}",
        "--config.sequence_length=6",
        "--config.num_train_examples=64",
        "--config.num_test_examples=32",
        "--config.eval_batch_size=32",
        "--config.hidden_size=4",
        "--config.num_train_steps=3",
        "--config.progress_bar=False",
        experiment="adding",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^done: step 3, test loss (\d+\.\d{4}|\d\.\d\de-\d\d)$", out.stdout, re.MULTILINE), out.stdout


@pytest.mark.slow
def test_unknown_config_field_names_the_nearest_real_ones(tmp_path):
    out = _run(f"--workdir={tmp_path}", "--config.learning_rat=1e-4", "--config.nosuchfield=1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no config field 'learning_rat'; did you mean learning_rate" in out.stderr
    assert "no config field 'nosuchfield'" in out.stderr
    assert not tmp_path.joinpath("run.json").exists()


@pytest.mark.slow
def test_negative_num_epochs_exits_1_with_a_message(tmp_path):
    out = _run(f"--workdir={tmp_path}", "--config.num_epochs=-3")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "num_epochs must be an integer >= 1" in out.stderr


@pytest.mark.slow
def test_a_second_writer_of_a_workdir_is_refused_and_the_first_is_untouched(idx_dir, tmp_path):
    """The same command started twice on one workdir: the second stops at once, naming the first."""
    args = [f"--workdir={tmp_path}", f"--config.data_dir={idx_dir}", "--config.hidden_size=4",
            "--config.batch_size=2", "--config.num_train_steps=100000", "--config.eval_every_steps=50",
            "--config.progress_bar=False", "--cpu_devices=1"]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "experiments.pixel_mnist", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.1)
        second = _run(*args)
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert f"is in use by pid {first.pid} on host {socket.gethostname()}, started 20" in second.stderr
        assert first.poll() is None  # still running
    finally:
        first.send_signal(signal.SIGTERM)  # saves and stops
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out[-3000:]
    steps = [r["step"] for r in metrics.read_rows(tmp_path / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and len(json.loads((tmp_path / "run.json").read_text())["sessions"]) == 1


def test_a_sweep_closes_with_every_run_named():
    # One line for a single run; for a sweep, every run's result, not only the first run's.
    one = [{"step": 7, "test_accuracy": 0.91234, "test_loss": 0.3}]
    assert cli.done_lines(one, [""]) == ["done: step 7, test accuracy 0.9123, test loss 0.3000"]
    rows = [
        {"step": 7, "test_accuracy": 0.5, "test_loss": 1.25},
        {"step": 7, "test_accuracy": 0.25, "test_loss": 2e-5, "diverged": True},
    ]
    assert cli.done_lines(rows, ["000_seed=0", "001_seed=1"]) == [
        "done: step 7, 2 runs",
        "  000_seed=0: test accuracy 0.5000, test loss 1.2500",
        "  001_seed=1: test accuracy 0.2500, test loss 2.00e-05 (diverged: its state frozen where it stopped)",
    ]


@pytest.mark.slow
def test_a_sweep_from_the_command_line_prints_each_runs_result(idx_dir, tmp_path):
    out = _run_tiny(idx_dir, tmp_path, "--config.sweep=seed=0,1", "--cpu_devices=1")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()[-3:]
    assert lines[0] == "done: step 3, 2 runs", out.stdout
    for name, line in zip(["000_seed=0", "001_seed=1"], lines[1:], strict=True):
        last = metrics.read_rows(tmp_path / "runs" / name / "metrics.jsonl")[-1]
        assert line.startswith(f"  {name}: test accuracy {last['test_accuracy']:.4f}, test loss"), out.stdout
