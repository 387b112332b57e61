"""Image datasets as uint8 arrays, from files; nothing else (`input_pipeline` makes batches).

Four sources give the same arrays:

* the copy of MNIST shipped in the package (`irnn_jax/embedded/mnist`, see its README.md),
  checked against its SHA-256 sums on every load;
* a local folder with the four standard IDX files (`train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`,
  each plain or `.gz`), the format of every MNIST mirror and of Debian's
  `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`);
* tensorflow-datasets (`tfds`), where it has prepared the dataset already, read through its
  random-access, NumPy-only `array_record` data source;
* the four published IDX files, downloaded by `irnn_jax.download` (no TensorFlow needed) and
  checked against the checksums tensorflow-datasets registers for them.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

IMAGE_DATASETS = ("mnist", "fashion_mnist")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)

EMBEDDED_ROOT = Path(__file__).resolve().parent / "embedded"
SUMS_FILE = "SHA256SUMS"

IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


class DataError(RuntimeError):
    """A dataset could not be found or read; the message says what to do."""


class DataMismatchError(DataError):
    """A run resumed on other arrays than those its checkpoint was trained on."""


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
    source: str  # KIND:WHERE, KIND one of SOURCE_KINDS: where the arrays came from, for logs and run.json
    validation: Split | None = None  # held out of the training set (input_pipeline.hold_out), or none


SOURCE_KINDS = ("embedded", "data_dir", "tfds", "download", "generated")


def fingerprint(dataset: Dataset) -> dict:
    """{'source', 'train_sha256', 'test_sha256'}: which arrays a run read, whatever the files.

    Each digest covers dtype, shape and bytes of a split's inputs, then of its targets, so the
    same digits give the same fingerprint from the embedded copy, a data_dir or TFDS."""
    out = {"source": dataset.source}
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        digest = hashlib.sha256()
        for a in (split.inputs, split.targets):
            a = np.ascontiguousarray(a)
            digest.update(f"{a.dtype.str} {list(a.shape)};".encode())
            digest.update(a.tobytes())
        out[f"{name}_sha256"] = digest.hexdigest()
    return out


def same_arrays(a: dict, b: dict) -> bool:
    """Whether two fingerprints name the same arrays (their sources may differ)."""
    return a["train_sha256"] == b["train_sha256"] and a["test_sha256"] == b["test_sha256"]


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


def load_idx_dir(data_dir: str | os.PathLike, name: str, kind: str = "data_dir") -> Dataset:
    """Loads the four standard IDX files from a folder; `kind` names the source in `Dataset.source`."""
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
    return Dataset(name, splits["train"], splits["test"], source=f"{kind}:{data_dir}")


# ---------------------------------------------------------------------- embedded


def embedded_dir(name: str) -> Path | None:
    """The folder of the copy of `name` shipped in the package, or None when none is shipped."""
    folder = EMBEDDED_ROOT / name
    return folder if (folder / SUMS_FILE).is_file() else None


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (OSError when it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_embedded(folder: Path) -> None:
    """Checks every file that FOLDER/SHA256SUMS lists; DataError naming the first that differs."""
    for number, line in enumerate((folder / SUMS_FILE).read_text().splitlines(), 1):
        if not line.strip():
            continue
        expected, _, file_name = line.partition("  ")
        path = folder / file_name
        try:
            actual = file_sha256(path)
        except OSError as e:
            raise DataError(
                f"the embedded copy's file {path} cannot be read ({e.strerror}); reinstall irnn-jax "
                f"(or `git checkout -- {path.name}` in a clone), or pass --config.data_dir=DIR"
            ) from e
        if actual != expected:
            raise DataError(
                f"the embedded copy's file {path} is damaged: its SHA-256 is {actual}, but "
                f"{folder / SUMS_FILE}:{number} records {expected}. It was not used. Restore it "
                f"(`git checkout -- {path.name}` in a clone, or reinstall irnn-jax), or pass --config.data_dir=DIR."
            )


def load_embedded(name: str) -> Dataset:
    """The copy of `name` shipped in the package, verified against its SHA-256 sums first."""
    folder = embedded_dir(name)
    if folder is None:
        raise DataError(f"irnn-jax ships no copy of {name!r} (it ships: {shipped_datasets() or 'none'})")
    verify_embedded(folder)
    return load_idx_dir(folder, name, kind="embedded")


def shipped_datasets() -> list[str]:
    """Names of the datasets shipped in the package."""
    return sorted(p.parent.name for p in EMBEDDED_ROOT.glob(f"*/{SUMS_FILE}"))


# -------------------------------------------------------------------------- TFDS


@contextlib.contextmanager
def _scratch_tempdir():
    """Points `tempfile` into a folder of its own for the block, and removes that folder after it.
    A TFDS builder of a dataset not prepared in its data_dir makes an empty temporary folder for
    metadata it would copy from GCS (DatasetInfo.initialize_from_bucket, tfds 4.9) and never removes
    it: one left in /tmp per run without this."""
    before = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="irnn_jax_") as scratch:
        tempfile.tempdir = scratch
        try:
            yield
        finally:
            tempfile.tempdir = before


def tfds_prepared(name: str, tfds_data_dir: str = "") -> Dataset | None:
    """The dataset from a folder where tensorflow-datasets has prepared it, or None if it has not.

    Preparing needs TensorFlow, so this never asks TFDS to download; `irnn_jax.download` fetches
    the IDX files instead. Without a folder for the dataset in the data dir (TFDS keeps each under
    DATA_DIR/NAME/) it returns None at once, without importing TFDS, which would warn of a
    "variant folder" that does not exist."""
    tfds_dir = tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or str(Path("~/tensorflow_datasets").expanduser())
    if not (Path(tfds_dir) / name).is_dir():
        return None
    import tensorflow_datasets as tfds  # slow import; only this path needs it

    with _scratch_tempdir():
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
