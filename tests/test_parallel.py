"""Several devices (fake CPU devices in a subprocess) and restores across device counts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from irnn_jax import loop, metrics, parallel
from tests.conftest import ROOT, tiny_config

pytestmark = pytest.mark.slow  # subprocesses with several devices or processes


def _run_on(devices: int, workdir: Path, data_dir, **overrides) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "tests.multidevice_run", str(workdir), str(data_dir), json.dumps(overrides)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["devices"] == devices
    params = np.load(workdir / "params.npz")
    return {k: params[k] for k in params.files}


def _params_here(result) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(result.state.params))[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def _assert_close(a: dict, b: dict):
    """Equal to float32 tolerance: other device counts compile other programs."""
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7, err_msg=k)


SWEEP = dict(num_train_steps=8, sweep="seed=0,1,2,3")


def test_sweep_sharded_over_4_devices_equals_1_device(idx_dir, tmp_path):
    # Each device trains one whole run, but XLA compiles the per-device program
    # for 1 run instead of 4 and may pick other kernels: equal to rtol 1e-5
    # (seen: 10 of 256 elements differ, by at most 4.5e-7 relative).
    four = _run_on(4, tmp_path / "four", idx_dir, **SWEEP)
    one = _params_here(loop.train_and_evaluate(tiny_config(idx_dir, **SWEEP), tmp_path / "one"))
    assert four["['rnn']['kernel']"].shape[0] == 4
    _assert_close(four, one)


@pytest.mark.parametrize("batch_size", [8, 6])
def test_single_run_data_parallel_over_4_devices(idx_dir, tmp_path, batch_size):
    # Batch 8 split 4 ways (each device differentiates its 2 examples, one all-reduce sums them):
    # equal up to float32 reduction order (rtol 1e-5), training and test metrics alike (the test
    # batches of 20 are split too). Batch 6 does not divide: every device takes the whole batch.
    overrides = dict(num_train_steps=8, batch_size=batch_size, eval_every_steps=4)
    four = _run_on(4, tmp_path / "four", idx_dir, **overrides)
    one_result = loop.train_and_evaluate(tiny_config(idx_dir, **overrides), tmp_path / "one")
    _assert_close(four, _params_here(one_result))
    rows = metrics.read_rows(tmp_path / "four" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [4, 8]
    for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "grad_norm"):
        assert rows[-1][k] == pytest.approx(one_result.last_row[k], rel=1e-5), k


def test_cpu_device_count_divides_the_batch():
    assert parallel.cpu_device_count(0, share=32, cores=2) == 2
    assert parallel.cpu_device_count(0, share=32, cores=3) == 2  # 3 does not divide 32
    assert parallel.cpu_device_count(0, share=6, cores=4) == 3
    assert parallel.cpu_device_count(0, share=7, cores=2) == 1
    assert parallel.cpu_device_count(0, share=32, cores=1) == 1
    assert parallel.cpu_device_count(5, share=32, cores=2) == 5  # asked for: as given


def test_cpu_devices_leave_a_count_set_by_the_user(monkeypatch):
    # Returns before touching JAX's config (which would raise here: JAX is running already).
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert parallel.use_cpu_devices(0, 32) is None
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "3")
    assert parallel.use_cpu_devices(2, 32) is None


@pytest.mark.parametrize("first,second", [(4, 1), (1, 2)])
def test_checkpoint_restores_on_another_device_count(idx_dir, tmp_path, first, second):
    straight = _params_here(
        loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=12, sweep="seed=0,1,2,3"), tmp_path / "s")
    )
    work = tmp_path / "w"
    if first == 1:
        loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=6, sweep="seed=0,1,2,3"), work)
    else:
        _run_on(first, work, idx_dir, num_train_steps=6, sweep="seed=0,1,2,3")
    if second == 1:
        resumed = _params_here(
            loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=12, sweep="seed=0,1,2,3"), work)
        )
    else:
        resumed = _run_on(second, work, idx_dir, num_train_steps=12, sweep="seed=0,1,2,3")
    _assert_close(straight, resumed)  # device counts differ: float32 tolerance


def _start_two(cmd: list[str]) -> list[subprocess.Popen]:
    """Starts `cmd` as processes 0 and 1 of a jax.distributed job on localhost, each in a session of
    its own (so that killing one kills all of it, as a dead host would)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=dict(
            os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
        for i in range(2)
    ]  # fmt: skip


def _two_processes(cmd: list[str]) -> tuple[list[subprocess.Popen], list[tuple[str, str]]]:
    """Runs `cmd` as processes 0 and 1 of a jax.distributed job on localhost; waits for both."""
    procs = _start_two(cmd)
    return procs, [p.communicate(timeout=300) for p in procs]


def test_two_processes_on_localhost(idx_dir, tmp_path):
    """Multi-host: two processes joined by jax.distributed (CPU, gloo), the sweep's
    runs sharded across them; only process 0 writes metrics."""
    work = tmp_path / "two"
    procs, outs = _two_processes(
        [sys.executable, "-m", "tests.multidevice_run", str(work), str(idx_dir), json.dumps(SWEEP)]
    )
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        info = json.loads(out.strip().splitlines()[-1])
        assert (info["processes"], info["devices"], info["step"]) == (2, 2, 8)
    params = np.load(work / "params.npz")
    one = _params_here(loop.train_and_evaluate(tiny_config(idx_dir, **SWEEP), tmp_path / "one"))
    _assert_close({k: params[k] for k in params.files}, one)
    rows = [r["step"] for r in metrics.read_rows(work / "runs" / "000_seed=0" / "metrics.jsonl")]
    assert rows == [5, 8]  # written once, by process 0


def test_two_processes_from_the_command_line(idx_dir, tmp_path):
    """The README's two-process command: each process joins jax.distributed before anything
    starts JAX (and splits its own CPU into devices), the batch is split over all of them."""
    cmd = [
        sys.executable, "-m", "experiments.pixel_mnist", f"--workdir={tmp_path}", f"--config.data_dir={idx_dir}",
        "--cpu_devices=2", "--config.hidden_size=4", "--config.batch_size=4", "--config.num_train_steps=4",
        "--config.eval_every_steps=2", "--config.eval_batch_size=20", "--config.progress_bar=False",
    ]  # fmt: skip
    procs, outs = _two_processes(cmd)
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "done: step 4" in out
        assert "4 device(s), 2 process(es)" in err
    assert [r["step"] for r in metrics.read_rows(tmp_path / "metrics.jsonl")] == [2, 4]  # written once


# ----------------------------------------------------------------------------- a dead host

DEAD_HOST_STEPS = 300


def _dead_host_cmd(workdir: Path, idx_dir) -> list[str]:
    return [
        sys.executable, "-m", "experiments.pixel_mnist", f"--workdir={workdir}", f"--config.data_dir={idx_dir}",
        "--cpu_devices=1", "--config.hidden_size=4", "--config.batch_size=4", "--config.eval_batch_size=20",
        f"--config.num_train_steps={DEAD_HOST_STEPS}", "--config.eval_every_steps=20",
        "--config.checkpoint_every_steps=20", "--config.steps_per_call=2", "--config.progress_bar=False",
    ]  # fmt: skip


def _rows_without_timing(workdir: Path) -> list[dict]:
    timing = ("steps_per_second", "elapsed_seconds")
    return [{k: v for k, v in r.items() if k not in timing} for r in metrics.read_rows(workdir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def uninterrupted_two_process_rows(idx_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted")
    procs, outs = _two_processes(_dead_host_cmd(work, idx_dir))
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    rows = _rows_without_timing(work)
    assert [r["step"] for r in rows] == list(range(20, DEAD_HOST_STEPS + 1, 20))
    return rows


@pytest.mark.parametrize(
    "victim,launched_pid_only",
    [(1, False), (0, False), (1, True)],
    ids=["worker_dies", "coordinator_dies", "worker_launched_pid_killed"],
)
def test_a_dead_process_stops_the_other_with_exit_75_and_the_restart_resumes_bit_for_bit(
    idx_dir, tmp_path, victim, launched_pid_only, uninterrupted_two_process_rows
):
    """One of two processes is SIGKILLed once a checkpoint is complete: with everything it started, as
    when its host dies, or only the pid the command launched (the supervisor; a user's kill -9, a
    launcher, the OOM killer), whose training child must then die with it rather than train on as an
    orphan that keeps its peer alive. The survivor stops within 30 s (default timeouts), with exit
    status 75 (what the sbatch script requeues), one line that names the lost process, and no stack
    trace. The same command then resumes from the last complete checkpoint and ends with the
    uninterrupted run's metric rows, bit for bit."""
    import signal
    import time

    work = tmp_path / "run"
    procs = _start_two(_dead_host_cmd(work, idx_dir))
    deadline = time.monotonic() + 240
    while not any(p.name.isdigit() for p in (work / "checkpoints").glob("*")):
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-3000:] for p in procs]
        assert time.monotonic() < deadline, "no complete checkpoint after 240 s"
        time.sleep(0.02)
    assert all(p.poll() is None for p in procs), "the run ended before the kill: lengthen it"
    if launched_pid_only:
        os.kill(procs[victim].pid, signal.SIGKILL)
    else:
        os.killpg(procs[victim].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = procs[1 - victim]
    _, err = survivor.communicate(timeout=120)
    took = time.monotonic() - killed_at
    procs[victim].communicate()
    if launched_pid_only:  # nothing of the victim's process group is left running
        time.sleep(1)
        with pytest.raises(ProcessLookupError):
            os.killpg(procs[victim].pid, 0)

    assert survivor.returncode == 75, err[-3000:]
    assert took < 30, f"the survivor took {took:.0f} s to stop"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert ("process 1" if victim == 1 else "process 0") in errors[0]
    assert "exit status 75" in errors[0]
    for sign_of_a_crash in ("Traceback", "Fatal Python error", "*** ", "Aborted", "core dumped"):
        assert sign_of_a_crash not in err, err[-3000:]

    procs, outs = _two_processes(_dead_host_cmd(work, idx_dir))
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "resumed from step" in outs[0][1]
    assert _rows_without_timing(work) == uninterrupted_two_process_rows
