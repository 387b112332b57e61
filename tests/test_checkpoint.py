import os
import signal

import jax
import numpy as np
import pytest

from irnn_jax import checkpoint, metrics, train
from tests.conftest import tiny_config


def _files(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def _assert_same_rows(a, b):
    strip = lambda rows: [{k: v for k, v in r.items() if k not in metrics.TIMING_FIELDS} for r in rows]  # noqa: E731
    assert strip(metrics.read_rows(a)) == strip(metrics.read_rows(b))


def test_signal_then_resume_is_bit_identical_to_straight(idx_dir, tmp_path, monkeypatch):
    # Eval at 5, 10, ...; SIGTERM arrives at step 6: the resumed run must carry
    # the training-metric sums of steps 6..8 through the checkpoint.
    straight = train.train_and_evaluate(tiny_config(idx_dir, num_train_steps=30), tmp_path / "a")
    batch_indices = train.data_lib.batch_indices

    def batch_indices_then_signal(step, *args):
        if step == 6:  # while the host prepares the chunk that holds step 6
            os.kill(os.getpid(), signal.SIGTERM)
        return batch_indices(step, *args)

    monkeypatch.setattr(train.data_lib, "batch_indices", batch_indices_then_signal)
    first = train.train_and_evaluate(tiny_config(idx_dir, num_train_steps=30), tmp_path / "b")
    # The chunk after step 6 ends at the checkpoint step 8 (steps_per_call 3, checkpoints every 4).
    assert first.stopped_by_signal and first.step == 8
    monkeypatch.setattr(train.data_lib, "batch_indices", batch_indices)
    resumed = train.train_and_evaluate(tiny_config(idx_dir, num_train_steps=30), tmp_path / "b")
    assert resumed.step == 30 and not resumed.stopped_by_signal
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, resumed.state.params)
    jax.tree.map(np.testing.assert_array_equal, straight.state.opt_state, resumed.state.opt_state)
    _assert_same_rows(tmp_path / "a" / "metrics.jsonl", tmp_path / "b" / "metrics.jsonl")


def test_a_finished_run_can_be_extended(idx_dir, tmp_path):
    straight = train.train_and_evaluate(tiny_config(idx_dir, num_train_steps=20), tmp_path / "a")
    train.train_and_evaluate(tiny_config(idx_dir, num_train_steps=7), tmp_path / "b")
    extended = train.train_and_evaluate(tiny_config(idx_dir, num_train_steps=20), tmp_path / "b")
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, extended.state.params)
    # The short run's last step (7) was evaluated; every other row is the same.
    steps = [r["step"] for r in metrics.read_rows(tmp_path / "b" / "metrics.jsonl")]
    assert steps == [5, 7, 10, 15, 20]


def test_other_model_is_refused_and_nothing_is_touched(idx_dir, tmp_path):
    train.train_and_evaluate(tiny_config(idx_dir), tmp_path)
    before = _files(tmp_path)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"hidden_size: checkpoint has 8, this run has 16"):
        train.train_and_evaluate(tiny_config(idx_dir, hidden_size=16), tmp_path)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"learning_rate"):
        train.train_and_evaluate(tiny_config(idx_dir, learning_rate=1e-3), tmp_path)
    assert _files(tmp_path) == before


def test_checkpoint_without_config_is_refused(idx_dir, tmp_path):
    c = tiny_config(idx_dir)
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    state = train.create_state(c)
    ckpt.save(3, state, {"something": "else"})
    ckpt.close()
    with pytest.raises(checkpoint.CheckpointMismatchError, match="different config"):
        train.train_and_evaluate(c, tmp_path)


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


def test_stop_on_signal_sets_a_flag_then_restores_the_handler():
    previous = signal.getsignal(signal.SIGTERM)
    with checkpoint.StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous
