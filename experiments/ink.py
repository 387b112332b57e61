"""Where the ink is along the 784 steps, in pixel order and in permuted order.

    python -m experiments.ink [--data_dir=DIR] [--last=100] [--permutation_seed=0]

Explains a result of the budget comparison (docs/results/results.md): in pixel order the last
steps of a sequence are MNIST's blank bottom rows, so a network must carry what it saw across
them; in permuted order the last steps are a random sample of the image, so a network that
remembers only its last steps can already classify. Reads the training images of the four IDX
files in DIR (default: the MNIST shipped in the package); prints, for each order, the fraction of
non-zero pixels among the last LAST steps and the step of the last non-zero pixel (median and 90th
percentile over the images).
"""

import sys

import numpy as np
from absl import app, flags

from irnn_jax import data, input_pipeline

_DATA_DIR = flags.DEFINE_string("data_dir", "", "folder with the four MNIST IDX files; empty: the shipped MNIST")
_LAST = flags.DEFINE_integer("last", 100, "how many final steps to look at", lower_bound=1, upper_bound=784)
_SEED = flags.DEFINE_integer("permutation_seed", 0, "the permuted task's permutation_seed")


def ink_along_the_sequence(images: np.ndarray, order: np.ndarray, last: int) -> dict[str, float]:
    """images (N, 784) uint8, read in `order`: ink fraction in the last `last` steps, last inked step."""
    inked = images[:, order] > 0
    steps = (783 - np.argmax(inked[:, ::-1], axis=1))[inked.any(1)]  # blank images have no last ink
    return {
        "ink_in_last_steps": float(inked[:, -last:].mean()),
        "ink_overall": float(inked.mean()),
        "last_inked_step_median": float(np.median(steps)),
        "last_inked_step_p90": float(np.percentile(steps, 90)),
    }


def summary(images: np.ndarray, last: int = 100, permutation_seed: int = 0) -> list[str]:
    """One line per order (pixel, permuted): the ink figures of `images` (N, 28, 28) or (N, 784)."""
    images = np.asarray(images).reshape(len(images), -1)
    orders = {"pixel": np.arange(784), "permuted": input_pipeline.pixel_permutation(permutation_seed)}
    lines = []
    for name, order in orders.items():
        s = ink_along_the_sequence(images, order, last)
        lines.append(
            f"{name:>8} order: {s['ink_in_last_steps']:.1%} of the last {last} steps are ink "
            f"({s['ink_overall']:.1%} of all steps); last ink at step {s['last_inked_step_median']:.0f} "
            f"(median), {s['last_inked_step_p90']:.0f} (90th percentile)"
        )
    return lines


def main(argv):
    del argv
    try:
        dataset = data.load_idx_dir(_DATA_DIR.value, "mnist") if _DATA_DIR.value else data.load_embedded("mnist")
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{len(dataset.train):,} training images; steps 0 to 783")
    print("\n".join(summary(dataset.train.inputs, _LAST.value, _SEED.value)))


if __name__ == "__main__":
    app.run(main)
