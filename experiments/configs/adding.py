"""Presets for the adding problem (Le, Jaitly & Hinton 2015, section 4.1).

Select one with --config=experiments/configs/adding.py:PRESET and change any
field with --config.FIELD=VALUE. Presets are CELL_T for CELL in irnn, lstm,
rnn_tanh and sequence length T in 150, 200, 300, 400 (the paper's lengths).

Each step is a pair (a number uniform in [0, 1], a marker that is 1 at exactly
two steps, one in each half); the target is the sum of the two marked
numbers; the loss and metric are the mean squared error. Predicting 1 always
scores about 0.167: success is a test MSE clearly below that. The data is
generated (100,000 training and 10,000 test sequences, fixed by data_seed), so
it runs anywhere with no download.

100 hidden units. The settings follow the reproduction of Hu et al. (2018),
which published them: Adam (Keras constants), batch 32, gradient clipping
100, lr 1e-4 at T <= 200, 1e-5 at T = 300, 1e-6 at T = 400, up to 300 epochs
(937,500 steps); they report the IRNN converging at all three lengths and
the LSTM failing at 400. The paper itself (recalled: batch 16, SGD with
clipping) reports the IRNN matching the LSTM and the tanh RNN failing at the
longer lengths.

irnn_150, irnn_200, irnn_300, irnn_400
    The IRNN (recurrent kernel = identity) on the adding problem at the paper's four lengths.
        python -m experiments.adding --config=experiments/configs/adding.py:irnn_150

lstm_150, lstm_200, lstm_300, lstm_400
    The Keras LSTM (forget-gate bias 1) at the same lengths and recipe.
        python -m experiments.adding --config=experiments/configs/adding.py:lstm_150

rnn_tanh_150, rnn_tanh_200, rnn_tanh_300, rnn_tanh_400
    The tanh RNN with Keras' default initialisation at the same lengths and recipe.
        python -m experiments.adding --config=experiments/configs/adding.py:rnn_tanh_150
"""

from experiments.configs.base import base_config

CELLS = ("irnn", "lstm", "rnn_tanh")
LENGTHS = (150, 200, 300, 400)
PRESETS = tuple(f"{cell}_{t}" for cell in CELLS for t in LENGTHS)
REPORTED = {p: dict(value=None, step=None, text="MSE well below 0.167 = converged") for p in PRESETS}
REPORTED.update(
    {
        "irnn_150": dict(value=None, step=None, text="converges (paper; Hu et al.)"),
        "lstm_400": dict(value=None, step=None, text="fails (Hu et al.)"),
        "rnn_tanh_400": dict(value=None, step=None, text="fails at long lengths (paper)"),
    }
)
METRIC = "test_loss"


def get_config(preset: str = "irnn_150"):
    cell, _, length = preset.rpartition("_")
    if cell not in CELLS or not length.isdigit() or int(length) not in LENGTHS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    c = base_config()
    c.name = preset
    c.dataset = "adding"
    c.task = "adding"
    c.sequence_length = int(length)  # T: steps per sequence
    c.num_train_examples = 100_000  # generated training sequences
    c.num_test_examples = 10_000  # generated test sequences
    c.data_seed = 0  # seed of the generated training and test sets
    c.cell = cell
    c.recurrence = "auto"  # native kernel where built (simple RNNs, CPU), else fused: the fastest (docs/performance.md)
    c.hidden_size = 100
    c.optimizer = "adam"
    c.learning_rate = {150: 1e-4, 200: 1e-4, 300: 1e-5, 400: 1e-6}[int(length)]
    c.clip_norm = 100.0
    c.batch_size = 32
    c.num_epochs = 300
    c.eval_every_steps = 3125  # one epoch
    c.checkpoint_every_steps = 3125
    c.eval_batch_size = 2000
    return c
