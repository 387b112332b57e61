"""Carrying a run to another machine: the mirror folder (`--mirror`)."""

import json
import shutil

import jax
import numpy as np

from irnn_jax import loop, mirror
from tests.conftest import read_rows, restore_final_state, tiny_config


def _config(idx_dir, steps):
    return tiny_config(idx_dir, num_train_steps=steps, learning_rate=1e-4, checkpoint_every_steps=4)


def test_a_run_carried_through_its_mirror_to_a_fresh_workdir_equals_a_straight_run(tmp_path, idx_dir):
    straight = tmp_path / "straight"
    loop.train_and_evaluate(_config(idx_dir, 12), straight)

    carried = tmp_path / "mirror"
    loop.train_and_evaluate(_config(idx_dir, 7), tmp_path / "machine_a", mirror=carried)
    # The mirror holds the logs and only the newest checkpoint: the one at step 7, the run's end.
    assert sorted(p.name for p in (carried / mirror.CHECKPOINT).iterdir()) == ["7"]
    assert (carried / "metrics.jsonl").is_file() and (carried / "run.json").is_file()
    assert not list(carried.rglob("*.tmp")) and not list(carried.rglob("events.out.*"))

    shutil.rmtree(tmp_path / "machine_a")  # the first machine is gone
    result = loop.train_and_evaluate(_config(idx_dir, 12), tmp_path / "machine_b", mirror=carried)
    assert result.step == 12

    a = restore_final_state(straight, _config(idx_dir, 12), 12)
    b = restore_final_state(tmp_path / "machine_b", _config(idx_dir, 12), 12)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)
    # The 7-step session evaluated at its own last step; the test metrics agree everywhere.
    carried_rows, straight_rows = read_rows(tmp_path / "machine_b"), {r["step"]: r for r in read_rows(straight)}
    assert [r["step"] for r in carried_rows] == [5, 7, 10, 12]
    for r in carried_rows:
        if r["step"] in straight_rows:
            assert r["test_loss"] == straight_rows[r["step"]]["test_loss"]
    sessions = json.loads((carried / "run.json").read_text())["sessions"]
    assert [(s["start_step"], s["end_step"]) for s in sessions] == [(0, 7), (7, 12)]
    assert sorted(p.name for p in (carried / mirror.CHECKPOINT).iterdir()) == ["12"]


def test_pull_takes_the_newer_checkpoint_only(tmp_path, idx_dir):
    work, carried = tmp_path / "w", tmp_path / "mirror"
    assert mirror.pull(carried, work) is None  # no mirror yet: nothing to take, no error
    loop.train_and_evaluate(_config(idx_dir, 8), work, mirror=carried)
    assert mirror.pull(carried, work) is None  # the workdir is as new as the mirror
    older = tmp_path / "older"
    loop.train_and_evaluate(_config(idx_dir, 4), older)
    assert mirror.pull(carried, older) == 8
    assert max(int(p.name) for p in (older / "checkpoints").iterdir() if p.name.isdigit()) == 8
    assert read_rows(older) == read_rows(work)  # the logs came with it
