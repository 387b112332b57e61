"""The resume guarantee with a real process: SIGTERM at an arbitrary step."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from irnn_jax import checkpoint, metrics
from tests.conftest import ROOT, read_rows, restore_final_state, tiny_config

pytestmark = pytest.mark.slow  # a real command-line run, signalled and resumed

STEPS = 1500
FLAGS = [
    "--config.hidden_size=8",
    "--config.batch_size=4",
    "--config.eval_batch_size=20",
    f"--config.num_train_steps={STEPS}",
    "--config.eval_every_steps=200",
    "--config.checkpoint_every_steps=500",
    "--config.steps_per_call=7",
    "--config.progress_bar=False",
    "--config.learning_rate=1e-4",
]


def _start(workdir, data_dir):
    cmd = [
        sys.executable,
        "-m",
        "experiments.pixel_mnist",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        *FLAGS,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final_params(workdir, data_dir):
    c = tiny_config(data_dir, hidden_size=8, batch_size=4, learning_rate=1e-4, num_train_steps=STEPS)
    return restore_final_state(workdir, c, STEPS)


def test_sigterm_then_resume_equals_straight_run(idx_dir, tmp_path):
    straight = _start(tmp_path / "straight", idx_dir)

    # Interrupted run: SIGTERM once the first evaluation row exists, i.e. at
    # some step after 200 that no interval lines up with.
    work = tmp_path / "interrupted"
    proc = _start(work, idx_dir)
    deadline = time.monotonic() + 120
    while not metrics.read_rows(work / "metrics.jsonl"):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped by signal" in out
    ckpt = checkpoint.Checkpointer(work / "checkpoints")
    stopped_at = ckpt.latest_step()
    ckpt.close()
    assert 200 <= stopped_at < STEPS
    assert not list((work / "checkpoints").glob("*.orbax-checkpoint-tmp*"))  # the save completed

    resumed = _start(work, idx_dir)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out

    a, b = _final_params(tmp_path / "straight", idx_dir), _final_params(work, idx_dir)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)
    rows = read_rows(work)
    assert [r["step"] for r in rows] == list(range(200, STEPS + 1, 200)) + [STEPS]
    assert rows == read_rows(tmp_path / "straight")
    print("stopped at", stopped_at, os.linesep)
