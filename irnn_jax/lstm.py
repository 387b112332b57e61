"""Final state of the Keras LSTM, h_T, two ways: the scanned cell and a fused custom VJP.

The cell (`model.LSTMCell`, Keras gate order i, f, c, o in one kernel of width 4H):

    z_t = x_t W_in + h_{t-1} W_rec + b,   i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of z_t's quarters
    c_t = f * c_{t-1} + i * g,            h_t = o * tanh(c_t),          h_0 = c_0 = 0

`final_state(recurrence, params, x_BxTxC)` returns h_T; `params` holds `kernel` (C, 4H),
`recurrent_kernel` (H, 4H) and `bias` (4H,), the names and shapes of the scanned cell.

* "scan": `lax.scan` of the cell as written, differentiated by JAX: the reference.
* "fused": a `custom_vjp` that does only the sequential work in its loops, as the simple RNN's
  "fused" (`irnn_jax/recurrence.py`). The forward loop projects x_t inside the step (C is 1 or 2
  here: an outer product that XLA fuses into the gates) and saves, per step, the four gate
  activations (B, 4H), the cell state the step starts from and the hidden state it starts from.
  The backward loop carries (dh, dc), rebuilds c_t = f c_{t-1} + i g from the saved values (the
  forward's own arithmetic, so the same float), and computes dz_t (B, 4H) in blocks of K steps
  (`recurrence.block_steps`); after each block, dW_rec, dW_in, db and dx take its K*B rows in one
  matmul each while they are in cache. Per step, the loops do one (B, H) @ (H, 4H) matmul forward
  and one (B, 4H) @ (4H, H) backward, against the several that JAX's autodiff of the scan keeps
  and replays. Timings: docs/performance.md, The LSTM.
* "native": both loops as native CPU kernels, one XLA FFI call each way (`irnn_jax/native.py`,
  `csrc/lstm_kernel.cc`, built by `pip install`), with "fused"'s arithmetic: CPU, up to 128 units.

Only h_T is an output: the cotangent enters the backward loop at step T alone (no loss on the
intermediate states; use "scan" for that).
"""

import jax
import jax.numpy as jnp

from irnn_jax import native, recurrence

RECURRENCES = ("scan", "fused", "native")


def _gates(z_Bx4H: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    i, f, g, o = jnp.split(z_Bx4H, 4, axis=-1)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def _project(params: dict, x_BxC: jax.Array) -> jax.Array:
    return x_BxC @ params["kernel"] + params["bias"]


def scan_final_state(params: dict, x_BxTxC: jax.Array) -> jax.Array:
    """The reference: `lax.scan` of the cell over time, differentiated by JAX."""

    def step(carry, x_BxC):
        c_BxH, h_BxH = carry
        i, f, g, o = _gates(_project(params, x_BxC) + h_BxH @ params["recurrent_kernel"])
        c_BxH = f * c_BxH + i * g
        return (c_BxH, o * jnp.tanh(c_BxH)), None

    zeros_BxH = jnp.zeros((x_BxTxC.shape[0], params["recurrent_kernel"].shape[0]), params["recurrent_kernel"].dtype)
    (_, h_BxH), _ = jax.lax.scan(step, (zeros_BxH, zeros_BxH), jnp.swapaxes(x_BxTxC, 0, 1))
    return h_BxH


def _gate_scale(h: int, dtype) -> jax.Array:
    """s (4H,): 1/2 on the sigmoid quarters (i, f, o), 1 on the tanh quarter (g).

    With it all four gates are one tanh over the whole (B, 4H) block, a = s tanh(s z) + 1 - s
    (sigmoid(z) = tanh(z / 2) / 2 + 1/2), and their derivative one expression,
    da/dz = s^2 - (a - 1 + s)^2 (a (1 - a) for a sigmoid, 1 - a^2 for tanh): no split, no
    concatenation, one elementwise pass per step instead of four."""
    return jnp.where(jnp.arange(4 * h) // h == 2, 1.0, 0.5).astype(dtype)


def _forward(params, x_TxBxC, keep):
    """h_T, and with `keep` also per step the gate activations a (B, 4H) = [i, f, g, o] and the
    states the step starts from, c_{t-1} and h_{t-1} (B, H), stacked over time."""
    w_rec_Hx4H = params["recurrent_kernel"]
    h = w_rec_Hx4H.shape[0]
    s_4H = _gate_scale(h, w_rec_Hx4H.dtype)

    def step(carry, x_BxC):
        c_prev_BxH, h_prev_BxH = carry
        z_Bx4H = _project(params, x_BxC) + h_prev_BxH @ w_rec_Hx4H
        a_Bx4H = s_4H * jnp.tanh(s_4H * z_Bx4H) + (1.0 - s_4H)
        i, f, g, o = (a_Bx4H[:, k * h : (k + 1) * h] for k in range(4))
        c_BxH = f * c_prev_BxH + i * g
        return (c_BxH, o * jnp.tanh(c_BxH)), ((a_Bx4H, c_prev_BxH, h_prev_BxH) if keep else None)

    zeros_BxH = jnp.zeros((x_TxBxC.shape[1], h), w_rec_Hx4H.dtype)
    (_, h_last_BxH), saved = jax.lax.scan(step, (zeros_BxH, zeros_BxH), x_TxBxC)
    return (h_last_BxH, saved) if keep else h_last_BxH


def _backward_step(w_rec_Hx4H):
    """The backward loop's step: (dh_t, dc_t), saved_t -> (dh_{t-1}, dc_{t-1}), dz_t (B, 4H)."""
    w_rec_t_4HxH = w_rec_Hx4H.T
    h = w_rec_Hx4H.shape[0]
    s_4H = _gate_scale(h, w_rec_Hx4H.dtype)

    def step(carry, saved_t):
        dh_BxH, dc_BxH = carry
        a_Bx4H, c_prev_BxH, _ = saved_t
        i, f, g, o = (a_Bx4H[:, k * h : (k + 1) * h] for k in range(4))
        tanh_c_BxH = jnp.tanh(f * c_prev_BxH + i * g)  # the forward's c_t, recomputed exactly
        dc_BxH = dc_BxH + dh_BxH * o * (1.0 - tanh_c_BxH * tanh_c_BxH)
        # da = [dc g, dc c_{t-1}, dc i, dh tanh(c_t)], written as two concatenations of whole
        # (B, H) blocks and one product: measured faster than four products concatenated.
        da_Bx4H = jnp.concatenate([dc_BxH, dc_BxH, dc_BxH, dh_BxH], axis=-1) * jnp.concatenate(
            [g, c_prev_BxH, i, tanh_c_BxH], axis=-1
        )
        dz_Bx4H = da_Bx4H * (s_4H * s_4H - (a_Bx4H - 1.0 + s_4H) ** 2)
        # The last iteration's (dh_0, dc_0) are unused (the initial state is a constant).
        return (dz_Bx4H @ w_rec_t_4HxH, dc_BxH * f), dz_Bx4H

    return step


def _backward_blocked(x_TxBxC, saved, dh_BxH, w_in_Cx4H, w_rec_Hx4H, block):
    """(grads, dx): the backward loop in blocks of `block` steps (a divisor of T), last block first;
    after each block its K*B rows of dz go into the weight gradients and dx in one matmul each, while
    they are in cache (as the simple RNN's, `recurrence._loop_backward_blocked`)."""
    step = _backward_step(w_rec_Hx4H)
    t, b, c = x_TxBxC.shape
    h4 = w_rec_Hx4H.shape[1]

    def run_block(carry, blk):
        dh_BxH, dc_BxH, d_w_in_Cx4H, d_w_rec_Hx4H, d_b_4H = carry
        x_KxBxC, saved_k = blk
        (dh_BxH, dc_BxH), dz_KxBx4H = jax.lax.scan(step, (dh_BxH, dc_BxH), saved_k, reverse=True)
        dz_Nx4H = dz_KxBx4H.reshape(block * b, h4)
        carry = (
            dh_BxH,
            dc_BxH,
            d_w_in_Cx4H + x_KxBxC.reshape(block * b, c).T @ dz_Nx4H,
            d_w_rec_Hx4H + saved_k[2].reshape(block * b, -1).T @ dz_Nx4H,
            d_b_4H + dz_Nx4H.sum(axis=0),
        )
        return carry, dz_KxBx4H @ w_in_Cx4H.T

    in_blocks = lambda a: a.reshape(t // block, block, *a.shape[1:])  # noqa: E731
    zeros = (jnp.zeros_like(w_in_Cx4H), jnp.zeros_like(w_rec_Hx4H), jnp.zeros((h4,), w_rec_Hx4H.dtype))
    init = (dh_BxH, jnp.zeros_like(dh_BxH), *zeros)
    carry, dx = jax.lax.scan(run_block, init, (in_blocks(x_TxBxC), jax.tree.map(in_blocks, saved)), reverse=True)
    grads = {"kernel": carry[2], "recurrent_kernel": carry[3], "bias": carry[4]}
    return grads, jnp.swapaxes(dx.reshape(t, b, c), 0, 1)


@jax.custom_vjp
def _fused_final_state(params, x_BxTxC):
    return _forward(params, jnp.swapaxes(x_BxTxC, 0, 1), keep=False)


def _fused_fwd(params, x_BxTxC):
    x_TxBxC = jnp.swapaxes(x_BxTxC, 0, 1)
    h_last_BxH, saved = _forward(params, x_TxBxC, keep=True)
    return h_last_BxH, (x_TxBxC, saved, params["kernel"], params["recurrent_kernel"])


def _fused_bwd(residuals, dh_BxH):
    x_TxBxC, saved, w_in_Cx4H, w_rec_Hx4H = residuals
    block = recurrence.block_steps(x_TxBxC.shape[0], dh_BxH.shape[0])
    return _backward_blocked(x_TxBxC, saved, dh_BxH, w_in_Cx4H, w_rec_Hx4H, block)


_fused_final_state.defvjp(_fused_fwd, _fused_bwd)


def final_state(recurrence: str, params: dict, x_BxTxC: jax.Array) -> jax.Array:
    """h_T (B, H) of the LSTM over x (B, T, C), with "scan", "fused" or "native" (equal to float32
    rounding, values and gradients, for any loss of h_T)."""
    if recurrence not in RECURRENCES:
        raise ValueError(f"the LSTM runs with recurrence {RECURRENCES}, not {recurrence!r}")
    params = {k: params[k] for k in ("kernel", "recurrent_kernel", "bias")}
    if recurrence == "scan":
        return scan_final_state(params, x_BxTxC)
    if recurrence == "native":
        return native.lstm_final_state(params, x_BxTxC)
    return _fused_final_state(params, x_BxTxC)
