"""The batch path: dataset choice, sequence views, indices of a step, the on-device gather."""

import socket
import time

import jax
import numpy as np
import pytest

from experiments.configs import adding, pixel_mnist
from irnn_jax import data, download, input_pipeline, loop, parallel
from tests.conftest import make_images, tiny_config

# --------------------------------------------------------- dataset choice


def test_without_data_dir_or_tfds_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    """No data_dir, nothing prepared by TFDS, no network: a DataError within seconds that says what to do."""
    with socket.socket() as s:  # bind then close: nothing listens on that port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    unreachable = {
        name: download.FileSpec(f"http://127.0.0.1:{port}/{name}", 10, "0" * 64) for name in download.FILE_NAMES
    }
    monkeypatch.setattr(download, "published_files", lambda dataset: unreachable)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("IRNN_JAX_DATA", str(tmp_path / "cache"))
    c = pixel_mnist.get_config("keras")
    c.data_source = "download"  # MNIST would otherwise come from the copy shipped in the package
    t = time.monotonic()
    with pytest.raises(data.DataError, match=r"--config.data_dir=DIR"):
        input_pipeline.load_dataset(c)
    assert time.monotonic() - t < 30


def test_data_dir_wins(idx_dir):
    ds = input_pipeline.load_dataset(tiny_config(idx_dir))
    assert ds.source == f"data_dir:{idx_dir}" and len(ds.train) == 96


def test_task_info():
    c = pixel_mnist.get_config("keras")
    assert input_pipeline.task_info(c) == input_pipeline.TaskInfo(False, 10, (784, 1))
    c.task = "row"
    assert input_pipeline.task_info(c).sequence_shape == (28, 28)
    a = adding.get_config("irnn_300")
    assert input_pipeline.task_info(a) == input_pipeline.TaskInfo(True, 1, (300, 2))


# --------------------------------------------------------- sequence views


def _cfg(task, permutation_seed=0):
    c = pixel_mnist.get_config("keras")
    c.task, c.permutation_seed = task, permutation_seed
    return c


def test_pixel_view_is_row_major_scaled():
    images, _ = make_images(3, 0)
    x = np.asarray(input_pipeline.make_sequence_fn(_cfg("pixel"))(images))
    assert x.shape == (3, 784, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x, images.reshape(3, 784, 1) / 255.0, rtol=1e-6)


def test_standardised_pixels():
    images, _ = make_images(2, 0)
    c = _cfg("pixel")
    c.input_mean, c.input_std = 0.1307, 0.3081
    x = np.asarray(input_pipeline.make_sequence_fn(c)(images))
    np.testing.assert_allclose(x, (images.reshape(2, 784, 1) / 255.0 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-6)


def test_row_view():
    images, _ = make_images(2, 0)
    x = np.asarray(input_pipeline.make_sequence_fn(_cfg("row"))(images))
    np.testing.assert_allclose(x, images / 255.0, rtol=1e-6)


def test_permuted_view_is_one_fixed_permutation():
    images, _ = make_images(2, 0)
    x = np.asarray(input_pipeline.make_sequence_fn(_cfg("permuted", 7))(images))
    perm = input_pipeline.pixel_permutation(7)
    assert sorted(perm) == list(range(784)) and not np.array_equal(perm, np.arange(784))
    np.testing.assert_allclose(x[:, :, 0], images.reshape(2, 784)[:, perm] / 255.0, rtol=1e-6)
    assert not np.array_equal(perm, input_pipeline.pixel_permutation(8))
    # Pinned: every permuted-task checkpoint and published result depends on this exact order, so a
    # change of the generator (numpy's PCG64 stream, or how it is seeded) must show up as a failure.
    assert input_pipeline.pixel_permutation(0)[:6].tolist() == [318, 2, 606, 446, 758, 13]
    assert perm[:6].tolist() == [100, 368, 281, 636, 514, 9]


# --------------------------------------------------------------- indices


def test_each_epoch_is_a_fresh_permutation_of_all_examples():
    n, b = 10, 4  # 3 steps per epoch, the last one partial
    assert input_pipeline.steps_per_epoch(n, b) == 3
    idx, mask = input_pipeline.batch_indices(0, 9, n, b, seed=5, shuffle=True)
    assert idx.shape == (9, 4) and idx.dtype == np.int32
    epochs = []
    for e in range(3):
        rows = slice(3 * e, 3 * e + 3)
        real = idx[rows][mask[rows] > 0]
        assert sorted(real) == list(range(n))
        assert mask[rows].sum(1).tolist() == [4, 4, 2]
        assert idx[3 * e + 2, 2:].tolist() == [0, 0]  # padding points at example 0, masked out
        epochs.append(real)
    assert not np.array_equal(epochs[0], epochs[1])


def test_indices_of_a_step_do_not_depend_on_the_range_asked_for():
    """Resume and chunking ask for other ranges; step N's batch must not change."""
    whole = input_pipeline.batch_indices(0, 40, 100, 8, seed=3, shuffle=True)
    input_pipeline.epoch_order.cache_clear()
    for start, end in ((0, 1), (7, 8), (11, 29), (12, 40)):
        part = input_pipeline.batch_indices(start, end, 100, 8, seed=3, shuffle=True)
        np.testing.assert_array_equal(part[0], whole[0][start:end])
        np.testing.assert_array_equal(part[1], whole[1][start:end])
    other_seed = input_pipeline.batch_indices(0, 40, 100, 8, seed=4, shuffle=True)[0]
    assert not np.array_equal(whole[0], other_seed)


def test_in_order_batches_wrap_around():
    # S3/S4: 50 at a time through the set in order, back to 0 after the end.
    idx, mask = input_pipeline.batch_indices(0, 5, 150, 50, 0, shuffle=False)
    assert idx[:, 0].tolist() == [0, 50, 100, 0, 50]
    np.testing.assert_array_equal(idx[4], np.arange(50, 100))
    assert mask.min() == 1.0


def test_sweep_indices_stack_each_runs_own_order(idx_dir):
    configs = [tiny_config(idx_dir, seed=s) for s in (0, 1, 2)]
    idx, mask = input_pipeline.train_indices(configs, 96, 4, 3, 9, sweep=True)
    assert idx.shape == (6, 3, 4) and mask.shape == (6, 3, 4)
    one, _ = input_pipeline.train_indices(configs[:1], 96, 4, 3, 9, sweep=True)  # a sweep of one run
    assert one.shape == (6, 1, 4) and input_pipeline.train_indices(configs[:1], 96, 4, 3, 9)[0].shape == (6, 4)
    for k, c in enumerate(configs):
        np.testing.assert_array_equal(idx[:, k], input_pipeline.batch_indices(3, 9, 96, 4, c.seed, True)[0])


def test_eval_indices_cover_the_split_in_order():
    idx, mask = input_pipeline.eval_indices(10, 4)
    assert idx.shape == (3, 4) and mask[-1].tolist() == [1, 1, 0, 0]
    assert idx[mask > 0].tolist() == list(range(10))


def test_gather_on_the_device_gives_the_examples_of_the_indices():
    images, labels = make_images(10, 0)
    split = data.Split(images, labels.astype(np.int32))
    on_device = input_pipeline.put_split(split, parallel.make_mesh())
    idx, mask = input_pipeline.eval_indices(10, 4)
    batch = jax.jit(input_pipeline.gather)(on_device, idx[-1], mask[-1])
    np.testing.assert_array_equal(batch["inputs"][:2], images[8:])
    np.testing.assert_array_equal(batch["targets"][:2], labels[8:])
    assert batch["mask"].tolist() == [1, 1, 0, 0]


def test_the_loop_trains_on_the_batches_of_its_indices(idx_dir):
    """The loop's setup and its jitted chunk read exactly the examples `train_indices` names."""
    c = tiny_config(idx_dir)
    s = loop.setup(c)
    idx, _ = s.train_indices(0, 3)
    want = input_pipeline.batch_indices(0, 3, len(s.dataset.train), c.batch_size, c.seed, c.shuffle)[0]
    np.testing.assert_array_equal(np.asarray(idx), want)
    gathered = input_pipeline.gather(s.train_data, idx[2], None)["targets"]
    np.testing.assert_array_equal(np.asarray(gathered), s.dataset.train.targets[want[2]])
