"""Persistent-RNN Pallas kernels for the two sequential loops of a simple RNN's forward and backward.

Each kernel runs all T steps in one launch: W_rec is loaded once and stays on chip for the whole
loop, and each grid program owns `BLOCK_B` batch rows, an independent recurrence. Only the loops
live here; `recurrence.py` does the input projection and the weight gradients as large XLA matmuls.

What was tested: interpret mode on CPU (jax 0.10.2), against `lax.scan`, in
`tests/test_recurrence.py`. The kernels are written for the Triton GPU backend (every load and
store is a power-of-two (16, H_pad) tile, H padded to a power of two, B to a multiple of 16; f32
dots at HIGHEST precision so Triton does not drop to TF32) but were never compiled or run on a GPU.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

# Rows per grid program: 16 is the smallest M of a Triton dot; more rows would put the
# (BLOCK_B, H_pad) state and the (H_pad, H_pad) matrix under more register pressure.
BLOCK_B = 16


def _interpret(interpret: bool | None) -> bool:
    # Pallas has no CPU compiler; interpret mode runs the kernel body as ordinary XLA ops.
    return jax.default_backend() == "cpu" if interpret is None else interpret


def padded_sizes(b: int, h: int) -> tuple[int, int]:
    """(batch, hidden) padded for the kernels: whole BLOCK_B row blocks (one grid program each), and a
    power-of-two hidden size of at least 16, as Triton's dot needs."""
    b_pad = -(-b // BLOCK_B) * BLOCK_B
    h_pad = max(16, 1 << (h - 1).bit_length())
    return b_pad, h_pad


def _pad_to(a: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    # Zero padding is inert: padded units and rows get z = 0, so h = relu(0) = tanh(0) = 0 and dh = 0.
    return jnp.pad(a, [(0, n - m) for m, n in zip(a.shape, shape, strict=True)])


def _call(kernel, seq_in, row_in, w_HxH, with_row_out: bool, interpret: bool | None):
    """Pads, runs `kernel(*seq_in, *row_in, w, seq_out[, row_out])` per batch block, slices back.

    seq_in: (T, B, H) arrays, row_in: (B, H) arrays; the output is (T, B, H) [and (B, H)].
    """
    t, b, h = seq_in[0].shape
    b_pad, h_pad = padded_sizes(b, h)
    seq_spec = pl.BlockSpec((t, BLOCK_B, h_pad), lambda i: (0, i, 0))
    row_spec = pl.BlockSpec((BLOCK_B, h_pad), lambda i: (i, 0))
    seq_shape = jax.ShapeDtypeStruct((t, b_pad, h_pad), seq_in[0].dtype)
    row_shape = jax.ShapeDtypeStruct((b_pad, h_pad), seq_in[0].dtype)
    args = [_pad_to(a, (t, b_pad, h_pad)) for a in seq_in] + [_pad_to(a, (b_pad, h_pad)) for a in row_in]
    out = pl.pallas_call(
        kernel,
        out_shape=(seq_shape, row_shape) if with_row_out else seq_shape,
        grid=(b_pad // BLOCK_B,),
        in_specs=[seq_spec] * len(seq_in) + [row_spec] * len(row_in) + [pl.BlockSpec((h_pad, h_pad), lambda i: (0, 0))],
        out_specs=(seq_spec, row_spec) if with_row_out else seq_spec,
        interpret=_interpret(interpret),
        # Explicitly Triton: this JAX's default GPU backend for pallas_call is Mosaic GPU.
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
    )(*args, _pad_to(w_HxH, (h_pad, h_pad)))
    if with_row_out:
        return out[0][:, :b, :h], out[1][:b, :h]
    return out[:, :b, :h]


def _dot(a, b):
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def forward(
    zx_TxBxH: jax.Array, w_rec_HxH: jax.Array, act: Callable, interpret: bool | None = None
) -> tuple[jax.Array, jax.Array]:
    """h_t = act(zx_t + h_{t-1} W_rec), h_0 = 0, with zx = x W_in + b: returns (h_0..h_{T-1}, h_T)."""

    def kernel(zx_ref, w_ref, h_prev_ref, h_last_ref):
        w = w_ref[...]

        def step(t, h):
            h_prev_ref[t] = h
            return act(zx_ref[t] + _dot(h, w))

        h_last_ref[...] = jax.lax.fori_loop(0, zx_ref.shape[0], step, jnp.zeros(h_last_ref.shape, h_last_ref.dtype))

    return _call(kernel, [zx_TxBxH], [], w_rec_HxH, with_row_out=True, interpret=interpret)


def backward(
    h_prev_TxBxH: jax.Array,
    h_last_BxH: jax.Array,
    dh_BxH: jax.Array,
    w_rec_HxH: jax.Array,
    act_grad: Callable,
    interpret: bool | None = None,
) -> jax.Array:
    """dz_t = dh_t * act_grad(h_t), dh_{t-1} = dz_t W_rec^T for t = T..1 from dh_T; returns dz as (T, B, H)."""

    def kernel(h_prev_ref, h_last_ref, dh_ref, w_t_ref, dz_ref):
        w_t = w_t_ref[...]
        last = h_prev_ref.shape[0] - 1

        def step(i, carry):
            dh, h = carry
            t = last - i
            dz = dh * act_grad(h)
            dz_ref[t] = dz
            return _dot(dz, w_t), h_prev_ref[t]

        jax.lax.fori_loop(0, last + 1, step, (dh_ref[...], h_last_ref[...]))

    return _call(kernel, [h_prev_TxBxH], [h_last_BxH, dh_BxH], w_rec_HxH.T, with_row_out=False, interpret=interpret)
