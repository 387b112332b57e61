"""Image datasets as uint8 arrays, from files; nothing else (`input_pipeline` makes batches).

Three sources give the same arrays:

* a local folder with the four standard IDX files (`train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`,
  each plain or `.gz`), the format of every MNIST mirror and of Debian's
  `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`);
* tensorflow-datasets (`tfds`), where it has prepared the dataset already, read through its
  random-access, NumPy-only `array_record` data source;
* the four published IDX files, downloaded by `irnn_jax.download` (no TensorFlow needed) and
  checked against the checksums tensorflow-datasets registers for them.
"""

import dataclasses
import gzip
import os
import struct
from pathlib import Path

import numpy as np

IMAGE_DATASETS = ("mnist", "fashion_mnist")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)

IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


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


def tfds_prepared(name: str, tfds_data_dir: str = "") -> Dataset | None:
    """The dataset from a folder where tensorflow-datasets has prepared it, or None if it has not.

    Preparing needs TensorFlow, so this never asks TFDS to download; `irnn_jax.download` fetches
    the IDX files instead."""
    import tensorflow_datasets as tfds  # slow import; only this path needs it

    tfds_dir = tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or str(Path("~/tensorflow_datasets").expanduser())
    builder = tfds.builder(name, data_dir=tfds_dir, file_format="array_record")
    if not builder.is_prepared():
        return None
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
