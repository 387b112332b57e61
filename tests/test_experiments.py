"""Every preset of every experiment: parameter counts, settings, data order."""

import jax
import numpy as np
import pytest

from experiments.configs import adding, pixel_mnist, row_mnist
from irnn_jax import adding as adding_data
from irnn_jax import config_check, input_pipeline, loop, metrics, model, train

KERAS_PARAMS = {
    ("row_mnist", "keras_relu16"): 890,
    ("row_mnist", "tanh50_dense30"): 5_790,
    ("row_mnist", "tanh50_dense30_as_logged"): 5_790,
    ("row_mnist", "tanh50"): 4_460,
    ("pixel_mnist", "keras"): 11_210,
    ("pixel_mnist", "keras_900"): 11_210,
    ("pixel_mnist", "keras_default_init"): 11_210,
    ("pixel_mnist", "keras_identity_init"): 11_210,
    # Keras SimpleRNN(100) + Dense(10); LSTM(100): 4 * (1*100 + 100*100 + 100) + 1,010.
    **{("pixel_mnist", f"paper_{c}{s}"): 11_210 for c in ("irnn", "rnn_relu", "rnn_tanh") for s in ("", "_permuted")},
    ("pixel_mnist", "paper_lstm"): 41_810,
    ("pixel_mnist", "paper_lstm_permuted"): 41_810,
    **{("pixel_mnist", f"budget_{c}{s}"): 11_210 for c in ("irnn", "rnn_relu", "rnn_tanh") for s in ("", "_permuted")},
    ("pixel_mnist", "budget_lstm"): 41_810,
    ("pixel_mnist", "budget_lstm_permuted"): 41_810,
    **{
        ("pixel_mnist", f"cells20_{c}{'_permuted' if o == 'permuted' else ''}"): 41_810 if c == "lstm" else 11_210
        for c, o in pixel_mnist.CELLS20_LR
    },  # fmt: skip
    # irnn_fast changes the recipe only: the paper's 11,210 parameters.
    ("pixel_mnist", "irnn_fast"): 11_210,
    ("pixel_mnist", "irnn_fast_permuted"): 11_210,
    ("pixel_mnist", "irnn_fast_control"): 11_210,  # the ReLU RNN of the same size
    ("pixel_mnist", "irnn_tuned"): 11_210,  # the second search changes the recipe only
    ("pixel_mnist", "irnn_tuned_permuted"): 11_210,
    ("pixel_mnist", "irnn_tuned_control"): 11_210,  # the ReLU RNN of the same size
    # Adding: input 2, SimpleRNN(100) + Dense(1) = 10,300 + 101; LSTM(100) + Dense(1) = 41,200 + 101.
    **{("adding", f"{c}_{t}"): 10_401 for c in ("irnn", "rnn_tanh") for t in adding.LENGTHS},
    **{("adding", f"lstm_{t}"): 41_301 for t in adding.LENGTHS},
}
MODULES = {"pixel_mnist": pixel_mnist, "row_mnist": row_mnist, "adding": adding}


def test_every_preset_is_counted():
    assert set(KERAS_PARAMS) == {(e, p) for e, m in MODULES.items() for p in m.PRESETS}


@pytest.mark.parametrize("experiment,preset", sorted(KERAS_PARAMS))
def test_parameter_count_matches_keras(experiment, preset):
    config = MODULES[experiment].get_config(preset)
    config_check.validate_config(config)
    # Shapes only (jax.eval_shape): the count needs no compiled initialisation.
    state = jax.eval_shape(lambda: train.create_state(config, num_steps=train.total_steps(config, 60_000)))
    assert model.count_params(state.params) == KERAS_PARAMS[(experiment, preset)]


def test_row_presets_follow_the_sources():
    s2 = row_mnist.get_config("keras_relu16")
    assert (s2.cell, s2.hidden_size, s2.optimizer, s2.learning_rate, s2.batch_size, s2.num_epochs) == (
        "rnn_relu", 16, "rmsprop", 0.01, 100, 20)  # fmt: skip
    for preset, head in (("tanh50_dense30", (30,)), ("tanh50", ())):
        c = row_mnist.get_config(preset)
        assert (c.cell, c.hidden_size, tuple(c.head_sizes), c.optimizer, c.learning_rate) == (
            "rnn_tanh", 50, head, "adam", 1e-3)  # fmt: skip
        assert (c.batch_size, c.num_train_steps, c.shuffle, c.clip_norm) == (50, 4001, False, 0.0)


@pytest.mark.parametrize("preset", ["tanh50_dense30", "tanh50"])
def test_s3_s4_batches_are_the_source_loop(preset):
    """The Keras loop of S3 and S4: BATCH_INDEX += 50, back to 0 once it reaches 60,000."""
    c = row_mnist.get_config(preset)
    n, batch_index = 60_000, 0
    for step in list(range(0, 5)) + list(range(1195, 1205)) + [4000]:
        while step and batch_index != (step * 50) % n:  # replay the source loop up to `step`
            batch_index += 50
            batch_index = 0 if batch_index >= n else batch_index
        idx, mask = input_pipeline.batch_indices(step, step + 1, n, c.batch_size, c.seed, c.shuffle)
        np.testing.assert_array_equal(idx[0], np.arange(batch_index, batch_index + 50))
        assert mask.all()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tanh50_dense30", "tanh50"])
def test_s3_s4_evaluate_after_steps_1_501_and_so_on(preset):
    c = row_mnist.get_config(preset)
    evals = [s for s in range(1, c.num_train_steps + 1)
             if metrics.should_run(s, c.eval_every_steps, c.num_train_steps, c.eval_offset)]  # fmt: skip
    assert evals == [1 + 500 * k for k in range(9)]


@pytest.mark.slow
def test_s3_as_logged_replays_the_notebooks_second_pass():
    """Its nine evaluations follow steps 4,002 + 500 k, and its batches continue the first pass's
    walk through the training set (the notebook's global BATCH_INDEX)."""
    c, first_pass = row_mnist.get_config("tanh50_dense30_as_logged"), row_mnist.get_config("tanh50_dense30")
    evals = [s for s in range(1, c.num_train_steps + 1)
             if metrics.should_run(s, c.eval_every_steps, c.num_train_steps, c.eval_offset)]  # fmt: skip
    assert evals == [4002 + 500 * k for k in range(9)] and len(row_mnist.S3_LOGGED) == len(evals)
    idx, _ = input_pipeline.batch_indices(4000, 4003, 60_000, c.batch_size, c.seed, c.shuffle)
    assert [i[0] for i in idx] == [(s * 50) % 60_000 for s in (4000, 4001, 4002)]
    for field in ("cell", "hidden_size", "head_sizes", "optimizer", "learning_rate", "batch_size", "shuffle"):
        assert c[field] == first_pass[field], field


def test_paper_presets():
    for cell in pixel_mnist.PAPER_CELLS:
        a, b = pixel_mnist.get_config(f"paper_{cell}"), pixel_mnist.get_config(f"paper_{cell}_permuted")
        assert a.cell == b.cell == cell and (a.task, b.task) == ("pixel", "permuted")
        assert (a.batch_size, a.learning_rate, a.optimizer, a.clip_norm) == (128, 1e-6, "rmsprop", 1.0)


def test_budget_presets_differ_only_in_the_cell_and_the_order():
    configs = {
        (cell, task): pixel_mnist.get_config(f"budget_{cell}{suffix}")
        for cell in pixel_mnist.PAPER_CELLS
        for task, suffix in (("pixel", ""), ("permuted", "_permuted"))
    }
    for (cell, task), c in configs.items():
        assert (c.cell, c.task) == (cell, task)
        assert train.total_steps(c, 60_000) == 3_750
    recipe = {
        k: v for k, v in configs["irnn", "pixel"].to_dict().items() if k not in ("name", "cell", "task", "recurrence")
    }
    for c in configs.values():
        assert {k: c[k] for k in recipe} == recipe


def test_cells20_presets_are_the_budget_recipe_ten_times_longer_at_their_own_learning_rate():
    for (cell, task), lr in pixel_mnist.CELLS20_LR.items():
        preset = f"cells20_{cell}{'_permuted' if task == 'permuted' else ''}"
        long, short = pixel_mnist.get_config(preset), pixel_mnist.get_config(preset.replace("cells20", "budget"))
        assert (long.cell, long.task, long.learning_rate) == (cell, task, lr)
        assert train.total_steps(long, 60_000) == 37_500 == 10 * train.total_steps(short, 60_000)
        same = ("optimizer", "clip_norm", "batch_size", "input_mean", "input_std", "lr_schedule", "validation_size")
        assert {k: long[k] for k in same} == {k: short[k] for k in same}
    with pytest.raises(ValueError, match="unknown preset"):
        pixel_mnist.get_config("cells20_gru")


def test_adding_data():
    split = adding_data.generate(2000, 150, seed=0, split_id=0)
    x, y = split.inputs, split.targets
    assert x.shape == (2000, 150, 2) and x.dtype == np.float32
    markers = x[:, :, 1]
    assert np.all(markers.sum(1) == 2)
    assert np.all(markers[:, :75].sum(1) == 1) and np.all(markers[:, 75:].sum(1) == 1)
    np.testing.assert_allclose(y, (x[:, :, 0] * markers).sum(1), rtol=1e-6)
    assert 0.0 <= x[:, :, 0].min() and x[:, :, 0].max() < 1.0
    # Predicting 1 scores about 1/6; the baseline a model must beat.
    assert abs(np.mean((y - 1.0) ** 2) - adding_data.BASELINE_MSE) < 0.015
    again = adding_data.generate(2000, 150, seed=0, split_id=0)
    np.testing.assert_array_equal(again.inputs, x)
    assert not np.array_equal(adding_data.generate(10, 150, 0, 1).inputs, x[:10])


@pytest.mark.slow
def test_adding_trains_and_reports_mse(tmp_path):
    c = adding.get_config("irnn_150")
    c.sequence_length, c.num_train_examples, c.num_test_examples = 20, 64, 32
    c.hidden_size, c.num_train_steps, c.eval_every_steps, c.eval_batch_size = 8, 6, 3, 16
    c.progress_bar = False
    loop.train_and_evaluate(c, tmp_path)
    rows = metrics.read_rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [3, 6]
    assert all("test_accuracy" not in r and "train_accuracy" not in r for r in rows)
    # The MSE of an untrained net that outputs about 0 is E[y^2] = Var + 1 = 7/6; six steps at
    # lr 1e-4 barely move it. Anything far off means the loss is not the squared error of the sum.
    assert all(0.9 < r["test_loss"] < 1.5 for r in rows)


def test_adding_config_checks():
    c = adding.get_config("irnn_150")
    c.sequence_length = 1
    with pytest.raises(config_check.ConfigError, match="sequence_length must be an integer >= 2"):
        config_check.validate_config(c)
    c = pixel_mnist.get_config("keras")
    c.task = "adding"
    with pytest.raises(config_check.ConfigError, match="task 'adding' goes with dataset 'adding'"):
        config_check.validate_config(c)
    with pytest.raises(ValueError, match="unknown preset"):
        adding.get_config("gru_150")
