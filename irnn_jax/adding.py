"""The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015, section 4.1).

Each input step is a pair: a number drawn uniformly from [0, 1], and a marker
that is 1 at exactly two steps, one in each half of the sequence, and 0
elsewhere. The target is the sum of the two marked numbers. Always predicting
1 gives a mean squared error of about 0.167 (the variance of the sum of two
uniforms, 2/12); a model has learned when its MSE falls well below that.

The data is generated, so it runs anywhere with no download: a fixed training
set and a fixed test set, each a pure function of (data_seed, split).
"""

import numpy as np

from irnn_jax.data import Dataset, Split

BASELINE_MSE = 1.0 / 6.0  # predicting 1 always: Var(U1 + U2) = 2 / 12


def generate(num_examples: int, length: int, seed: int, split_id: int) -> Split:
    """Sequences float32 (N, length, 2) and targets float32 (N,)."""
    rng = np.random.Generator(np.random.PCG64([seed, split_id]))
    values = rng.random((num_examples, length), dtype=np.float32)
    half = length // 2
    rows = np.arange(num_examples)
    first = rng.integers(0, half, num_examples)
    second = rng.integers(half, length, num_examples)
    markers = np.zeros((num_examples, length), np.float32)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return Split(np.stack([values, markers], axis=-1), targets.astype(np.float32))


def load(config) -> Dataset:
    """Training and test sets for `config.sequence_length`, from `config.data_seed`."""
    train = generate(config.num_train_examples, config.sequence_length, config.data_seed, 0)
    test = generate(config.num_test_examples, config.sequence_length, config.data_seed, 1)
    return Dataset("adding", train, test, source=f"generated:T={config.sequence_length},seed={config.data_seed}")
