"""Recurrent cells and the scanned sequence classifier.

A cell computes one time step; `nn.scan` lifts it over the time axis with the
parameters broadcast to every step (as in Flax's `examples/sst2`). The
classifier reads the last hidden state and maps it through optional dense
layers to class logits. Initialisers follow Keras so that presets reproduce
the Keras source experiments:

* `irnn`: ReLU, recurrent kernel = gain * identity, input kernel
  ~ N(0, input_init_std), bias 0 (Le, Jaitly & Hinton, 2015).
* `rnn_relu` / `rnn_tanh`: Keras `SimpleRNN` defaults: glorot-uniform input
  kernel, orthogonal recurrent kernel, bias 0.
* `lstm`: Keras `LSTM` defaults: glorot-uniform, orthogonal, bias 0 except
  the forget gate's, which starts at 1 (`unit_forget_bias=True`).
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from irnn_jax import lstm as lstm_lib
from irnn_jax import recurrence as recurrence_lib

CELLS = ("irnn", "rnn_relu", "rnn_tanh", "lstm")

Initializer = Callable[..., jax.Array]


def identity_init(gain: float = 1.0) -> Initializer:
    """Keras `initializers.Identity(gain)`: gain * I for a square kernel."""

    def init(key, shape, dtype=jnp.float32):
        del key
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"identity_init needs a square 2-D shape, got {shape}")
        return gain * jnp.eye(shape[0], dtype=dtype)

    return init


# Keras defaults. Flax's glorot_uniform is variance_scaling(1, fan_avg, uniform),
# the same limit sqrt(6 / (fan_in + fan_out)) as Keras.
glorot_uniform = nn.initializers.glorot_uniform()
orthogonal = nn.initializers.orthogonal()
zeros = nn.initializers.zeros


class SimpleRNNParams(nn.Module):
    """The parameters of a simple RNN cell, named as in Keras.

    Also used on its own by the recurrences computed outside `nn.scan`: same
    names, shapes and initialisers (so the same initial values) as the scanned
    cell, so checkpoints do not depend on the recurrence.
    """

    features: int
    activation: str = "relu"  # a name in recurrence.ACTIVATIONS
    kernel_init: Initializer = glorot_uniform
    recurrent_init: Initializer = orthogonal
    bias_init: Initializer = zeros

    def rnn_params(self, input_width: int) -> dict:
        return {
            "kernel": self.param("kernel", self.kernel_init, (input_width, self.features)),
            "recurrent_kernel": self.param("recurrent_kernel", self.recurrent_init, (self.features, self.features)),
            "bias": self.param("bias", self.bias_init, (self.features,)),
        }

    @nn.compact
    def __call__(self, input_width: int) -> dict:
        return self.rnn_params(input_width)


class SimpleRNNCell(SimpleRNNParams):
    """h_t = act(x_t W_in + h_{t-1} W_rec + b), one time step."""

    @nn.compact
    def __call__(self, h_BxH: jax.Array, x_BxC: jax.Array) -> tuple[jax.Array, None]:
        p = self.rnn_params(x_BxC.shape[-1])
        act = recurrence_lib.activation_fn(self.activation)
        h_BxH = act(x_BxC @ p["kernel"] + h_BxH @ p["recurrent_kernel"] + p["bias"])
        # Only the last state is used: emitting nothing keeps the scan's output small.
        return h_BxH, None

    @staticmethod
    def initial_carry(batch_size: int, features: int) -> jax.Array:
        return jnp.zeros((batch_size, features), jnp.float32)

    @staticmethod
    def output(carry: jax.Array) -> jax.Array:
        return carry


def _keras_lstm_bias(features: int) -> Initializer:
    """Zeros except the forget gate (second quarter, Keras gate order i, f, c, o)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.zeros(shape, dtype).at[features : 2 * features].set(1.0)

    return init


class LSTMParams(nn.Module):
    """The parameters of the Keras `LSTM` cell: gates i, f, c, o from one kernel of width 4H.

    Used by the scanned cell and on its own by the fused recurrence (`irnn_jax/lstm.py`): same
    names, shapes and initial values, so checkpoints do not depend on the recurrence."""

    features: int

    def lstm_params(self, input_width: int) -> dict:
        h4 = 4 * self.features
        return {
            "kernel": self.param("kernel", glorot_uniform, (input_width, h4)),
            "recurrent_kernel": self.param("recurrent_kernel", orthogonal, (self.features, h4)),
            "bias": self.param("bias", _keras_lstm_bias(self.features), (h4,)),
        }

    @nn.compact
    def __call__(self, input_width: int) -> dict:
        return self.lstm_params(input_width)


class LSTMCell(LSTMParams):
    """Keras `LSTM` cell, one time step."""

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, jax.Array], x_BxC: jax.Array):
        c_BxH, h_BxH = carry
        p = self.lstm_params(x_BxC.shape[-1])
        z_Bx4H = x_BxC @ p["kernel"] + h_BxH @ p["recurrent_kernel"] + p["bias"]
        i, f, g, o = jnp.split(z_Bx4H, 4, axis=-1)
        c_BxH = nn.sigmoid(f) * c_BxH + nn.sigmoid(i) * jnp.tanh(g)
        h_BxH = nn.sigmoid(o) * jnp.tanh(c_BxH)
        return (c_BxH, h_BxH), None

    @staticmethod
    def initial_carry(batch_size: int, features: int):
        z = jnp.zeros((batch_size, features), jnp.float32)
        return (z, z)

    @staticmethod
    def output(carry) -> jax.Array:
        return carry[1]


def make_cell(cell: str, hidden_size: int, recurrent_gain: float, input_init_std: float, name: str):
    """Returns (cell class, constructor kwargs) for one of `CELLS`."""
    if cell == "irnn":
        return SimpleRNNCell, dict(
            features=hidden_size,
            activation="relu",
            kernel_init=nn.initializers.normal(input_init_std),
            recurrent_init=identity_init(recurrent_gain),
            name=name,
        )
    if cell in ("rnn_relu", "rnn_tanh"):
        return SimpleRNNCell, dict(features=hidden_size, activation=cell.removeprefix("rnn_"), name=name)
    if cell == "lstm":
        return LSTMCell, dict(features=hidden_size, name=name)
    raise ValueError(f"unknown cell {cell!r}; choose one of {CELLS}")


HEAD_ACTIVATIONS = {"sigmoid": nn.sigmoid, "relu": nn.relu, "tanh": jnp.tanh}


class SequenceClassifier(nn.Module):
    """Recurrent layer over (B, T, C) inputs, dense head on the last state: (B, num_outputs)."""

    num_outputs: int
    cell: str = "irnn"
    hidden_size: int = 100
    recurrent_gain: float = 1.0
    input_init_std: float = 0.001
    head_sizes: Sequence[int] = ()
    head_activation: str = "sigmoid"
    recurrence: str = "scan"  # "scan" (nn.scan, the reference), "fused", "pallas", "native" or "auto" (recurrence.py)
    unroll: int = 1  # time steps per loop iteration of "scan" (nn.scan) and the simple RNN's "fused" loops

    @nn.compact
    def __call__(self, x_BxTxC: jax.Array) -> jax.Array:
        cell_cls, kwargs = make_cell(self.cell, self.hidden_size, self.recurrent_gain, self.input_init_std, name="rnn")
        if not recurrence_lib.supports(self.recurrence, self.cell):
            raise ValueError(f"recurrence {self.recurrence!r} cannot run cell {self.cell!r} (recurrence.supports)")
        rec = recurrence_lib.resolve(self.recurrence, self.cell, self.hidden_size, batch=x_BxTxC.shape[0])
        if rec == "scan":
            scan = nn.scan(
                cell_cls, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, unroll=self.unroll
            )
            carry = cell_cls.initial_carry(x_BxTxC.shape[0], self.hidden_size)
            carry, _ = scan(**kwargs)(carry, x_BxTxC)
            y = cell_cls.output(carry)
        elif self.cell == "lstm":
            params = LSTMParams(**kwargs)(x_BxTxC.shape[-1])
            y = lstm_lib.final_state(rec, params, x_BxTxC)
        else:
            params = SimpleRNNParams(**kwargs)(x_BxTxC.shape[-1])
            y = recurrence_lib.final_state(rec, params, x_BxTxC, kwargs["activation"], unroll=self.unroll)
        for i, size in enumerate(self.head_sizes):
            y = nn.Dense(size, kernel_init=glorot_uniform, name=f"dense_{i}")(y)
            y = HEAD_ACTIVATIONS[self.head_activation](y)
        return nn.Dense(self.num_outputs, kernel_init=glorot_uniform, name="logits")(y)


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter tree (Keras `count_params`)."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
