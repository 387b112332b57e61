import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import adding
from irnn_jax import adding as adding_task
from irnn_jax import config_check, loop, metrics, native, optim, train
from tests.conftest import make_images, read_rows, tiny_config, train_steps, write_idx_dir


def _keras_rmsprop_numpy(w, grads, lr, rho=0.9, eps=1e-7):
    v = np.zeros_like(w)
    for g in grads:
        v = rho * v + (1 - rho) * g * g
        w = w - lr * g / (np.sqrt(v) + eps)  # eps outside the square root
    return w


def _apply(tx, w, grads):
    params = {"w": jnp.asarray(w)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params["w"])


def test_rmsprop_has_keras_semantics(idx_dir):
    rng = np.random.default_rng(0)
    w = rng.normal(size=5).astype(np.float32)
    grads = [rng.normal(size=5).astype(np.float32) * 1e-4 for _ in range(4)]  # small: eps matters
    c = tiny_config(idx_dir, clip_norm=0.0, learning_rate=1e-2)
    got = _apply(train.make_optimizer(c), w, grads)
    np.testing.assert_allclose(got, _keras_rmsprop_numpy(w, grads, 1e-2), rtol=1e-5)
    # eps inside the square root (optax's default) would differ measurably here.
    inside = optax.rmsprop(1e-2, decay=0.9, eps=1e-7)
    assert not np.allclose(_apply(inside, w, grads), got, rtol=1e-3)


def test_global_norm_clipping_comes_first(idx_dir):
    g = np.array([3.0, 4.0], np.float32)  # norm 5
    c = tiny_config(idx_dir, clip_norm=1.0, learning_rate=1e-2)
    got = _apply(train.make_optimizer(c), np.zeros(2, np.float32), [g, 2 * g])
    want = _keras_rmsprop_numpy(np.zeros(2, np.float32), [g / 5, 2 * g / 10], 1e-2)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_adam_has_keras_semantics(idx_dir):
    rng = np.random.default_rng(1)
    w = rng.normal(size=4).astype(np.float32)
    grads = [rng.normal(size=4).astype(np.float32) * 1e-5 for _ in range(3)]
    c = tiny_config(idx_dir, optimizer="adam", clip_norm=0.0, learning_rate=1e-3)
    m = v = np.zeros_like(w)
    want = w.copy()
    for t, g in enumerate(grads, 1):
        m = m + (g - m) * 0.1
        v = v + (g * g - v) * 0.001
        want = want - 1e-3 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(_apply(train.make_optimizer(c), w, grads), want, rtol=1e-5)


def _batch(n=4, seed=0, mask=None):
    images, labels = make_images(n, seed)
    return {
        "inputs": images,
        "targets": labels.astype(np.int32),
        "mask": np.ones(n, np.float32) if mask is None else np.asarray(mask, np.float32),
    }


def test_train_step_changes_every_parameter(idx_dir):
    c = tiny_config(idx_dir, learning_rate=1e-3)
    before = jax.tree.map(np.asarray, train.create_state(c).params)
    _, state = train_steps(c, 1)
    after = jax.tree_util.tree_flatten_with_path(state.params)[0]
    for (path, b), a in zip(after, jax.tree.leaves(before), strict=True):
        assert not np.array_equal(a, np.asarray(b)), jax.tree_util.keystr(path)
    assert int(state.step) == 1 and float(state.sums["count"]) == 4


def test_masked_examples_do_not_count(idx_dir):
    c = tiny_config(idx_dir, learning_rate=1e-3)
    step_fn = jax.jit(functools.partial(train.train_step, loss_fn=train.make_loss_fn(c)))
    full = _batch(4)
    padded = {k: np.concatenate([v[:2], v[:2][::-1]]) for k, v in full.items() if k != "mask"}
    padded["mask"] = np.array([1, 1, 0, 0], np.float32)
    small = {"inputs": full["inputs"][:2], "targets": full["targets"][:2], "mask": np.ones(2, np.float32)}
    a = step_fn(train.create_state(c), padded)
    b = step_fn(train.create_state(c), small)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9), a.params, b.params)
    assert float(a.sums["count"]) == 2


@pytest.mark.parametrize("recurrence", ["scan", "native"])
def test_gradients_in_row_chunks_are_the_whole_batchs(idx_dir, recurrence):
    """grad_chunk_rows: 10 rows (2 masked) in chunks of 4 (3 chunks, the last padded with 2 masked rows)
    give the whole batch's mean loss, sums and gradients, to float32 rounding."""
    if recurrence == "native" and not native.available():
        pytest.skip(f"no native kernel here: {native.status().reason}")
    c = tiny_config(idx_dir, recurrence=recurrence)
    params = train.create_state(c).params
    batch = jax.tree.map(jnp.asarray, _batch(10, mask=[1] * 6 + [0, 1, 1, 0]))
    apply_fn, loss_fn = train.build_model(c).apply, train.make_loss_fn(c)
    assert train.row_chunks(10, 4) == 3 and train.row_chunks(10, 0) == 1 and train.row_chunks(4, 4) == 1
    assert [train.chunk_size(r, c) for r, c in ((10, 4), (100, 32), (16, 32), (7, 0))] == [4, 25, 16, 7]
    (loss, aux), grads = train.batch_gradients(params, apply_fn, batch, loss_fn)
    (loss4, aux4), grads4 = jax.jit(functools.partial(train.batch_gradients, chunk_rows=4), static_argnums=(1, 3))(
        params, apply_fn, batch, loss_fn
    )
    np.testing.assert_allclose(loss4, loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aux4), np.asarray(aux), rtol=1e-5)
    assert float(aux4[2]) == 8  # the padding counts nowhere
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7), grads4, grads)
    assert float(optax.tree.norm(grads)) > 0


def test_grad_chunk_rows_auto_chunks_the_native_kernels_only(idx_dir):
    c = tiny_config(idx_dir, recurrence="fused")
    assert train.resolve_chunk_rows(c, 1024) == 0  # the XLA loops block their backward themselves
    c.grad_chunk_rows = 8
    assert train.resolve_chunk_rows(c, 1024) == 8  # a value asked for is taken as it is
    c.grad_chunk_rows, c.recurrence = -1, "native"
    assert train.resolve_chunk_rows(c, 1024, "gpu") == 0  # no native kernel off the CPU
    c.recurrence = "auto"
    want = train.AUTO_CHUNK_ROWS if native.available() else 0
    assert train.resolve_chunk_rows(c, 1024, "cpu") == want


def test_a_run_in_row_chunks_trains_as_the_whole_batch_does(idx_dir):
    whole = train_steps(tiny_config(idx_dir, learning_rate=1e-3, grad_chunk_rows=0), 3)[1]
    chunked = train_steps(tiny_config(idx_dir, learning_rate=1e-3, grad_chunk_rows=1), 3)[1]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), chunked.params, whole.params)
    np.testing.assert_allclose(float(chunked.sums["loss"]), float(whole.sums["loss"]), rtol=1e-5)
    start = jax.tree.leaves(train.create_state(tiny_config(idx_dir)).params)
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(whole.params), start, strict=True))


@pytest.mark.parametrize("recurrence", ["scan", "fused"])
def test_unroll_runs_the_same_loop(idx_dir, recurrence):
    c = tiny_config(idx_dir, learning_rate=1e-3, recurrence=recurrence)
    one = train_steps(c, 2)[1]
    c.unroll = 16
    model = train.build_model(c)
    assert model.unroll == 16
    sixteen = train_steps(c, 2)[1]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), sixteen.params, one.params)


def test_non_finite_step_freezes_the_state(idx_dir):
    c = tiny_config(idx_dir, learning_rate=1e-3)
    step_fn = jax.jit(functools.partial(train.train_step, loss_fn=train.make_loss_fn(c)))
    state = step_fn(train.create_state(c), _batch())
    assert int(state.sums["nonfinite"]) == 0 and int(state.step) == 1
    nan_params = jax.tree.map(lambda p: p * jnp.nan, state.params)
    out = step_fn(state.replace(params=nan_params), _batch(seed=1))
    # The update is refused and counted: the step counter does not move...
    assert int(out.sums["nonfinite"]) == 1 and int(out.step) == 1
    assert float(out.sums["count"]) == 4  # only the first, finite step counted
    # ...and later finite steps do not move the state either.
    later = step_fn(out.replace(params=state.params), _batch(seed=2))
    assert int(later.step) == 1 and int(later.sums["nonfinite"]) == 2  # refused steps
    jax.tree.map(np.testing.assert_array_equal, later.params, state.params)


def test_a_diverged_run_stays_frozen_across_the_reset_after_an_evaluation(idx_dir):
    """The loop zeroes the metric sums after each evaluation; a diverged run must not train again from
    its last good parameters, even where the next steps would be finite."""
    s = loop.setup(tiny_config(idx_dir, learning_rate=1e-3))
    diverged = s.state.replace(sums={**s.state.sums, "nonfinite": jnp.ones((), jnp.int32)})
    before = jax.tree.map(np.array, (diverged.params, diverged.opt_state, diverged.step))
    after = s.chunk_fn(s.reset_fn(diverged), s.train_data, *s.train_indices(0, 3))
    jax.tree.map(np.testing.assert_array_equal, (after.params, after.opt_state, after.step), before)
    assert int(after.sums["nonfinite"]) == 4 and float(after.sums["count"]) == 0  # 1 + 3 refused steps


@pytest.mark.parametrize(
    "every,last,offset,want",
    [
        (5, 12, 0, [5, 10, 12]),
        (4, 12, 0, [4, 8, 12]),
        (1, 3, 0, [1, 2, 3]),
        (20, 12, 0, [12]),
        (500, 1600, 1, [1, 501, 1001, 1501, 1600]),  # S3: after steps 1, 501, ... as Keras counted them
        (500, 2000, 1001, [1001, 1501, 2000]),  # the replay: only from the offset on
    ],
)
def test_should_run_every_n_and_the_last(every, last, offset, want):
    assert [s for s in range(1, last + 1) if metrics.should_run(s, every, last, offset)] == want


@pytest.mark.parametrize(
    "value,text",
    [(0.16789, "0.1679"), (2.5, "2.5000"), (0.0, "0.0000"), (0.001, "0.0010"), (5.3e-06, "5.30e-06"),
     (0.00047, "4.70e-04"), (float("nan"), "nan"), (float("inf"), "inf")],
)  # fmt: skip
def test_a_metric_keeps_its_digits_below_a_thousandth(value, text):
    """The adding problem's MSE falls to 1e-6: four decimals would print it as 0.0000."""
    assert metrics.format_metric(value) == text


def test_a_printed_row_names_each_metric_once_and_marks_divergence():
    row = {"step": 3125, "epoch": 1.0, "train_loss": 0.18, "test_loss": 2.1e-05, "grad_norm": 0.76,
           "steps_per_second": 65.6}  # fmt: skip
    line = metrics.format_row("", row)
    assert line == "step 3125 (epoch 1.00): train loss 0.1800 | test loss 2.10e-05 | grad norm 0.7600 | 65.6 steps/s"
    row.update(train_accuracy=0.5, test_accuracy=0.25, validation_loss=0.3, validation_accuracy=0.75, diverged=True)
    line = metrics.format_row("001_seed=1", row)
    assert line.startswith("001_seed=1: step 3125 (epoch 1.00): train loss 0.1800 acc 0.5000 | val loss 0.3000 acc")
    assert "| test loss 2.10e-05 acc 0.2500 |" in line and line.endswith("| DIVERGED (frozen)")


@pytest.mark.parametrize("every", [1, 3, 7, 500])
@pytest.mark.parametrize("offset", [0, 1, 2, 9, 1001])
def test_next_due_is_the_next_step_should_run_fires_at(every, offset):
    """next_due lets the loop jump to the next evaluation; it must agree with a step-by-step scan."""
    last = 10**6  # far away: only the every/offset rule decides
    for step in list(range(0, 40)) + [offset - 1, offset, offset + every, 1234, 5000]:
        if step < 0:
            continue
        want = next(s for s in range(step + 1, last) if metrics.should_run(s, every, last, offset))
        assert metrics.next_due(step, every, offset) == want, (step, every, offset)


@pytest.mark.slow
@pytest.mark.parametrize(
    "field,value,message",
    [
        ("batch_size", 0, "batch_size must be an integer >= 1"),
        ("learning_rate", -1.0, "learning_rate must be > 0"),
        ("clip_norm", -0.5, "clip_norm must be >= 0"),
        ("dataset", "cifar10", "dataset must be one of"),
        ("cell", "gru", "cell must be one of"),
        ("task", "column", "task must be one of"),
        ("eval_every_steps", 0, "eval_every_steps must be an integer >= 1"),
        ("num_train_steps", -3, "num_train_steps must be an integer >= 0"),
        ("num_epochs", -2, "num_epochs must be an integer >= 1"),
        ("lr_schedule", "linear", "lr_schedule must be one of"),
        ("warmup_steps", -1, "warmup_steps must be an integer >= 0"),
        ("input_std", 0.0, "input_std must be > 0"),
        ("checkpoint_every_seconds", -5.0, "checkpoint_every_seconds must be >= 0"),
        ("seed", -1, "seed and permutation_seed must be integers >= 0"),
        ("recurrent_gain", float("nan"), "recurrent_gain must be finite"),
        ("grad_chunk_rows", -2, "grad_chunk_rows must be an integer >= -1"),
        ("unroll", 0, "unroll must be an integer >= 1"),
    ],
)
def test_config_out_of_range_is_refused(idx_dir, field, value, message, tmp_path):
    c = tiny_config(idx_dir)
    c[field] = value
    with pytest.raises(config_check.ConfigError, match=message):
        loop.train_and_evaluate(c, tmp_path / "w")
    assert not (tmp_path / "w").exists()  # refused before anything is written


@pytest.mark.slow
def test_run_writes_metrics_tensorboard_and_checkpoints(idx_dir, tmp_path):
    c = tiny_config(idx_dir)
    result = loop.train_and_evaluate(c, tmp_path)
    rows = metrics.read_rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 12]
    for key in (
        "step",
        "epoch",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "grad_norm",
        "steps_per_second",
    ):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["epoch"] == pytest.approx(5 / 24, abs=1e-4)  # 96 examples / batch 4
    # 40 test examples: an accuracy is a multiple of 1/40, the loss near ln(10) this early.
    assert all(r["test_accuracy"] * 40 == pytest.approx(round(r["test_accuracy"] * 40)) for r in rows)
    assert all(2.0 < r["test_loss"] < 2.6 for r in rows)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8, 12]
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert result.step == 12 and not result.stopped_by_signal and result.last_row == rows[-1]


@pytest.mark.slow
def test_finished_run_is_not_repeated(idx_dir, tmp_path):
    c = tiny_config(idx_dir)
    loop.train_and_evaluate(c, tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    result = loop.train_and_evaluate(c, tmp_path)
    assert result.step == 12 and result.last_row is None
    assert (tmp_path / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_divergence_raises_and_saves_the_last_good_state(idx_dir, tmp_path):
    # SGD at a huge learning rate without clipping blows a ReLU RNN up within steps.
    c = tiny_config(
        idx_dir,
        optimizer="sgd",
        learning_rate=1e6,
        clip_norm=0.0,
        recurrent_gain=1.0,
        num_train_steps=40,
        checkpoint_every_steps=100,
        eval_every_steps=100,
    )
    with pytest.raises(train.DivergenceError, match="non-finite at step") as e:
        loop.train_and_evaluate(c, tmp_path)
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and f"after step {saved[0]} is saved" in str(e.value)
    (session,) = json.loads((tmp_path / "run.json").read_text())["sessions"]  # the page marks it diverged
    assert session["outcome"] == f"diverged at step {saved[0] + 1}" and session["end_step"] == saved[0]


@pytest.mark.slow
def test_steps_per_call_does_not_change_the_numbers(idx_dir, tmp_path):
    """N steps in one jitted call equal N calls of one step, bit for bit."""
    one = loop.train_and_evaluate(tiny_config(idx_dir, steps_per_call=1), tmp_path / "one")
    seven = loop.train_and_evaluate(tiny_config(idx_dir, steps_per_call=7), tmp_path / "seven")
    jax.tree.map(np.testing.assert_array_equal, one.state.params, seven.state.params)
    assert read_rows(tmp_path / "one") == read_rows(tmp_path / "seven")


# ------------------------------------------------------------ it learns


@pytest.mark.slow
def test_loss_falls_on_the_learnable_task(tmp_path):
    """The images of conftest.make_images say their label with a bright band of rows: read row by row,
    an IRNN learns it in 150 steps (seen: test loss 2.30 -> 0.61, accuracy 0.125 -> 0.78)."""
    d = write_idx_dir(tmp_path / "idx", 256, 64)
    c = tiny_config(d, task="row", hidden_size=16, batch_size=16, optimizer="adam", learning_rate=1e-2,
                    num_train_steps=150, steps_per_call=50, eval_batch_size=64)  # fmt: skip
    s = loop.setup(c)
    before = loop.evaluate(s, s.state.params)[0]
    state = s.chunk_fn(s.state, s.train_data, *s.train_indices(0, 150))  # donates s.state
    after = loop.evaluate(s, state.params)[0]
    assert before["test_loss"] == pytest.approx(np.log(10), abs=0.05)  # chance, to start with
    assert after["test_loss"] < 0.5 * before["test_loss"] and after["test_accuracy"] > 0.5


@pytest.mark.slow
def test_irnn_learns_the_adding_problem_and_a_tanh_rnn_of_its_size_does_worse(tmp_path):
    """T = 50, 16 units, 3,000 steps of Adam 1e-3 (seen: IRNN MSE 0.0025, tanh RNN 0.055; the
    baseline of always predicting 1 is 0.167). The IRNN's input weights start at N(0, 0.1): from
    the preset's 0.001 it needs far more steps to leave the baseline."""
    results = {}
    for cell, std in (("irnn", 0.1), ("rnn_tanh", 0.001)):
        c = adding.get_config(f"{cell}_150")
        c.sequence_length, c.num_train_examples, c.num_test_examples = 50, 8192, 512
        c.hidden_size, c.num_train_steps, c.eval_every_steps, c.eval_batch_size = 16, 3000, 3000, 512
        c.learning_rate, c.input_init_std, c.steps_per_call, c.progress_bar = 1e-3, std, 100, False
        results[cell] = loop.train_and_evaluate(c, tmp_path / cell).last_row["test_loss"]
    assert results["irnn"] < adding_task.BASELINE_MSE / 10
    assert results["rnn_tanh"] > 3 * results["irnn"]


def test_cosine_schedule_scales_the_update_from_full_to_zero(idx_dir):
    """With lr_schedule=cosine the optimiser's update is the constant one times the schedule's factor:
    1 at the first step, 1/2 halfway, 0 at the run's last step (warm-up: from 0 to 1 first)."""
    g = np.array([3.0, 4.0], np.float32)
    c = tiny_config(idx_dir, clip_norm=0.0, learning_rate=1e-2)
    constant = [_apply(train.make_optimizer(c), np.zeros(2, np.float32), [g] * n) for n in (1, 2)]
    c.lr_schedule = "cosine"
    scheduled = [_apply(train.make_optimizer(c, num_steps=2), np.zeros(2, np.float32), [g] * n) for n in (1, 2)]
    np.testing.assert_allclose(scheduled[0], constant[0], rtol=1e-6)  # factor 1 at step 0
    second_step = constant[1] - constant[0]
    np.testing.assert_allclose(scheduled[1] - scheduled[0], 0.5 * second_step, rtol=1e-5)  # cos(pi/2)...
    factor = optim.schedule_factor("cosine", 100, warmup_steps=10)
    assert [round(float(factor(s)), 4) for s in (0, 5, 10, 55, 100)] == [0.0, 0.5, 1.0, 0.5, 0.0]


def test_step_schedule_drops_the_rate_after_the_epochs_it_names(idx_dir):
    """lr_schedule=step: the update is the constant one until the end of each epoch in lr_step_epochs,
    then lr_step_factor times smaller, once per epoch passed (after a linear warm-up)."""
    g = np.array([3.0, 4.0], np.float32)
    c = tiny_config(idx_dir, clip_norm=0.0, learning_rate=1e-2, optimizer="sgd")
    constant = _apply(train.make_optimizer(c), np.zeros(2, np.float32), [g])
    c.lr_schedule, c.lr_step_epochs, c.lr_step_factor = "step", (1, 2), 0.1
    tx = train.make_optimizer(c, num_steps=8, steps_per_epoch=2)  # drops after step 2 and step 4
    after = [_apply(tx, np.zeros(2, np.float32), [g] * n) for n in range(1, 6)]
    moves = [after[0]] + [b - a for a, b in zip(after, after[1:], strict=False)]
    for k, want in enumerate([1.0, 1.0, 0.1, 0.1, 0.01]):
        np.testing.assert_allclose(moves[k], want * constant, rtol=1e-5, err_msg=f"step {k}")
    factor = optim.schedule_factor("step", 100, warmup_steps=10, step_boundaries=(50, 80), step_factor=0.5)
    assert [round(float(factor(s)), 4) for s in (0, 5, 10, 49, 50, 79, 80, 99)] == [0, 0.5, 1, 1, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.slow
@pytest.mark.parametrize(
    "field,value",
    [("lr_step_epochs", ()), ("lr_step_epochs", (5, 3)), ("lr_step_epochs", (0,)), ("lr_step_factor", 1.0),
     ("lr_step_factor", 0.0), ("lr_step_factor", float("nan"))],
)  # fmt: skip
def test_a_bad_step_schedule_is_refused(idx_dir, field, value, tmp_path):
    c = tiny_config(idx_dir, lr_schedule="step")
    c[field] = value
    with pytest.raises(config_check.ConfigError, match=field):
        loop.train_and_evaluate(c, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def _apply_tree(tx, params, grads):
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _rnn_tree(value):
    return {"rnn": {"kernel": jnp.full((2,), value), "recurrent_kernel": jnp.full((2, 2), value)}}


@pytest.mark.parametrize("scale", [0.0, 0.25])
def test_recurrent_lr_scale_scales_the_recurrent_kernels_updates_only(idx_dir, scale):
    c = tiny_config(idx_dir, optimizer="sgd", clip_norm=0.0, learning_rate=0.1, recurrent_lr_scale=scale)
    got = _apply_tree(train.make_optimizer(c), _rnn_tree(1.0), [_rnn_tree(2.0)] * 3)
    np.testing.assert_allclose(got["rnn"]["kernel"], 1.0 - 3 * 0.1 * 2.0, rtol=1e-6)  # the rest: the full rate
    np.testing.assert_allclose(got["rnn"]["recurrent_kernel"], 1.0 - 3 * scale * 0.1 * 2.0, rtol=1e-6)


def test_update_clip_norm_bounds_the_update_after_the_optimiser(idx_dir):
    # RMSprop's first update is lr * g / sqrt(0.1 g^2) ~ 3.16 lr per element whatever the gradient's size,
    # so clipping the gradient cannot bound it; clipping the update does.
    g = {"w": jnp.asarray([3.0, 4.0])}
    c = tiny_config(idx_dir, clip_norm=1.0, learning_rate=1.0)
    free = train.make_optimizer(c)
    u_free, _ = free.update(g, free.init(g), g)
    assert float(optax.tree.norm(u_free)) > 4.0
    bounded = train.make_optimizer(tiny_config(idx_dir, clip_norm=1.0, learning_rate=1.0, update_clip_norm=0.5))
    u, _ = bounded.update(g, bounded.init(g), g)
    np.testing.assert_allclose(float(optax.tree.norm(u)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(u["w"]) / np.asarray(u_free["w"]), 0.5 / float(optax.tree.norm(u_free)))


def test_the_optimiser_options_off_leave_the_optimiser_state_as_it_was(idx_dir):
    """recurrent_lr_scale 1 and update_clip_norm 0 add nothing to the chain: checkpoints of runs made
    before the fields existed restore (checkpoint.ADDED_FIELDS)."""
    params = _rnn_tree(1.0)
    base = jax.tree_util.tree_structure(train.make_optimizer(tiny_config(idx_dir)).init(params))
    for field, value in (("recurrent_lr_scale", 0.5), ("update_clip_norm", 1.0), ("ema_decay", 0.9),
                         ("skip_spike_factor", 10.0)):  # fmt: skip
        on = tiny_config(idx_dir, **{field: value})
        assert jax.tree_util.tree_structure(train.make_optimizer(on).init(params)) != base, field
    off = tiny_config(idx_dir, recurrent_lr_scale=1.0, update_clip_norm=0.0, ema_decay=0.0, skip_spike_factor=0.0)
    assert jax.tree_util.tree_structure(train.make_optimizer(off).init(params)) == base


@pytest.mark.parametrize(
    "field, value",
    [
        ("recurrent_lr_scale", -1.0),
        ("update_clip_norm", -0.5),
        ("ema_decay", 1.0),
        ("ema_decay", -0.1),
        ("skip_spike_factor", 0.5),
        ("skip_spike_factor", -2.0),
    ],  # fmt: skip
)
def test_optimiser_options_out_of_range_are_refused(idx_dir, field, value):
    with pytest.raises(config_check.ConfigError, match=field):
        config_check.validate_config(tiny_config(idx_dir, **{field: value}))


def test_a_sweep_runs_with_the_optimiser_options(idx_dir, tmp_path):
    c = tiny_config(idx_dir, recurrent_lr_scale=0.5, update_clip_norm=1.0, ema_decay=0.9, skip_spike_factor=10.0,
                    sweep="learning_rate=1e-3,1e-2", num_train_steps=4, eval_every_steps=4)  # fmt: skip
    result = loop.train_and_evaluate(c, tmp_path / "w")
    assert result.step == 4 and len(result.last_rows) == 2
    assert result.last_rows[0]["train_loss"] != result.last_rows[1]["train_loss"]  # each its own learning rate
    assert [r["skipped_steps"] for r in result.last_rows] == [0, 0]  # none in the first SPIKE_WARMUP_STEPS


def test_ema_is_the_moving_average_of_the_parameters_after_each_update(idx_dir):
    d, lr = 0.5, 0.1
    c = tiny_config(idx_dir, optimizer="sgd", clip_norm=0.0, learning_rate=lr, ema_decay=d)
    tx = train.make_optimizer(c)
    params = {"w": jnp.asarray([1.0, -2.0])}
    state = tx.init(params)
    want_ema, p = np.asarray(params["w"]), np.asarray(params["w"])
    for g in (np.array([1.0, 0.5]), np.array([-3.0, 2.0]), np.array([0.25, 0.0])):
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        p = p - lr * g
        want_ema = d * want_ema + (1 - d) * p
    np.testing.assert_allclose(np.asarray(params["w"]), p, rtol=1e-6)  # the updates pass through unchanged
    np.testing.assert_allclose(np.asarray(optim.ema_params(state)["w"]), want_ema, rtol=1e-6)


def test_a_run_with_ema_evaluates_the_average_not_the_weights(idx_dir, tmp_path):
    c = tiny_config(idx_dir, ema_decay=0.9, learning_rate=1e-4, num_train_steps=6, eval_every_steps=6)
    result = loop.train_and_evaluate(c, tmp_path / "ema")
    row = read_rows(tmp_path / "ema")[-1]
    s = loop.setup(c)
    (of_ema,) = loop.evaluate(s, optim.ema_params(result.state.opt_state))
    (of_weights,) = loop.evaluate(s, result.state.params)
    assert row["test_loss"] == pytest.approx(of_ema["test_loss"], rel=1e-6)
    assert of_ema["test_loss"] != of_weights["test_loss"]
    assert optim.ema_params(loop.setup(tiny_config(idx_dir)).state.opt_state) is None  # off by default


def test_a_gradient_spike_is_skipped_whole_and_the_steps_around_it_are_not():
    """skip_spikes: after the warm-up, a step whose gradient norm is above factor x the running geometric
    mean changes neither the parameters nor the optimiser's state (its moments and EMA); the others do."""
    inner = optim.make_optimizer("rmsprop", 0.1, 0.0, ema_decay=0.5)
    tx = optim.skip_spikes(inner, factor=10.0, warmup=3)
    params = {"w": jnp.asarray([1.0, 1.0])}
    state = tx.init(params)
    norm_one = {"w": jnp.asarray([0.6, 0.8])}
    for _ in range(3):  # the warm-up: norms of 1
        updates, state = tx.update(norm_one, state, params)
        params = optax.apply_updates(params, updates)
    before_params, before_inner = params, state.inner
    spike = {"w": jnp.asarray([60.0, 80.0])}  # norm 100 > 10 x 1
    updates, state = tx.update(spike, state, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
    for a, b in zip(jax.tree.leaves(state.inner), jax.tree.leaves(before_inner), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(state.skipped) == 1 and int(state.count) == 4
    mild = {"w": jnp.asarray([3.0, 4.0])}  # norm 5 < 10 x 1: taken
    updates, state = tx.update(mild, state, params)
    assert float(jnp.abs(updates["w"]).max()) > 0 and int(state.skipped) == 1 and int(state.count) == 5
    assert optim.ema_params(state) is not None  # the EMA inside is still found
    # Without the wrapper the spike would have moved the parameters.
    plain_updates, _ = inner.update(spike, before_inner, before_params)
    assert float(jnp.abs(plain_updates["w"]).max()) > 0


def test_no_step_is_skipped_before_the_warm_up():
    tx = optim.skip_spikes(optax.sgd(0.1), factor=2.0, warmup=5)
    params = {"w": jnp.asarray([0.0])}
    state = tx.init(params)
    for g in (1.0, 100.0, 1.0, 1000.0):  # spikes, but within the warm-up
        updates, state = tx.update({"w": jnp.asarray([g])}, state, params)
        assert float(updates["w"][0]) == pytest.approx(-0.1 * g)
    assert int(state.skipped) == 0 and int(state.count) == 4


def test_a_lasting_rise_of_the_gradient_norm_is_followed_not_skipped_for_ever():
    """Gradient norms grow several-fold early in training. The running mean must follow a lasting rise:
    a few steps are skipped, then the new level is taken (the first form skipped every later step)."""
    tx = optim.skip_spikes(optax.sgd(0.1), factor=5.0, decay=0.9, warmup=3)
    params = {"w": jnp.asarray([0.0])}
    state = tx.init(params)
    taken = []
    for g in [1.0] * 5 + [50.0] * 100:  # the norm rises 50-fold and stays there
        updates, state = tx.update({"w": jnp.asarray([g])}, state, params)
        taken.append(float(updates["w"][0]) != 0.0)
    assert not all(taken[5:10])  # the rise itself is skipped at first
    assert all(taken[-50:])  # then followed
    assert 0 < int(state.skipped) < 50
