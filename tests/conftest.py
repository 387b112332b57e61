"""Shared fixtures: small IDX datasets written by the tests, tiny configs."""

import numpy as np
import pytest

from experiments.configs import pixel_mnist
from irnn_jax import data


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
