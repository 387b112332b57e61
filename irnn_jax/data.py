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


def read_idx(path: str | os.PathLike, expected_dims: int, raw: bytes | None = None) -> np.ndarray:
    """Reads one IDX file (plain or gzip) of unsigned bytes; errors name the file. `raw`: the file's
    bytes, already read (and checked) by the caller: decoded as they are, the file is not read again."""
    path = Path(path)
    if raw is None:
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
        splits[split] = _image_split(img_path, read_idx(img_path, 3), lbl_path, read_idx(lbl_path, 1))
    return Dataset(name, splits["train"], splits["test"], source=f"{kind}:{data_dir}")


def _image_split(img_path: Path, images: np.ndarray, lbl_path: Path, labels: np.ndarray) -> Split:
    """The images and labels of one split, checked against each other; errors name the files."""
    if images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{img_path} holds images of shape {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{lbl_path} has label {labels.max()}, expected 0..9")
    return Split(images, labels.astype(np.int32))


# ---------------------------------------------------------------------- embedded


def embedded_dir(name: str) -> Path | None:
    """The folder of the copy of `name` shipped in the package (whole or not), or None when none is shipped."""
    folder = EMBEDDED_ROOT / name
    return folder if folder.is_dir() and not name.startswith("_") else None


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (OSError when it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _restore_hint(folder: Path, file_name: str) -> str:
    clone = f"`git checkout -- {folder.name}/{file_name}` in a clone"
    return f"reinstall irnn-jax (or {clone}), or pass --config.data_dir=DIR"


def verified_embedded(folder: Path) -> dict[str, bytes]:
    """The bytes of every file that FOLDER/SHA256SUMS lists, each read once and checked against its
    sum: what the caller decodes is what was checked. DataError naming the first that differs."""
    sums = folder / SUMS_FILE
    try:
        lines = sums.read_text().splitlines()
    except OSError as e:
        raise DataError(
            f"the shipped copy of {folder.name!r} in {folder} has lost its checksum file {SUMS_FILE} "
            f"({e.strerror}): its files cannot be checked and were not used; {_restore_hint(folder, SUMS_FILE)}"
        ) from e
    files = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        expected, _, file_name = line.partition("  ")
        path = folder / file_name
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(
                f"the embedded copy's file {path} cannot be read ({e.strerror}); {_restore_hint(folder, file_name)}"
            ) from e
        actual = hashlib.sha256(raw).hexdigest()
        if actual != expected:
            raise DataError(
                f"the embedded copy's file {path} is damaged: its SHA-256 is {actual}, but "
                f"{sums}:{number} records {expected}. It was not used: {_restore_hint(folder, file_name)}."
            )
        files[file_name] = raw
    return files


def load_embedded(name: str) -> Dataset:
    """The copy of `name` shipped in the package: its four `.gz` IDX files as SHA256SUMS vouches for
    them, decoded from the very bytes that were checked. Nothing else in the folder is read (a plain
    `t10k-labels-idx1-ubyte` put beside the `.gz` files is ignored, as any other file there)."""
    folder = embedded_dir(name)
    if folder is None:
        raise DataError(f"irnn-jax ships no copy of {name!r} (it ships: {shipped_datasets() or 'none'})")
    files = verified_embedded(folder)
    splits = {}
    for split in ("train", "test"):
        arrays = []
        for kind, dims in (("images", 3), ("labels", 1)):
            file_name = IDX_FILES[(split, kind)] + ".gz"
            if file_name not in files:
                raise DataError(
                    f"{folder / SUMS_FILE} lists no {file_name}: the shipped copy is incomplete; "
                    f"{_restore_hint(folder, SUMS_FILE)}"
                )
            arrays += [folder / file_name, read_idx(folder / file_name, dims, raw=files[file_name])]
        splits[split] = _image_split(*arrays)
    return Dataset(name, splits["train"], splits["test"], source=f"embedded:{folder}")


def shipped_datasets() -> list[str]:
    """Names of the datasets shipped in the package."""
    return sorted(p.name for p in EMBEDDED_ROOT.iterdir() if embedded_dir(p.name))


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
