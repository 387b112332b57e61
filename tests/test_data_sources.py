"""Where the data comes from: the shipped MNIST, the order of sources, and the fingerprint every run
records. Only the first two tests read the shipped copy; the rest ship a test-made one."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from experiments.configs import pixel_mnist
from irnn_jax import config_check, data, download, input_pipeline, loop
from tests.conftest import tiny_config, write_idx_dir

# MNIST's published class counts.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_the_shipped_mnist_matches_its_checksums_and_mnist():
    folder = data.embedded_dir("mnist")
    assert folder is not None and data.shipped_datasets() == ["mnist"]
    listed = {line.split("  ")[1] for line in (folder / data.SUMS_FILE).read_text().splitlines()}
    assert listed == {name + ".gz" for name in data.IDX_FILES.values()}
    ds = data.load_embedded("mnist")  # verifies every sum first
    assert ds.train.inputs.shape == (60_000, 28, 28) and ds.test.inputs.shape == (10_000, 28, 28)
    assert np.bincount(ds.train.targets).tolist() == TRAIN_COUNTS
    assert np.bincount(ds.test.targets).tolist() == TEST_COUNTS
    assert ds.source.startswith("embedded:")


def test_a_config_without_data_dir_reads_the_shipped_mnist_when_tfds_has_not_prepared_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(download, "fetch_idx", lambda *a, **k: pytest.fail("the download was tried"))
    ds = input_pipeline.load_dataset(pixel_mnist.get_config("keras"))
    assert ds.source == f"embedded:{data.embedded_dir('mnist')}" and len(ds.train) == 60_000


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A test-made 'mnist' shipped in place of the real one: its folder."""
    root = tmp_path / "embedded"
    folder = write_idx_dir(root / "mnist", 24, 8)
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(folder.glob("*.gz"))]
    (folder / data.SUMS_FILE).write_text("\n".join(sums) + "\n")
    monkeypatch.setattr(data, "EMBEDDED_ROOT", root)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # nothing prepared there
    return folder


def test_a_damaged_shipped_file_is_named_and_never_used(shipped):
    f = shipped / "train-labels-idx1-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 1  # still a readable gzip up to its CRC; only the checksum can tell
    f.write_bytes(bytes(raw))
    c = tiny_config("")
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz is damaged.*was not used"):
        input_pipeline.load_dataset(c)
    f.unlink()
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz cannot be read"):
        input_pipeline.load_dataset(c)


def _fake_download(folder):
    def fetch_idx(dataset, *args, **kwargs):
        return folder

    return fetch_idx


def test_the_order_of_sources(shipped, tmp_path, monkeypatch):
    """data_dir, then prepared TFDS, then the shipped copy, then the download; data_source picks one."""
    import tensorflow_datasets as tfds

    elsewhere = write_idx_dir(tmp_path / "elsewhere", 16, 8)
    downloaded = write_idx_dir(tmp_path / "downloaded", 20, 8)
    monkeypatch.setattr(download, "fetch_idx", _fake_download(downloaded))
    kind = lambda c: input_pipeline.load_dataset(c).source.split(":")[0]  # noqa: E731

    assert kind(tiny_config(elsewhere)) == "data_dir"
    assert kind(tiny_config("")) == "embedded"
    assert kind(tiny_config("", data_source="download")) == "download"
    assert kind(tiny_config("", dataset="fashion_mnist")) == "download"  # nothing shipped for it
    with pytest.raises(data.DataError, match="has not prepared mnist"):
        kind(tiny_config("", data_source="tfds"))
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    (tmp_path / "tfds" / "mnist").mkdir(parents=True)  # where TFDS keeps a prepared mnist
    with tfds.testing.mock_data(num_examples=6):
        assert kind(tiny_config("")) == "tfds"  # a prepared TFDS folder comes before the shipped copy
        assert kind(tiny_config("", data_source="embedded")) == "embedded"


def test_data_dir_with_another_source_is_refused():

    with pytest.raises(config_check.ConfigError, match="data_dir and data_source name two sources"):
        config_check.validate_config(tiny_config("/some/dir", data_source="download"))
    with pytest.raises(config_check.ConfigError, match="data_source must be one of"):
        config_check.validate_config(tiny_config("", data_source="internet"))


def test_the_fingerprint_names_the_arrays_not_the_files(tmp_path):
    a = data.load_idx_dir(write_idx_dir(tmp_path / "a", 8, 4, gz=True), "mnist")
    b = data.load_idx_dir(write_idx_dir(tmp_path / "b", 8, 4, gz=False), "mnist", kind="download")
    fa, fb = data.fingerprint(a), data.fingerprint(b)
    assert fa["source"] != fb["source"] and data.same_arrays(fa, fb)
    inputs = a.test.inputs.copy()
    inputs[3, 10, 10] ^= 1
    changed = data.Dataset("mnist", a.train, data.Split(inputs, a.test.targets), "data_dir:elsewhere")
    fc = data.fingerprint(changed)
    assert fc["train_sha256"] == fa["train_sha256"] and fc["test_sha256"] != fa["test_sha256"]


def test_run_json_records_the_data_and_the_steps_of_each_session(tmp_path, idx_dir):
    c = tiny_config(idx_dir, num_train_steps=8)
    loop.train_and_evaluate(c, tmp_path)
    c.num_train_steps = 12
    loop.train_and_evaluate(c, tmp_path)
    sessions = json.loads((tmp_path / "run.json").read_text())["sessions"]
    expected = data.fingerprint(data.load_idx_dir(idx_dir, "mnist"))
    assert [s["data"] for s in sessions] == [expected, expected]
    assert [(s["start_step"], s["end_step"], s["outcome"]) for s in sessions] == [
        (0, 8, "finished"),
        (8, 12, "finished"),
    ]


def test_a_resume_on_other_data_is_refused_unless_asked(tmp_path, idx_dir):
    other = write_idx_dir(tmp_path / "other", 96, 40)
    shutil.copy(other / "train-images-idx3-ubyte.gz", tmp_path / "keep.gz")
    data.write_idx(other / "train-images-idx3-ubyte.gz", 255 - data.read_idx(tmp_path / "keep.gz", 3))
    workdir = tmp_path / "w"
    loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=4), workdir)
    before = (workdir / "run.json").read_text()
    with pytest.raises(data.DataMismatchError, match=r"train_sha256 .* differ .*--allow_data_change"):
        loop.train_and_evaluate(tiny_config(other, num_train_steps=8), workdir)
    assert (workdir / "run.json").read_text() == before  # refused before anything was written
    result = loop.train_and_evaluate(tiny_config(other, num_train_steps=8), workdir, allow_data_change=True)
    assert result.step == 8
    # Allowed once is not allowed for good: the changed data still is not the first session's.
    with pytest.raises(data.DataMismatchError, match=r"first session trained on other data"):
        loop.train_and_evaluate(tiny_config(other, num_train_steps=12), workdir)
    assert loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=12), workdir).step == 12


def test_a_plain_file_beside_the_shipped_gz_is_never_read(shipped):
    """An all-zero t10k-labels-idx1-ubyte put beside the shipped .gz was once read first, unchecked
    (test accuracy 0 under source "embedded"): the shipped copy is read only as its sums vouch for it."""
    want = data.load_embedded("mnist").test.targets
    assert want.any()
    data.write_idx(shipped / "t10k-labels-idx1-ubyte", np.zeros(len(want), np.uint8))
    ds = input_pipeline.load_dataset(tiny_config(""))
    assert ds.source.startswith("embedded:") and np.array_equal(ds.test.targets, want)


def test_a_shipped_copy_without_its_sums_is_named_as_such(shipped):
    (shipped / data.SUMS_FILE).unlink()
    with pytest.raises(data.DataError, match=r"lost its checksum file SHA256SUMS.*were not used"):
        input_pipeline.load_dataset(tiny_config(""))
