"""The workdir lock and run.json."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from irnn_jax import workdir
from tests.conftest import ROOT, tiny_config


def test_a_held_workdir_is_refused_naming_its_holder(tmp_path):
    first = workdir.WorkdirLock(tmp_path).acquire()
    try:
        with pytest.raises(workdir.WorkdirBusyError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
            workdir.WorkdirLock(tmp_path).acquire()
    finally:
        first.release()
    workdir.WorkdirLock(tmp_path).acquire().release()  # free again once released


@pytest.mark.slow
def test_the_lock_of_a_killed_process_is_released_by_the_kernel(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from irnn_jax import workdir; "
         "workdir.WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir.WorkdirBusyError, match=f"pid {holder.pid}"):
            workdir.WorkdirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock with the process
        try:
            workdir.WorkdirLock(tmp_path).acquire().release()
            break
        except workdir.WorkdirBusyError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_run_json_gains_one_session_per_record_and_is_replaced_atomically(idx_dir, tmp_path):
    c = tiny_config(idx_dir)
    workdir.record_session(tmp_path, c, command="first")
    workdir.record_session(tmp_path, c, experiment="pixel_mnist", command="second")
    info = json.loads((tmp_path / "run.json").read_text())
    assert [s["command"] for s in info["sessions"]] == ["first", "second"]
    assert info["experiment"] == "pixel_mnist" and info["config"]["hidden_size"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temporary file left


def test_an_unreadable_run_json_is_set_aside(idx_dir, tmp_path):
    (tmp_path / "run.json").write_text('{"sessions": [')
    workdir.record_session(tmp_path, tiny_config(idx_dir), command="after")
    assert [s["command"] for s in json.loads((tmp_path / "run.json").read_text())["sessions"]] == ["after"]
    (aside,) = tmp_path.glob("run.json.unreadable-*")
    assert aside.read_text() == '{"sessions": ['


def test_code_version_names_the_commit_or_nothing(tmp_path):
    assert workdir.code_version(tmp_path) == {}  # not a git checkout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("1")
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert workdir.code_version(tmp_path) == {"git_commit": sha, "git_dirty": False}
    (tmp_path / "f").write_text("2")
    assert workdir.code_version(tmp_path) == {"git_commit": sha, "git_dirty": True}


@pytest.mark.parametrize(
    "dataset,task,want",
    [("mnist", "pixel", "pixel_mnist"), ("mnist", "row", "row_mnist"), ("adding", "adding", "adding")],
)
def test_experiment_of(idx_dir, dataset, task, want):
    c = tiny_config(idx_dir)
    c.dataset, c.task = dataset, task
    assert workdir.experiment_of(c) == want
