import gzip
import tempfile
import time

import numpy as np
import pytest

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


def test_tfds_prepared_dataset_is_read(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    # mock_data serves records from any builder but reports it unprepared; we read prepared data only.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    (tmp_path / "mnist").mkdir()  # where TFDS would keep it; without it the folder is not looked at
    with tfds.testing.mock_data(num_examples=12):
        ds = data.tfds_prepared("mnist", str(tmp_path))
    assert ds.train.inputs.shape == (12, 28, 28) and ds.train.inputs.dtype == np.uint8
    assert ds.test.targets.shape == (12,) and ds.test.targets.dtype == np.int32
    assert ds.train.targets.min() >= 0 and ds.train.targets.max() <= 9
    assert ds.source.startswith("tfds:")


def test_unprepared_tfds_folder_gives_none_without_downloading_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where TFDS's mkdtemp would leave its folder
    (tmp_path / "tfds" / "mnist" / "3.0.1").mkdir(parents=True)  # a folder, but nothing prepared in it
    t = time.monotonic()
    assert data.tfds_prepared("mnist", str(tmp_path / "tfds")) is None
    assert time.monotonic() - t < 30
    assert list(scratch.iterdir()) == [] and tempfile.tempdir == str(scratch)


def test_a_tfds_dir_without_the_dataset_is_not_opened(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def fail(*args, **kwargs):
        raise AssertionError("tfds.builder called for a data dir with no folder for the dataset")

    monkeypatch.setattr(tfds, "builder", fail)
    (tmp_path / "fashion_mnist").mkdir()  # another dataset's folder
    assert data.tfds_prepared("mnist", str(tmp_path)) is None
