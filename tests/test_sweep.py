"""Sweeps: many runs in one jitted step, each equal to the same config run alone."""

import json

import jax
import numpy as np
import pytest

from experiments.configs import pixel_mnist
from irnn_jax import config_check, loop, metrics, sweep, train
from tests.conftest import SigtermAfterFirstRow, read_rows, tiny_config, train_steps, write_idx_dir

SPEC = "seed=0,1 learning_rate=1e-4,1e-3 clip_norm=1,0"


def test_parse_and_expand(idx_dir):
    assert sweep.parse("seed=0,1 learning_rate=1e-6,1e-5") == {"seed": [0, 1], "learning_rate": [1e-6, 1e-5]}
    runs = sweep.expand(tiny_config(idx_dir, sweep="recurrent_gain=1,0.5 seed=3,4"))
    assert [n for n, _ in runs] == [
        "000_recurrent_gain=1_seed=3", "001_recurrent_gain=1_seed=4",
        "002_recurrent_gain=0.5_seed=3", "003_recurrent_gain=0.5_seed=4",
    ]  # fmt: skip
    assert [(c.recurrent_gain, c.seed, c.sweep) for _, c in runs][2] == (0.5, 3, "")


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec,message",
    [("hidden_size=4,8", "not sweepable"), ("seed", "not FIELD="), ("seed=a", "seed"), ("seed=1 seed=2", "twice")],
)
def test_bad_specs_are_refused(idx_dir, spec, message, tmp_path):
    with pytest.raises(config_check.ConfigError, match=message):
        loop.train_and_evaluate(tiny_config(idx_dir, sweep=spec), tmp_path)


@pytest.mark.slow
def test_each_run_of_a_sweep_equals_the_run_alone_to_float32_rounding(idx_dir, tmp_path):
    # recurrent_gain too, through the initial values. On accelerators a sweep is vmapped, which turns
    # the step's matmuls into batched ones that may sum in another order: equal to float32 rounding,
    # not bit for bit. The recurrence is the presets' ("fused"); both recurrences meet the sweep at
    # the real size in the next test.
    config = tiny_config(idx_dir, num_train_steps=9, sweep=SPEC + " recurrent_gain=1,0.8", recurrence="fused")
    result = loop.train_and_evaluate(config, tmp_path / "sweep")
    runs = sweep.expand(config)
    assert result.run_names == [n for n, _ in runs] and len(runs) == 16
    for k in (0, 5, 10, 15):
        name, run_config = runs[k]
        alone = loop.train_and_evaluate(run_config, tmp_path / f"alone{k}")
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)  # noqa: E731
        jax.tree.map(close, sweep.unstack(result.state.params, k), alone.state.params)
        alone_rows = read_rows(tmp_path / f"alone{k}")
        assert read_rows(tmp_path / "sweep" / "runs" / name) == [pytest.approx(row, rel=1e-5) for row in alone_rows]
    lrs = np.asarray(result.state.opt_state.hyperparams["learning_rate"])
    np.testing.assert_allclose(lrs, [c.learning_rate for _, c in runs])


def test_a_sweep_of_one_run_trains_as_the_run_alone(idx_dir, tmp_path):
    """`--config.sweep=learning_rate=1e-5`: one more value for a grid already run, in a workdir of its own."""
    config = tiny_config(idx_dir, num_train_steps=4, eval_every_steps=2, sweep="learning_rate=3e-3")
    loop.train_and_evaluate(config, tmp_path / "sweep")
    ((name, alone_config),) = sweep.expand(config)
    loop.train_and_evaluate(alone_config, tmp_path / "alone")
    alone_rows = read_rows(tmp_path / "alone")
    assert [r["step"] for r in alone_rows] == [2, 4]
    assert read_rows(tmp_path / "sweep" / "runs" / name) == [pytest.approx(row, rel=1e-5) for row in alone_rows]


@pytest.mark.slow
@pytest.mark.parametrize("recurrence", ["scan", "fused"])
def test_sweep_against_alone_at_the_real_size(tmp_path, recurrence):
    """The README's statement, checked at the pixel preset's size (100 units, batch 32, 784 steps, one
    CPU device): run 3 of a 4-run sweep is bit-identical to the same run alone after 5 steps. On CPU a
    sweep steps its runs one after the other (`sweep.over_runs`), each as a single run computes it;
    the vmapped form it replaced was 1.5e-11 apart after one step (batched matmuls sum in another
    order), a difference the IRNN's dynamics amplify over hundreds of steps."""
    c = pixel_mnist.get_config("keras")
    c.data_dir = str(write_idx_dir(tmp_path / "idx", 256, 32))
    c.recurrence, c.steps_per_call = recurrence, 1
    c.sweep = "seed=0,1 learning_rate=1e-4,3e-5"
    _, swept = train_steps(c, 5)
    _, alone = train_steps(sweep.expand(c)[3][1], 5)
    member = sweep.unstack(swept.params, 3)
    assert not np.array_equal(member["rnn"]["kernel"], sweep.unstack(swept.params, 0)["rnn"]["kernel"])  # runs differ
    jax.tree.map(np.testing.assert_array_equal, member, alone.params)


@pytest.mark.slow
def test_sweep_resumes_exactly_from_one_checkpoint(idx_dir, tmp_path):
    config = tiny_config(idx_dir, num_train_steps=60, sweep="seed=0,1,2")
    straight = loop.train_and_evaluate(config, tmp_path / "a")
    first_run = tmp_path / "b" / "runs" / straight.run_names[0]
    with SigtermAfterFirstRow(first_run / "metrics.jsonl") as sigterm:
        first = loop.train_and_evaluate(config, tmp_path / "b")
    assert sigterm.sent.is_set() and first.stopped_by_signal and first.step < 60
    resumed = loop.train_and_evaluate(config, tmp_path / "b")
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, resumed.state.params)
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir() if p.name.isdigit()]
    for name in straight.run_names:
        assert read_rows(tmp_path / "a" / "runs" / name) == read_rows(tmp_path / "b" / "runs" / name)


@pytest.mark.slow
def test_a_diverging_run_is_frozen_and_the_others_go_on(idx_dir, tmp_path):
    """The diverged run stays frozen across later evaluations (which reset the metric sums): after 15
    steps its parameters and step counter are those it had at the first evaluation, step 5."""
    config = lambda steps: tiny_config(  # noqa: E731
        idx_dir, optimizer="sgd", clip_norm=0.0, num_train_steps=steps, sweep="learning_rate=1e-4,1e6"
    )
    early = loop.train_and_evaluate(config(5), tmp_path / "early")
    result = loop.train_and_evaluate(config(15), tmp_path / "late")
    good, bad = result.run_names
    good_rows = metrics.read_rows(tmp_path / "late" / "runs" / good / "metrics.jsonl")
    bad_rows = metrics.read_rows(tmp_path / "late" / "runs" / bad / "metrics.jsonl")
    assert not any(r.get("diverged") for r in good_rows) and good_rows[-1]["step"] == 15
    assert [r["step"] for r in bad_rows] == [5, 10, 15] and all(r["diverged"] for r in bad_rows)
    steps, early_steps = np.asarray(result.state.step), np.asarray(early.state.step)
    assert steps[0] == 15 and steps[1] == early_steps[1] < 5  # the frozen run's step counter stopped
    frozen = jax.tree.map(lambda x: np.asarray(x)[1], (result.state.params, result.state.opt_state))
    at_five = jax.tree.map(lambda x: np.asarray(x)[1], (early.state.params, early.state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, frozen, at_five)


@pytest.mark.slow
def test_a_sweep_whose_every_run_diverged_stops_there_with_their_rows(idx_dir, tmp_path):
    """Nothing is left to train: the loop evaluates once more (each row marked diverged), saves, and
    stops with the reason instead of running frozen states to the end."""
    config = tiny_config(
        idx_dir, optimizer="sgd", clip_norm=0.0, recurrent_gain=1.0, num_train_steps=400, eval_every_steps=100,
        checkpoint_every_steps=1000, steps_per_call=1, sweep="learning_rate=1e6,3e6",
    )  # fmt: skip
    with pytest.raises(train.DivergenceError, match="every run of the sweep has diverged") as e:
        loop.train_and_evaluate(config, tmp_path)
    (session,) = json.loads((tmp_path / "run.json").read_text())["sessions"]
    last = session["end_step"]
    assert 0 < last < 100 and session["outcome"] == f"diverged at step {last}: every run"  # the page marks it
    assert f"the last by step {last}" in str(e.value)
    assert [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == [last]
    for name, _ in sweep.expand(config):
        rows = read_rows(tmp_path / "runs" / name)
        assert [r["step"] for r in rows] == [last] and rows[-1]["diverged"]
