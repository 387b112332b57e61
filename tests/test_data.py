import gzip
import time

import numpy as np
import pytest

from experiments.configs import pixel_mnist
from irnn_jax import data
from tests.conftest import make_images, write_idx_dir


def test_idx_round_trip_plain_and_gz(tmp_path):
    images, labels = make_images(5, 0)
    for name in ("a-idx3-ubyte", "b-idx3-ubyte.gz"):
        data.write_idx(tmp_path / name, images)
        np.testing.assert_array_equal(data.read_idx(tmp_path / name, 3), images)
    data.write_idx(tmp_path / "l.gz", labels)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "l.gz", 1), labels)


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_dir(tmp_path, gz):
    ds = data.load_idx_dir(write_idx_dir(tmp_path, 30, 10, gz=gz), "mnist")
    images, labels = make_images(30, 1)
    np.testing.assert_array_equal(ds.train.inputs, images)
    np.testing.assert_array_equal(ds.train.targets, labels)
    assert ds.train.targets.dtype == np.int32 and len(ds.test) == 10


def test_missing_file_is_named(tmp_path):
    d = write_idx_dir(tmp_path, 8, 4)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.*four standard files"):
        data.load_idx_dir(d, "mnist")


def test_missing_dir(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_idx_dir(tmp_path / "nope", "mnist")


def test_truncated_file_is_named(tmp_path):
    d = write_idx_dir(tmp_path, 8, 4, gz=False)
    f = d / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte holds 6172 bytes.*truncated"):
        data.load_idx_dir(d, "mnist")


def test_truncated_gzip_is_named(tmp_path):
    d = write_idx_dir(tmp_path, 8, 4)
    f = d / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz is not a complete gzip"):
        data.load_idx_dir(d, "mnist")


def test_wrong_magic_is_named(tmp_path):
    d = write_idx_dir(tmp_path, 8, 4, gz=False)
    (d / "t10k-images-idx3-ubyte").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte is not an IDX file"):
        data.load_idx_dir(d, "mnist")


def test_images_and_labels_disagree(tmp_path):
    d = write_idx_dir(tmp_path, 8, 4, gz=False)
    data.write_idx(d / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(data.DataError, match="8 images but .* 7 labels"):
        data.load_idx_dir(d, "mnist")


def test_labels_out_of_range(tmp_path):
    d = write_idx_dir(tmp_path, 8, 4, gz=False)
    data.write_idx(d / "t10k-labels-idx1-ubyte", np.full(4, 10, np.uint8))
    with pytest.raises(data.DataError, match="label 10"):
        data.load_idx_dir(d, "mnist")


def test_gzip_and_plain_files_are_the_same_dataset(tmp_path):
    a = data.load_idx_dir(write_idx_dir(tmp_path / "a", 8, 4, gz=True), "mnist")
    b = data.load_idx_dir(write_idx_dir(tmp_path / "b", 8, 4, gz=False), "mnist")
    np.testing.assert_array_equal(a.test.inputs, b.test.inputs)
    assert (
        gzip.decompress((tmp_path / "a" / "t10k-images-idx3-ubyte.gz").read_bytes())
        == (tmp_path / "b" / "t10k-images-idx3-ubyte").read_bytes()
    )


# ------------------------------------------------------------------ TFDS


def test_tfds_mock_data_source(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(data, "can_reach", lambda *a, **k: True)  # download_and_prepare is mocked
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_tfds("mnist", str(tmp_path))
    assert ds.train.inputs.shape == (12, 28, 28) and ds.train.inputs.dtype == np.uint8
    assert ds.test.targets.shape == (12,) and ds.test.targets.dtype == np.int32
    assert ds.train.targets.min() >= 0 and ds.train.targets.max() <= 9
    assert ds.source.startswith("tfds:")


def test_tfds_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "can_reach", lambda *a, **k: False)
    t = time.monotonic()
    with pytest.raises(data.DataError, match=r"--config.data_dir=DIR.*fashion-mnist"):
        data.load_tfds("mnist", str(tmp_path / "empty"))
    assert time.monotonic() - t < 30


def test_can_reach_is_false_for_a_closed_port():
    import socket

    with socket.socket() as s:  # bind then close: nothing listens on that port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    assert data.can_reach("127.0.0.1", port, timeout=2) is False
    assert time.monotonic() - t < 3


def test_can_reach_is_true_for_a_listening_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert data.can_reach("127.0.0.1", s.getsockname()[1], timeout=2) is True


# --------------------------------------------------------- sequence views


def _cfg(task, permutation_seed=0):
    c = pixel_mnist.get_config("keras")
    c.task, c.permutation_seed = task, permutation_seed
    return c


def test_pixel_view_is_row_major_scaled():
    images, _ = make_images(3, 0)
    x = np.asarray(data.make_sequence_fn(_cfg("pixel"))(images))
    assert x.shape == (3, 784, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x, images.reshape(3, 784, 1) / 255.0, rtol=1e-6)


def test_row_view():
    images, _ = make_images(2, 0)
    x = np.asarray(data.make_sequence_fn(_cfg("row"))(images))
    np.testing.assert_allclose(x, images / 255.0, rtol=1e-6)


def test_permuted_view_is_one_fixed_permutation():
    images, _ = make_images(2, 0)
    x = np.asarray(data.make_sequence_fn(_cfg("permuted", 7))(images))
    perm = data.pixel_permutation(7)
    assert sorted(perm) == list(range(784)) and not np.array_equal(perm, np.arange(784))
    np.testing.assert_allclose(x[:, :, 0], images.reshape(2, 784)[:, perm] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(perm, data.pixel_permutation(7))
    assert not np.array_equal(perm, data.pixel_permutation(8))


# --------------------------------------------------------------- batches


def test_each_epoch_is_a_fresh_permutation_of_all_examples():
    n, b = 10, 4  # 3 steps per epoch, the last one partial
    assert data.steps_per_epoch(n, b) == 3
    epochs = []
    for e in range(3):
        idx = [data.batch_indices(3 * e + i, n, b, seed=5, shuffle=True) for i in range(3)]
        real = np.concatenate([i[m > 0] for i, m in idx])
        assert sorted(real) == list(range(n))
        assert [m.sum() for _, m in idx] == [4, 4, 2]
        epochs.append(real)
    assert not np.array_equal(epochs[0], epochs[1])


def test_batch_is_a_pure_function_of_seed_and_step():
    a = data.batch_indices(7, 100, 8, seed=3, shuffle=True)
    data.epoch_order.cache_clear()
    b = data.batch_indices(7, 100, 8, seed=3, shuffle=True)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], data.batch_indices(7, 100, 8, seed=4, shuffle=True)[0])


def test_in_order_batches_wrap_around():
    # S3/S4: 50 at a time through the set in order, back to 0 after the end.
    n, b = 150, 50
    firsts = [data.batch_indices(s, n, b, 0, shuffle=False)[0][0] for s in range(5)]
    assert firsts == [0, 50, 100, 0, 50]
    np.testing.assert_array_equal(data.batch_indices(4, n, b, 0, False)[0], np.arange(50, 100))


def test_batch_at_and_eval_batches():
    images, labels = make_images(10, 0)
    split = data.Split(images, labels.astype(np.int32))
    batch = data.batch_at(split, 0, 4, seed=0, shuffle=False)
    np.testing.assert_array_equal(batch["inputs"], images[:4])
    batches = list(data.eval_batches(split, 4))
    assert len(batches) == 3 and batches[-1]["mask"].tolist() == [1, 1, 0, 0]
    np.testing.assert_array_equal(batches[-1]["targets"][:2], labels[8:])
