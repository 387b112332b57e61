"""Fetches the four MNIST / Fashion-MNIST IDX files, verified and cached, without TensorFlow.

tensorflow-datasets can only *prepare* a dataset (download and convert it) with
TensorFlow installed. These datasets are just four gzipped IDX files, so we fetch
them ourselves from the URLs tensorflow-datasets registers, check each against the
size and sha256 it publishes (its `url_checksums/*.txt`, read from the installed
package without importing it), and keep them in a cache folder that
`irnn_jax.data.read_idx` / `load_idx_dir` then read. A file already cached with the
right checksum is reused without touching the network, so a second run works offline.
"""

import dataclasses
import hashlib
import importlib.util
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path

from absl import logging

from irnn_jax.data import DataError, file_sha256

# Relative to the tensorflow_datasets package folder; one `URL\tSIZE\tSHA256\tFILENAME` per line.
CHECKSUM_FILES = {"mnist": "url_checksums/mnist.txt", "fashion_mnist": "url_checksums/fashion_mnist.txt"}
FILE_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """Where one file comes from and what it must be: byte size and hex sha256."""

    url: str
    size: int
    sha256: str


def _checksum_file(dataset: str) -> Path:
    if dataset not in CHECKSUM_FILES:
        raise DataError(f"no download known for dataset {dataset!r}; expected one of {sorted(CHECKSUM_FILES)}")
    spec = importlib.util.find_spec("tensorflow_datasets")  # finds the package without importing it
    roots = list(spec.submodule_search_locations or [os.path.dirname(spec.origin or "")]) if spec else []
    for root in roots:
        path = Path(root) / CHECKSUM_FILES[dataset]
        if path.is_file():
            return path
    raise DataError(
        f"cannot find tensorflow-datasets' checksum file {CHECKSUM_FILES[dataset]} (is tensorflow-datasets "
        f"installed? searched: {roots or 'no tensorflow_datasets package'}); it gives the URLs and sha256 "
        f"of {dataset}. Alternatively pass --config.data_dir=DIR with a folder holding the four IDX files."
    )


def published_files(dataset: str) -> dict[str, FileSpec]:
    """The four IDX files of `dataset` as tensorflow-datasets registers them: name -> FileSpec."""
    path = _checksum_file(dataset)
    specs = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 4 or not fields[1].isdigit() or len(fields[2]) != 64:
            raise DataError(f"{path}:{number}: expected URL<TAB>SIZE<TAB>SHA256<TAB>FILENAME, got {line!r}")
        url, size, sha256, name = fields
        specs[name] = FileSpec(url, int(size), sha256.lower())
    missing = [name for name in FILE_NAMES if name not in specs]
    if missing:
        raise DataError(f"{path} lists no {', '.join(missing)}")
    return {name: specs[name] for name in FILE_NAMES}


def default_cache_dir(dataset: str) -> Path:
    """`$IRNN_JAX_DATA/<dataset>`, else `$XDG_CACHE_HOME/irnn_jax/<dataset>` (default `~/.cache`)."""
    if os.environ.get("IRNN_JAX_DATA"):
        return Path(os.environ["IRNN_JAX_DATA"]).expanduser() / dataset
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "irnn_jax" / dataset


def _probe(url: str, timeout: float, dataset: str, cache_dir: Path) -> None:
    """Raises DataError at once when the host serving `url` (or its proxy) takes no TCP connection."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise DataError(
            f"cannot download {dataset}: {host}:{port} is unreachable ({e}; no network?). Either point the run "
            f"at a folder holding the four IDX files with --config.data_dir=DIR (for Fashion-MNIST, Debian's "
            f"package dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist), or copy "
            f"{', '.join(FILE_NAMES)} into {cache_dir}."
        ) from e


def _download(name: str, spec: FileSpec, folder: Path, timeout: float) -> None:
    """Downloads to NAME.part-PID (one per process: two runs may fetch at once), checks size and
    sha256, then renames atomically to NAME."""
    part, digest, size = folder / f"{name}.part-{os.getpid()}", hashlib.sha256(), 0
    logging.info("downloading %s (%d bytes) to %s", spec.url, spec.size, folder)
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout) as response, open(part, "wb") as out:
            while (chunk := response.read(_CHUNK)) and size <= spec.size:
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        actual = digest.hexdigest()
        if size != spec.size or actual != spec.sha256:
            raise DataError(
                f"{name} downloaded from {spec.url} does not match its published checksum: expected "
                f"sha256 {spec.sha256} ({spec.size} bytes), got sha256 {actual} ({size} bytes"
                f"{' or more, download stopped' if size > spec.size else ''})"
            )
        os.replace(part, folder / name)
    except (OSError, HTTPException) as e:  # URLError, HTTPError and timeouts are OSErrors
        part.unlink(missing_ok=True)
        raise DataError(f"downloading {name} from {spec.url} failed: {e}") from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def fetch_idx(
    dataset: str,
    cache_dir: Path | None = None,
    files: dict[str, FileSpec] | None = None,
    probe_timeout: float = 5.0,
    timeout: float = 60.0,
) -> Path:
    """Returns a folder holding the verified IDX files of `dataset`, downloading those not cached.

    `files` (name -> FileSpec) defaults to `published_files(dataset)`; `cache_dir` to
    `default_cache_dir(dataset)`. Raises DataError, with advice, when a file cannot be had.
    """
    files = published_files(dataset) if files is None else files
    cache_dir = Path(cache_dir if cache_dir is not None else default_cache_dir(dataset)).expanduser()
    missing = []
    for name, spec in files.items():
        path = cache_dir / name
        if path.is_file():
            if path.stat().st_size == spec.size and file_sha256(path) == spec.sha256:
                continue
            logging.warning("%s does not match its published size/sha256; downloading it again", path)
        missing.append(name)
    if missing:
        _probe(files[missing[0]].url, probe_timeout, dataset, cache_dir)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the cache folder {cache_dir}: {e}; set IRNN_JAX_DATA=DIR") from e
        for name in missing:
            _download(name, files[name], cache_dir, timeout)
    return cache_dir
