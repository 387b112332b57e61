"""Shared fixtures: small IDX datasets written by the tests, tiny configs, helpers."""

import atexit
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments.configs import pixel_mnist
from irnn_jax import checkpoint, data, loop, metrics, train

ROOT = Path(__file__).resolve().parent.parent  # the repository: where `python -m experiments.*` runs

# One persistent XLA compilation cache for the whole session, subprocesses included (they inherit the
# environment): the tests compile the same few programs dozens of times. Set before JAX starts.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="irnn-jax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)  # ours: gone with the session
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def make_images(n: int, seed: int):
    """n 28x28 uint8 images whose label is which of 10 horizontal bands is brightest."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 * y + 4 : 2 * y + 6, :] = 250
    return images, labels


def write_idx_dir(path, n_train=96, n_test=40, gz=True):
    path.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = make_images(n, seed)
        data.write_idx(path / (data.IDX_FILES[(split, "images")] + suffix), images)
        data.write_idx(path / (data.IDX_FILES[(split, "labels")] + suffix), labels)
    return path


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    return write_idx_dir(tmp_path_factory.mktemp("idx"))


def tiny_config(data_dir, preset="keras", **overrides):
    """A preset shrunk for tests: 8 hidden units, batch 4, the real 784 steps."""
    c = pixel_mnist.get_config(preset)
    c.data_dir = str(data_dir)
    c.hidden_size = 8
    c.batch_size = 4
    c.eval_batch_size = 16
    c.num_train_steps = 12
    c.eval_every_steps = 5
    c.checkpoint_every_steps = 4
    c.steps_per_call = 3
    c.progress_bar = False
    for k, v in overrides.items():
        c[k] = v
    return c


def strip_timing(rows: list[dict]) -> list[dict]:
    """Metric rows without the fields that vary from run to run (metrics.TIMING_FIELDS)."""
    return [{k: v for k, v in r.items() if k not in metrics.TIMING_FIELDS} for r in rows]


def read_rows(workdir) -> list[dict]:
    """WORKDIR/metrics.jsonl without its timing fields."""
    return strip_timing(metrics.read_rows(Path(workdir) / "metrics.jsonl"))


def train_steps(config, num_steps: int, dataset=None):
    """(setup, state after `num_steps` training steps), through the loop's own setup and jitted chunk."""
    s = loop.setup(config, dataset)
    return s, s.chunk_fn(s.state, s.train_data, *s.train_indices(0, num_steps))


class SigtermAfterFirstRow:
    """Context manager: SIGTERM to this process once `path` (a metrics.jsonl) holds an evaluation row,
    from a watcher thread, as a scheduler would send it: at a moment the run does not choose."""

    def __init__(self, path):
        self.path = Path(path)
        self.sent = threading.Event()
        self._done = threading.Event()

    def _watch(self):
        while not self._done.is_set():
            if self.path.exists() and self.path.read_text().count("\n") >= 1:
                os.kill(os.getpid(), signal.SIGTERM)
                self.sent.set()
                return
            time.sleep(0.005)

    def __enter__(self):
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        return False


def restore_final_state(workdir, config, step: int):
    """The state of WORKDIR's newest checkpoint, which must be `step`, restored and verified as a resume
    restores it (`config`: the run's config; fields that may change on resume may differ)."""
    state = train.create_state(config, step)
    ckpt = checkpoint.Checkpointer(Path(workdir) / "checkpoints")
    try:
        restored_step, restored, _ = ckpt.restore_compatible(
            jax.eval_shape(lambda: state), config.to_dict(), checkpoint.param_shapes(state.params)
        )
    finally:
        ckpt.close()
    assert restored_step == step
    return restored
