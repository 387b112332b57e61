"""The validation split: training examples held out to choose recipes on, evaluated beside the test set."""

import numpy as np
import pytest

from experiments.configs import pixel_mnist, row_mnist
from irnn_jax import config_check, data, input_pipeline, loop
from tests.conftest import make_images, read_rows, tiny_config


def _dataset(n_train=50, n_test=20):
    images, labels = make_images(n_train, 1)
    test_images, test_labels = make_images(n_test, 2)
    # Make every training example tell its index: image[0, 0] = index.
    images = images.copy()
    images[:, 0, 0] = np.arange(n_train)
    return data.Dataset("mnist", data.Split(images, labels), data.Split(test_images, test_labels), "test:made")


def test_hold_out_moves_a_fixed_seeded_part_of_the_training_set_and_keeps_both_orders():
    d = _dataset()
    held = input_pipeline.hold_out(d, 12, seed=3)
    train_ids, val_ids = held.train.inputs[:, 0, 0], held.validation.inputs[:, 0, 0]
    assert (len(train_ids), len(val_ids)) == (38, 12)
    assert not set(train_ids) & set(val_ids)
    assert sorted([*train_ids, *val_ids]) == list(range(50))
    assert list(train_ids) == sorted(train_ids) and list(val_ids) == sorted(val_ids)
    assert np.array_equal(held.validation.targets, d.train.targets[val_ids])  # labels travel with their images
    assert held.test is d.test
    again = input_pipeline.hold_out(d, 12, seed=3)
    assert np.array_equal(again.validation.inputs, held.validation.inputs)  # fixed by the seed
    other = input_pipeline.hold_out(d, 12, seed=4)
    assert not np.array_equal(other.validation.inputs[:, 0, 0], val_ids)
    assert input_pipeline.hold_out(d, 0, seed=3) is d


@pytest.mark.parametrize("size", [50, 51])
def test_hold_out_leaves_at_least_one_training_example(size):
    with pytest.raises(ValueError, match="below the 50 training examples"):
        input_pipeline.hold_out(_dataset(), size, seed=0)


def test_out_of_range_values_are_refused_before_anything_runs(idx_dir):
    for field, value in (("validation_size", -1), ("validation_seed", -3)):
        with pytest.raises(config_check.ConfigError, match=field):
            config_check.validate_config(tiny_config(idx_dir, **{field: value}))
    with pytest.raises(config_check.ConfigError, match="validation_size must be below the 96 training examples"):
        loop.setup(tiny_config(idx_dir, validation_size=96))


def test_an_impossible_validation_size_is_refused_before_the_workdir_exists(idx_dir, tmp_path):
    """It used to be refused only after the workdir and its lock had been made."""
    with pytest.raises(config_check.ConfigError, match="validation_size must be below the 96 training examples"):
        loop.train_and_evaluate(tiny_config(idx_dir, validation_size=96), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_run_reports_validation_beside_test_and_never_trains_on_it(idx_dir, tmp_path):
    c = tiny_config(idx_dir, validation_size=30, validation_seed=1, num_train_steps=8, eval_every_steps=4)
    s = loop.setup(c)
    assert (len(s.dataset.train), len(s.dataset.validation), len(s.dataset.test)) == (66, 30, 40)
    # Every training batch comes from the 66 examples left: the held-out ones are not in the array it gathers.
    idx, _ = s.train_indices(0, 8)
    assert int(np.asarray(idx).max()) < 66
    # The epoch is over the training examples left.
    assert s.steps_per_epoch == -(-66 // c.batch_size)

    result = loop.train_and_evaluate(c, tmp_path / "run")
    rows = read_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [4, 8]
    assert all({"validation_loss", "validation_accuracy", "test_loss", "test_accuracy"} <= set(r) for r in rows)

    # The validation metric is the test metric of the same parameters on the held-out examples.
    as_test = loop.setup(c, dataset=data.Dataset("mnist", s.dataset.train, s.dataset.validation, "held-out"))
    (swapped,) = loop.evaluate(as_test, result.state.params)
    assert swapped["test_loss"] == pytest.approx(rows[-1]["validation_loss"], rel=1e-6)
    assert swapped["test_accuracy"] == rows[-1]["validation_accuracy"]


def test_the_data_fingerprint_is_of_the_arrays_as_read(idx_dir):
    plain = loop.setup(tiny_config(idx_dir))
    held = loop.setup(tiny_config(idx_dir, validation_size=30))
    assert held.data_print == plain.data_print == data.fingerprint(plain.dataset)


def test_the_source_reproducing_presets_train_on_every_example():
    """All but irnn_fast's and irnn_tuned's, whose recipes are ours and report their validation accuracy
    beside the test's."""
    ours = {f"irnn_{recipe}{kind}" for recipe in ("fast", "tuned") for kind in ("", "_permuted", "_control")}
    for module in (pixel_mnist, row_mnist):
        for preset in module.PRESETS:
            assert module.get_config(preset).validation_size == (5000 if preset in ours else 0), preset
