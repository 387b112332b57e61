"""irnn_jax.download against a local HTTP server; never touches the real network."""

import functools
import hashlib
import http.server
import logging
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from irnn_jax import data, download
from irnn_jax.data import DataError

NAMES = download.FILE_NAMES


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """A proxy from the environment would route the requests for 127.0.0.1 elsewhere."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def served(tmp_path):
    """Four small IDX.gz files served over HTTP on 127.0.0.1: (folder, spec per name, Server)."""
    folder = tmp_path / "served"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 5)):
        data.write_idx(folder / f"{data.IDX_FILES[(split, 'images')]}.gz", rng.integers(0, 256, (n, 28, 28)))
        data.write_idx(folder / f"{data.IDX_FILES[(split, 'labels')]}.gz", np.arange(n) % 10)
    with Server(folder) as server:
        specs = {name: spec_of((folder / name).read_bytes(), f"{server.url}/{name}") for name in NAMES}
        yield folder, specs, server


class Server:
    """ThreadingHTTPServer in a daemon thread; counts the GET requests it answers."""

    def __init__(self, folder):
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.requests = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self):
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            self.running = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def spec_of(raw: bytes, url: str) -> download.FileSpec:
    return download.FileSpec(url, len(raw), hashlib.sha256(raw).hexdigest())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_verifies_caches_and_loads(served, tmp_path):
    folder, specs, server = served
    cache = tmp_path / "cache"
    assert download.fetch_idx("mnist", cache, files=specs) == cache
    for name in NAMES:
        assert (cache / name).read_bytes() == (folder / name).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES)  # no .part left
    assert sorted(server.requests) == sorted(f"/{name}" for name in NAMES)
    ds = data.load_idx_dir(cache, "mnist")
    assert ds.train.inputs.shape == (12, 28, 28) and ds.train.inputs.dtype == np.uint8
    assert ds.test.inputs.shape == (5, 28, 28)
    np.testing.assert_array_equal(ds.test.targets, np.arange(5))
    assert ds.train.targets.dtype == np.int32


def test_second_call_uses_cache_without_network(served, tmp_path, monkeypatch):
    _, specs, server = served
    cache = tmp_path / "cache"
    download.fetch_idx("mnist", cache, files=specs)
    server.stop()

    def no_network(*args, **kwargs):
        raise AssertionError("network used although every file is cached")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    assert download.fetch_idx("mnist", cache, files=specs) == cache
    assert len(server.requests) == 4


def test_checksum_mismatch_raises_and_keeps_nothing(served, tmp_path):
    folder, specs, _ = served
    name = NAMES[1]
    raw = bytearray((folder / name).read_bytes())
    raw[-1] ^= 0xFF  # same size, other bytes
    (folder / name).write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        download.fetch_idx("mnist", cache, files=specs)
    message = str(e.value)
    assert name in message and specs[name].url in message
    assert specs[name].sha256 in message and hashlib.sha256(raw).hexdigest() in message
    assert not (cache / name).exists()
    assert not list(cache.glob("*.part*"))


def test_http_error_names_url(served, tmp_path):
    _, specs, server = served
    specs = {**specs, NAMES[0]: download.FileSpec(f"{server.url}/nothing-here.gz", 1, "0" * 64)}
    with pytest.raises(DataError, match=re.escape(f"{server.url}/nothing-here.gz")):
        download.fetch_idx("mnist", tmp_path / "cache", files=specs)
    assert not list((tmp_path / "cache").iterdir())


def test_corrupt_cached_file_is_downloaded_again(served, tmp_path, caplog):
    folder, specs, server = served
    cache = tmp_path / "cache"
    download.fetch_idx("mnist", cache, files=specs)
    name = NAMES[2]
    raw = bytearray((cache / name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: only the sha256 can tell
    (cache / name).write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        download.fetch_idx("mnist", cache, files=specs)
    assert (cache / name).read_bytes() == (folder / name).read_bytes()
    assert server.requests[4:] == [f"/{name}"]  # only the corrupt file was fetched again
    assert any(name in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_unreachable_host_fails_fast_with_advice(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    specs = {name: download.FileSpec(f"{url}/{name}", 10, "0" * 64) for name in NAMES}
    cache = tmp_path / "cache"
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        download.fetch_idx("mnist", cache, files=specs, probe_timeout=2.0)
    assert time.monotonic() - start < 10
    assert "--config.data_dir" in str(e.value) and str(cache) in str(e.value)


def test_published_files_parses_installed_checksums():
    for dataset in ("mnist", "fashion_mnist"):
        specs = download.published_files(dataset)
        assert list(specs) == list(NAMES)
        for name, spec in specs.items():
            assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
            assert spec.size > 0
            assert spec.url.startswith(("https://", "http://")) and spec.url.endswith(name)
    with pytest.raises(DataError, match="cifar10"):
        download.published_files("cifar10")


def test_published_files_does_not_import_tensorflow_datasets():
    code = (
        "import sys; from irnn_jax import download; download.published_files('mnist'); "
        "assert 'tensorflow_datasets' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("IRNN_JAX_DATA", str(tmp_path / "d"))
    assert download.default_cache_dir("mnist") == tmp_path / "d" / "mnist"
    monkeypatch.delenv("IRNN_JAX_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert download.default_cache_dir("fashion_mnist") == tmp_path / "x" / "irnn_jax" / "fashion_mnist"
