import json
import os
import signal

import jax
import numpy as np
import pytest

from irnn_jax import checkpoint, loop, metrics, train
from tests.conftest import SigtermAfterFirstRow, read_rows, tiny_config


def _files(path):
    """Every file and its modification time, but the lock, which each attempt takes."""
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*") if p.name != ".lock")


@pytest.mark.slow
def test_signal_then_resume_is_bit_identical_to_straight(idx_dir, tmp_path):
    # Evaluations every 5 steps; SIGTERM arrives from outside after the first one, at a step the run
    # does not choose. The resumed run must carry the training-metric sums since the last evaluation
    # through the checkpoint.
    config = tiny_config(idx_dir, num_train_steps=120, eval_every_steps=5, checkpoint_every_steps=50)
    straight = loop.train_and_evaluate(config, tmp_path / "a")
    with SigtermAfterFirstRow(tmp_path / "b" / "metrics.jsonl") as sigterm:
        first = loop.train_and_evaluate(config, tmp_path / "b")
    assert sigterm.sent.is_set() and first.stopped_by_signal and 5 <= first.step < 120
    resumed = loop.train_and_evaluate(config, tmp_path / "b")
    assert resumed.step == 120 and not resumed.stopped_by_signal
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, resumed.state.params)
    jax.tree.map(np.testing.assert_array_equal, straight.state.opt_state, resumed.state.opt_state)
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")


@pytest.mark.slow
def test_a_finished_run_can_be_extended(idx_dir, tmp_path):
    straight = loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=20), tmp_path / "a")
    loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=7), tmp_path / "b")
    extended = loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=20), tmp_path / "b")
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, extended.state.params)
    # The short run's last step (7) was evaluated; every other row is the same.
    steps = [r["step"] for r in metrics.read_rows(tmp_path / "b" / "metrics.jsonl")]
    assert steps == [5, 7, 10, 15, 20]


@pytest.mark.slow
def test_other_model_is_refused_and_nothing_is_touched(idx_dir, tmp_path):
    loop.train_and_evaluate(tiny_config(idx_dir), tmp_path)
    before = _files(tmp_path)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"hidden_size: checkpoint has 8, this run has 16"):
        loop.train_and_evaluate(tiny_config(idx_dir, hidden_size=16), tmp_path)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"learning_rate"):
        loop.train_and_evaluate(tiny_config(idx_dir, learning_rate=1e-3), tmp_path)
    assert _files(tmp_path) == before


@pytest.mark.slow
def test_checkpoint_without_config_is_refused(idx_dir, tmp_path):
    c = tiny_config(idx_dir)
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    state = train.create_state(c)
    ckpt.save(3, state, {"something": "else"})
    ckpt.close()
    with pytest.raises(checkpoint.CheckpointMismatchError, match="no config in its meta item"):
        loop.train_and_evaluate(c, tmp_path)


def test_param_shapes_guard(idx_dir, tmp_path):
    c = tiny_config(idx_dir)
    ckpt = checkpoint.Checkpointer(tmp_path)
    state = train.create_state(c)
    shapes = checkpoint.param_shapes(state.params)
    assert shapes["rnn/recurrent_kernel"] == [8, 8]
    ckpt.save(1, state, {"config": c.to_dict(), "param_shapes": {**shapes, "rnn/kernel": [2, 8]}})
    ckpt.wait()
    with pytest.raises(checkpoint.CheckpointMismatchError, match="different model"):
        ckpt.restore_compatible(jax.eval_shape(lambda: state), c.to_dict(), shapes)
    ckpt.close()


def test_resumable_fields_may_change(idx_dir):
    c = tiny_config(idx_dir).to_dict()
    assert checkpoint.config_differences(c, {**c, "num_train_steps": 99, "eval_every_steps": 3}) == {}
    assert checkpoint.config_differences(c, {**c, "seed": 1}) == {"seed": (0, 1)}
    assert checkpoint.config_differences({**c, "head_sizes": [30]}, {**c, "head_sizes": (30,)}) == {}
    # How the gradient is computed, not what it is: a run resumes with other row chunks or unrolling.
    assert checkpoint.config_differences(c, {**c, "grad_chunk_rows": 0, "unroll": 8}) == {}
    assert checkpoint.config_differences(c, {**c, "lr_step_factor": 0.3}) == {"lr_step_factor": (0.1, 0.3)}


def test_stop_on_signal_sets_a_flag_then_restores_the_handler():
    previous = signal.getsignal(signal.SIGTERM)
    with checkpoint.StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous


# ------------------------------------------------------- damaged checkpoints


def _damage_arrays(step_dir, damage):
    """Damages every array data file of a checkpoint's state (OCDBT keeps them in `d/` folders;
    which copy a restore reads depends on the layout, so all of them)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        damage(path)


def _flip_bytes(path, count=64):
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    for i in range(middle, min(middle + count, len(raw))):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate(path, size=100):
    path.write_bytes(path.read_bytes()[:size])


def _steps(directory):
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_flip_bytes, _truncate], ids=["flipped", "truncated"])
def test_damaged_newest_checkpoint_is_set_aside_and_the_run_goes_on_from_the_one_before(
    idx_dir, tmp_path, damage, caplog
):
    config = tiny_config(idx_dir)  # checkpoints at 4, 8, 12; evaluations at 5, 10, 12
    straight = loop.train_and_evaluate(config, tmp_path / "a")
    loop.train_and_evaluate(config, tmp_path / "b")
    _damage_arrays(tmp_path / "b" / "checkpoints" / "12", damage)
    resumed = loop.train_and_evaluate(config, tmp_path / "b")
    assert "checkpoint 12" in caplog.text and "unusable" in caplog.text
    assert _steps(tmp_path / "b" / "checkpoints") == [4, 8, 12]  # 12 trained again from 8, saved anew
    assert [p.name.split("-")[0] for p in (tmp_path / "b" / "checkpoints_bad").iterdir()] == ["12"]
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, resumed.state.params)
    jax.tree.map(np.testing.assert_array_equal, straight.state.opt_state, resumed.state.opt_state)
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")


@pytest.mark.slow
def test_a_checkpoint_that_reads_but_does_not_match_its_checksum_is_set_aside(idx_dir, tmp_path, caplog):
    """Damage that still decodes (here: the recorded checksum no longer fits the bytes) is caught by
    the checksum, not by a read error: the flipped and truncated array files above fail to decode."""
    config = tiny_config(idx_dir)
    straight = loop.train_and_evaluate(config, tmp_path / "a")
    loop.train_and_evaluate(config, tmp_path / "b")
    meta_file = tmp_path / "b" / "checkpoints" / "12" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["state_sha256"] = meta["state_sha256"][::-1]
    meta_file.write_text(json.dumps(meta))
    resumed = loop.train_and_evaluate(config, tmp_path / "b")
    assert "checkpoint 12" in caplog.text and "do not match the checksum" in caplog.text
    assert [p.name.split("-")[0] for p in (tmp_path / "b" / "checkpoints_bad").iterdir()] == ["12"]
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, resumed.state.params)
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")


@pytest.mark.slow
def test_no_good_checkpoint_left_stops_with_an_error_and_does_not_start_over(idx_dir, tmp_path):
    config = tiny_config(idx_dir)
    loop.train_and_evaluate(config, tmp_path)
    for step in (4, 8, 12):
        _damage_arrays(tmp_path / "checkpoints" / str(step), _truncate)
    rows = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(checkpoint.CheckpointCorruptError, match="no usable checkpoint.*checkpoints_bad"):
        loop.train_and_evaluate(config, tmp_path)
    assert len(list((tmp_path / "checkpoints_bad").iterdir())) == 3
    with pytest.raises(checkpoint.CheckpointCorruptError):  # and not on the next attempt either
        loop.train_and_evaluate(config, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == rows


def _with_one_element_changed(state, k):
    """`state` with the first element of leaf k changed (the next float up; an integer + 1)."""
    leaves, treedef = jax.tree.flatten(jax.tree.map(np.array, state))
    leaf = leaves[k].reshape(-1)
    if np.issubdtype(leaf.dtype, np.floating):
        leaf[0] = np.nextafter(leaf[0], np.inf, dtype=leaf.dtype)
    else:
        leaf[0] += 1
    return jax.tree.unflatten(treedef, leaves)


def test_checksum_is_over_every_leaf(idx_dir):
    """A change of one element in any leaf (parameters, optimiser state, step, metric sums) changes
    the checksum, and each leaf's change gives a sum of its own."""
    state = train.create_state(tiny_config(idx_dir))
    n = len(jax.tree.leaves(state))
    assert n >= 8  # params, the optimiser's moments and hyperparameters, step, sums
    sums = {checkpoint.state_checksum(state)} | {
        checkpoint.state_checksum(_with_one_element_changed(state, k)) for k in range(n)
    }
    assert len(sums) == n + 1


def test_checksum_sees_the_layout_not_only_the_bytes(idx_dir):
    """The same bytes in another shape or dtype are another state."""
    state = train.create_state(tiny_config(idx_dir))
    kernel = state.params["rnn"]["recurrent_kernel"]
    reshaped = state.replace(
        params={**state.params, "rnn": {**state.params["rnn"], "recurrent_kernel": kernel.reshape(-1)}}
    )
    as_ints = state.replace(
        params={**state.params, "rnn": {**state.params["rnn"], "recurrent_kernel": kernel.view(np.int32)}}
    )
    one = checkpoint.state_checksum(state)
    assert len({one, checkpoint.state_checksum(reshaped), checkpoint.state_checksum(as_ints)}) == 3


# -------------------------------------------------------------- torn files


@pytest.mark.slow
def test_torn_last_metrics_line_is_dropped_and_the_run_resumes(idx_dir, tmp_path, caplog):
    straight = loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=20), tmp_path / "a")
    loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=12), tmp_path / "b")
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"step": 30')  # a write cut short by a kill
    extended = loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=20), tmp_path / "b")
    assert "torn last line" in caplog.text
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, extended.state.params)
    assert [r["step"] for r in read_rows(tmp_path / "b")] == [5, 10, 12, 15, 20]


def test_unreadable_line_before_the_last_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(metrics.MetricsFileError, match="line 2"):
        metrics.read_rows(tmp_path / "metrics.jsonl")


@pytest.mark.slow
def test_torn_run_json_is_set_aside_and_the_run_resumes(idx_dir, tmp_path, caplog):
    loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=8), tmp_path)
    (tmp_path / "run.json").write_text('{"sessions": [{"command": "python -m')
    loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=12), tmp_path)
    assert "run.json is unreadable" in caplog.text
    info = json.loads((tmp_path / "run.json").read_text())
    assert len(info["sessions"]) == 1 and info["preset"] == "keras"
    assert len(list(tmp_path.glob("run.json.unreadable-*"))) == 1


# --------------------------------------------------- time-based checkpoints


@pytest.mark.slow
def test_checkpoint_every_seconds_saves_more_often_and_changes_no_number(idx_dir, tmp_path):
    by_steps = loop.train_and_evaluate(tiny_config(idx_dir, steps_per_call=2), tmp_path / "steps")
    timed_config = tiny_config(idx_dir, steps_per_call=2, checkpoint_every_seconds=1e-6)  # after every call
    timed = loop.train_and_evaluate(timed_config, tmp_path / "timed")
    assert _steps(tmp_path / "steps" / "checkpoints") == [4, 8, 12]
    assert _steps(tmp_path / "timed" / "checkpoints") == [8, 10, 12]  # every call's end, 3 kept
    jax.tree.map(np.testing.assert_array_equal, by_steps.state.params, timed.state.params)
    assert read_rows(tmp_path / "steps") == read_rows(tmp_path / "timed")


# --------------------------------------------- checkpoints of older versions


def _as_older_version(workdir, drop_fields):
    """Rewrites every checkpoint's meta as a version-1 irnn-jax wrote it: no config version, no
    checksum or state layout, and a config without `drop_fields`."""
    for meta_file in (workdir / "checkpoints").glob("*/meta/metadata"):
        meta = json.loads(meta_file.read_text())
        for key in ("config_version", "state_sha256", "state_structure"):
            meta.pop(key)
        for field in drop_fields:
            meta["config"].pop(field)
        meta_file.write_text(json.dumps(meta))


@pytest.mark.slow
def test_checkpoint_from_before_a_field_existed_resumes_with_its_default(idx_dir, tmp_path, caplog):
    straight = loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=20), tmp_path / "a")
    loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=12), tmp_path / "b")
    # Every added field this experiment's config has (a field of another experiment, such as
    # row_mnist's earlier_passes, is not in a pixel checkpoint to begin with).
    added = [field for field in checkpoint.ADDED_FIELDS if field in tiny_config(idx_dir)]
    assert len(added) >= 4, added
    _as_older_version(tmp_path / "b", added)
    extended = loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=20), tmp_path / "b")
    assert "predates checksums" in caplog.text
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, extended.state.params)


@pytest.mark.slow
def test_checkpoint_from_before_a_field_existed_is_refused_when_the_run_needs_another_value(idx_dir, tmp_path):
    loop.train_and_evaluate(tiny_config(idx_dir), tmp_path)
    _as_older_version(tmp_path, ["input_std"])
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"input_std: checkpoint has 1.0 \(not in the"):
        loop.train_and_evaluate(tiny_config(idx_dir, input_std=0.5), tmp_path)


@pytest.mark.slow
def test_checkpoint_without_a_field_of_unknown_default_is_refused(idx_dir, tmp_path):
    loop.train_and_evaluate(tiny_config(idx_dir), tmp_path)
    _as_older_version(tmp_path, ["shuffle"])
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"older version.*\['shuffle'\]"):
        loop.train_and_evaluate(tiny_config(idx_dir), tmp_path)


@pytest.mark.slow
def test_a_schedule_makes_the_run_length_part_of_the_config(idx_dir, tmp_path):
    loop.train_and_evaluate(tiny_config(idx_dir, lr_schedule="cosine", num_train_steps=8), tmp_path)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="num_train_steps"):
        loop.train_and_evaluate(tiny_config(idx_dir, lr_schedule="cosine", num_train_steps=12), tmp_path)
