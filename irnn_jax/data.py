"""Datasets as uint8 arrays, sequence views, and the batch for each step.

Two sources give the same arrays:

* a local folder with the four standard IDX files (`train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`,
  each plain or `.gz`), the format of every MNIST mirror and of Debian's
  `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`);
* tensorflow-datasets (`tfds`), read through its random-access, NumPy-only
  `array_record` data source.

The batch for training step N is a pure function of (seed, N): the epoch's
order is a permutation seeded by (seed, epoch), so a resumed run sees exactly
the batches the uninterrupted run would have seen.
"""

import dataclasses
import functools
import gzip
import os
import socket
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np

IMAGE_DATASETS = ("mnist", "fashion_mnist")
DATASETS = (*IMAGE_DATASETS, "adding")
TASKS = ("pixel", "permuted", "row", "adding")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)

IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

# Where TFDS fetches MNIST from; probed with a short timeout before a download,
# because TFDS itself retries for minutes when there is no network.
_DOWNLOAD_PROBE = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 5.0


class DataError(RuntimeError):
    """A dataset could not be found or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Split:
    """Images: uint8 (N, 28, 28) and int32 labels (N,). Adding problem:
    float32 sequences (N, T, 2) and float32 sums (N,)."""

    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    source: str  # where the arrays came from, for logs and the results page


# --------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike, expected_dims: int) -> np.ndarray:
    """Reads one IDX file (plain or gzip) of unsigned bytes; errors name the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from e
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path} is not a complete gzip file ({e})") from e
    if len(raw) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes: magic number "
            f"{raw[:4].hex()} (expected 0000080{expected_dims})"
        )
    if ndim != expected_dims:
        raise DataError(f"{path} has {ndim} dimensions, expected {expected_dims}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} bytes of data, but its header "
            f"promises shape {shape} = {expected} bytes (truncated or corrupt file)"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes uint8 `array` as an IDX file (gzip when the name ends in .gz)."""
    array = np.ascontiguousarray(array, np.uint8)
    raw = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    Path(path).write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)


def _find_idx(data_dir: Path, base: str) -> Path:
    for name in (base, base + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    # Some mirrors use a dot before "idx" (t10k-images.idx3-ubyte).
    dotted = base.replace("-idx", ".idx")
    for name in (dotted, dotted + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(
        f"{data_dir} has no {base} (or {base}.gz). A data_dir must hold the four "
        f"standard files: {', '.join(IDX_FILES.values())} (each plain or .gz)."
    )


def load_idx_dir(data_dir: str | os.PathLike, name: str) -> Dataset:
    """Loads the four standard IDX files from a folder."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DataError(f"data_dir {data_dir} does not exist or is not a folder")
    splits = {}
    for split in ("train", "test"):
        img_path = _find_idx(data_dir, IDX_FILES[(split, "images")])
        lbl_path = _find_idx(data_dir, IDX_FILES[(split, "labels")])
        images = read_idx(img_path, 3)
        labels = read_idx(lbl_path, 1)
        if images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{img_path} holds images of shape {images.shape[1:]}, expected 28x28")
        if len(images) != len(labels):
            raise DataError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
        if labels.size and labels.max() >= NUM_CLASSES:
            raise DataError(f"{lbl_path} has label {labels.max()}, expected 0..9")
        splits[split] = Split(images, labels.astype(np.int32))
    return Dataset(name, splits["train"], splits["test"], source=f"idx:{data_dir}")


# -------------------------------------------------------------------------- TFDS


def can_reach(host: str, port: int, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to host:port opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_message(name: str, tfds_dir: str) -> str:
    return (
        f"tensorflow-datasets has not prepared {name!r} in {tfds_dir} and cannot download "
        f"it: {_DOWNLOAD_PROBE[0]} is unreachable (no network?). Either point the run at "
        f"a folder holding the four IDX files with --config.data_dir=DIR (for "
        f"Fashion-MNIST, Debian's dataset-fashion-mnist installs them in "
        f"/usr/share/datasets/fashion-mnist), or prepare the dataset on a machine with "
        f"network and copy its TFDS folder here (--config.tfds_data_dir=DIR)."
    )


def load_tfds(name: str, tfds_data_dir: str = "") -> Dataset:
    """Loads a dataset through tfds' array_record data source, downloading if needed."""
    import tensorflow_datasets as tfds  # slow import; only this path needs it

    tfds_dir = tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or str(Path("~/tensorflow_datasets").expanduser())
    builder = tfds.builder(name, data_dir=tfds_dir, file_format="array_record")
    if not builder.is_prepared():
        if not can_reach(*_DOWNLOAD_PROBE):
            raise DataError(_offline_message(name, tfds_dir))
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        except ImportError as e:
            raise DataError(
                f"preparing {name!r} with tensorflow-datasets needs TensorFlow ({e}). "
                f"Install it (pip install 'irnn-jax[tfds-prepare]') or use "
                f"--config.data_dir with the four IDX files."
            ) from e
    splits = {}
    for split in ("train", "test"):
        source = builder.as_data_source(split=split)
        # __getitem__ one record at a time: __getitems__ is broken under
        # tfds.testing.mock_data in tfds 4.9.10, and this runs once per run.
        records = [source[i] for i in range(len(source))]
        if not records:
            raise DataError(f"tfds split {name}:{split} in {tfds_dir} is empty")
        images = np.stack([np.asarray(r["image"], np.uint8).reshape(IMAGE_SHAPE) for r in records])
        labels = np.asarray([int(r["label"]) for r in records], np.int32)
        splits[split] = Split(images, labels)
    return Dataset(name, splits["train"], splits["test"], source=f"tfds:{tfds_dir}")


def load(config) -> Dataset:
    """The dataset a config asks for: generated, from `config.data_dir`, or TFDS."""
    if config.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {config.dataset!r}")
    if config.dataset == "adding":
        from irnn_jax import adding

        return adding.load(config)
    if config.data_dir:
        return load_idx_dir(config.data_dir, config.dataset)
    return load_tfds(config.dataset, config.tfds_data_dir)


# ----------------------------------------------------------------- sequence views


def is_regression(config) -> bool:
    """The adding problem is regression (one output, MSE); the rest classify."""
    return config.dataset == "adding"


def num_outputs(config) -> int:
    return 1 if is_regression(config) else NUM_CLASSES


def sequence_shape(config) -> tuple[int, int]:
    """(time steps, values per step) of the model's input."""
    if config.task in ("pixel", "permuted"):
        return (784, 1)
    if config.task == "row":
        return (28, 28)
    if config.task == "adding":
        return (config.sequence_length, 2)
    raise ValueError(f"task must be one of {TASKS}, got {config.task!r}")


def pixel_permutation(seed: int) -> np.ndarray:
    """The fixed permutation of the 784 pixels for the permuted task."""
    return np.random.Generator(np.random.PCG64(seed)).permutation(784)


def make_sequence_fn(config):
    """Returns f(batch inputs) -> float32 sequences B x T x C, run inside jit.

    Images travel to the device as uint8 and become floats there: (x / 255 - input_mean) / input_std.
    """
    steps, width = sequence_shape(config)
    if config.task == "adding":
        return lambda x: x.astype(jnp.float32)
    perm = jnp.asarray(pixel_permutation(config.permutation_seed)) if config.task == "permuted" else None

    mean, std = config.get("input_mean", 0.0), config.get("input_std", 1.0)

    def to_sequences(images):
        x = images.astype(jnp.float32) / 255.0
        if (mean, std) != (0.0, 1.0):
            x = (x - mean) / std
        x = x.reshape(x.shape[0], steps * width)  # row-major, as image.reshape(784, 1)
        if perm is not None:
            x = x[:, perm]
        return x.reshape(x.shape[0], steps, width)

    return to_sequences


# ---------------------------------------------------------------------- batches


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Keras' count: the last batch of an epoch may be partial."""
    return -(-num_examples // batch_size)


@functools.lru_cache(maxsize=64)  # a sweep asks for one order per run
def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Order of the training examples in one epoch, a pure function of its arguments."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(num_examples)


def batch_indices(step: int, num_examples: int, batch_size: int, seed: int, shuffle: bool):
    """Example indices and a validity mask (B,) for training step `step` (0-based).

    The last batch of an epoch is padded to `batch_size` with mask 0, so every
    step has the same shape (one compilation) and the loss is the mean over
    the real examples only, as Keras computes it on its short last batch.
    """
    spe = steps_per_epoch(num_examples, batch_size)
    epoch, i = divmod(step, spe)
    order = epoch_order(num_examples, seed, epoch, shuffle)
    return _pad(order[i * batch_size : (i + 1) * batch_size], batch_size)


def _pad(idx: np.ndarray, batch_size: int):
    mask = np.zeros(batch_size, np.float32)
    mask[: len(idx)] = 1.0
    return np.concatenate([idx, np.zeros(batch_size - len(idx), idx.dtype)]), mask


def _gather(split: Split, idx: np.ndarray, mask: np.ndarray) -> dict:
    return {"inputs": split.inputs[idx], "targets": split.targets[idx], "mask": mask}


def batch_at(split: Split, step: int, batch_size: int, seed: int, shuffle: bool = True) -> dict:
    """The training batch for `step`: inputs, targets and a float32 mask."""
    return _gather(split, *batch_indices(step, len(split), batch_size, seed, shuffle))


def eval_batches(split: Split, batch_size: int):
    """Yields the whole split in order, the last batch padded with mask 0."""
    n = len(split)
    for start in range(0, n, batch_size):
        yield _gather(split, *_pad(np.arange(start, min(start + batch_size, n)), batch_size))
