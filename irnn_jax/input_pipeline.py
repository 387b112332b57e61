"""The one batch path, from a loaded dataset to the model's input sequences.

Training and evaluation both go through it, and so do the tests:

1. `load_dataset(config)`: the task's arrays (`data` reads image files; `adding` generates).
2. `task_info(config)`: what the task is (classes or regression, sequence shape).
3. `put_split(split, mesh)`: a split held on the device(s), replicated, as uint8 images or float
   sequences.
4. `train_indices(...)` / `eval_indices(...)`: the example indices and validity masks of training
   steps [start, end) or of the whole test split. The batch for training step N is a pure function
   of (seed, N): the epoch's order is a permutation seeded by (seed, epoch), so a resumed run sees
   exactly the batches the uninterrupted run would have seen.
5. `gather(split_on_device, idx_B, mask_B)`: the batch, gathered on the device inside the jitted step.
6. `make_sequence_fn(config)`: the sequence view of a batch (pixel, permuted, row or adding), also
   inside the jitted step.
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from irnn_jax import adding, data, download, parallel

TASKS = ("pixel", "permuted", "row", "adding")
DATASETS = (*data.IMAGE_DATASETS, "adding")
# config.data_source: "auto" takes the first that has the data, in this order (data_dir aside).
DATA_SOURCES = ("auto", "tfds", "embedded", "download")


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What the model sees and predicts for a config's task."""

    regression: bool  # the adding problem: one output, squared error; the rest: 10 classes
    num_outputs: int
    sequence_shape: tuple[int, int]  # (time steps, values per step)


def task_info(config) -> TaskInfo:
    if config.task in ("pixel", "permuted"):
        shape = (784, 1)
    elif config.task == "row":
        shape = (28, 28)
    elif config.task == "adding":
        shape = (config.sequence_length, 2)
    else:
        raise ValueError(f"task must be one of {TASKS}, got {config.task!r}")
    regression = config.task == "adding"
    return TaskInfo(regression, 1 if regression else data.NUM_CLASSES, shape)


def load_dataset(config) -> data.Dataset:
    """The arrays a config asks for. The adding problem is generated. Images come from
    `config.data_dir` when it is set, else from `config.data_source`; its default, "auto", takes
    the first of these that has the dataset:

    1. a folder where tensorflow-datasets has prepared it (`tfds_data_dir`);
    2. the copy shipped in the package (MNIST only), checked against its SHA-256 sums;
    3. the four published IDX files, downloaded once, checked against their published checksums
       and kept for later runs (`download.fetch_idx`; offline it fails within seconds, with advice).

    "tfds", "embedded" or "download" takes that source only, and fails when it lacks the data."""
    if config.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {config.dataset!r}")
    if config.dataset == "adding":
        return adding.load(config)
    if config.data_dir:
        return data.load_idx_dir(config.data_dir, config.dataset)
    source = config.get("data_source", "auto")
    if source in ("auto", "tfds"):
        prepared = data.tfds_prepared(config.dataset, config.tfds_data_dir)
        if prepared is not None:
            return prepared
        if source == "tfds":
            raise data.DataError(
                f"tensorflow-datasets has not prepared {config.dataset} in "
                f"{config.tfds_data_dir or '$TFDS_DATA_DIR or ~/tensorflow_datasets'}; set tfds_data_dir, "
                f"or choose another data_source"
            )
    if source in ("auto", "embedded") and (source == "embedded" or data.embedded_dir(config.dataset)):
        return data.load_embedded(config.dataset)
    return data.load_idx_dir(download.fetch_idx(config.dataset), config.dataset, kind="download")


def hold_out(dataset: data.Dataset, size: int, seed: int) -> data.Dataset:
    """`dataset` with `size` training examples moved to a validation split: the first `size` of a fixed
    permutation of the training indices (seeded by `seed`), in their original order; the rest stay in
    the training split, in theirs. `size` 0 returns `dataset` unchanged. ValueError when `size` leaves
    no training example."""
    if size == 0:
        return dataset
    n = len(dataset.train)
    if not 0 < size < n:
        raise ValueError(f"validation_size must be below the {n} training examples, got {size}")
    held = np.zeros(n, bool)
    held[np.random.Generator(np.random.PCG64(seed)).permutation(n)[:size]] = True
    train = dataset.train
    pick = lambda mask: data.Split(train.inputs[mask], train.targets[mask])  # noqa: E731
    return dataclasses.replace(dataset, train=pick(~held), validation=pick(held))


# ----------------------------------------------------------------- sequence views


def pixel_permutation(seed: int) -> np.ndarray:
    """The fixed permutation of the 784 pixels for the permuted task."""
    return np.random.Generator(np.random.PCG64(seed)).permutation(784)


def make_sequence_fn(config):
    """Returns f(batch inputs) -> float32 sequences B x T x C, run inside jit.

    Images travel to the device as uint8 and become floats there: (x / 255 - input_mean) / input_std.
    """
    steps, width = task_info(config).sequence_shape
    if config.task == "adding":
        return lambda x: x.astype(jnp.float32)
    perm = jnp.asarray(pixel_permutation(config.permutation_seed)) if config.task == "permuted" else None
    mean, std = config.input_mean, config.input_std

    def to_sequences(images):
        x = images.astype(jnp.float32) / 255.0
        if (mean, std) != (0.0, 1.0):
            x = (x - mean) / std
        x = x.reshape(x.shape[0], steps * width)  # row-major, as image.reshape(784, 1)
        if perm is not None:
            x = x[:, perm]
        return x.reshape(x.shape[0], steps, width)

    return to_sequences


# ---------------------------------------------------------------------- indices


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Keras' count: the last batch of an epoch may be partial."""
    return -(-num_examples // batch_size)


@functools.lru_cache(maxsize=64)  # a sweep asks for one order per run
def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Order of the training examples in one epoch, a pure function of its arguments."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(num_examples)


def batch_indices(start: int, end: int, num_examples: int, batch_size: int, seed: int, shuffle: bool):
    """Example indices int32 (N, B) and validity masks float32 (N, B) of training steps [start, end).

    Steps count from 0. The last batch of an epoch is padded to `batch_size` with index 0 and mask
    0, so every step has the same shape (one compilation) and the loss is the mean over the real
    examples only, as Keras computes it on its short last batch.
    """
    spe = steps_per_epoch(num_examples, batch_size)
    epochs, within = np.divmod(np.arange(start, end), spe)
    positions = within[:, None] * batch_size + np.arange(batch_size)  # (N, B) places in the epoch's order
    valid = positions < num_examples
    idx = np.zeros(positions.shape, np.int32)
    for epoch in np.unique(epochs):
        rows = epochs == epoch
        order = epoch_order(num_examples, seed, int(epoch), shuffle)
        idx[rows] = np.where(valid[rows], order[np.minimum(positions[rows], num_examples - 1)], 0)
    return idx, valid.astype(np.float32)


def train_indices(run_configs, num_examples: int, batch_size: int, start: int, end: int, sweep: bool = False):
    """`batch_indices` of steps [start, end) for each run: (N, B) for a single run, (N, R, B) for a
    sweep of R runs (`sweep`; R may be 1)."""
    per_run = [batch_indices(start, end, num_examples, batch_size, c.seed, c.shuffle) for c in run_configs]
    if not sweep:
        (single,) = per_run
        return single
    return np.stack([i for i, _ in per_run], 1), np.stack([m for _, m in per_run], 1)


def eval_indices(num_examples: int, batch_size: int):
    """The whole split in order, in batches: indices (K, B) and masks (K, B), the last batch padded."""
    return batch_indices(0, steps_per_epoch(num_examples, batch_size), num_examples, batch_size, 0, shuffle=False)


# --------------------------------------------------------------- on the device


def put_split(split: data.Split, mesh) -> dict:
    """A split held on every device of `mesh` (replicated), for `gather`."""
    return parallel.put_replicated({"inputs": split.inputs, "targets": split.targets}, mesh)


def gather(split_on_device: dict, idx_B, mask_B) -> dict:
    """The batch of examples `idx_B` (inputs, targets, and the float32 mask), inside jit."""
    return {"inputs": split_on_device["inputs"][idx_B], "targets": split_on_device["targets"][idx_B], "mask": mask_B}
