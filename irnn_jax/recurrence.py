"""Final state of a simple RNN, h_t = act(x_t W_in + h_{t-1} W_rec + b), h_0 = 0, three ways.

`final_state(recurrence, params, x_BxTxC, activation)` returns h_T, the only state the
classifier reads; `params` holds `kernel` (C,H), `recurrent_kernel` (H,H), `bias` (H,) as in
`model.SimpleRNNCell`.

* "scan": `lax.scan` of the cell as written; the reference, same semantics as the model's
  `nn.scan`; its gradient is whatever JAX's autodiff of the scan produces.
* "fused": a `custom_vjp` that carries only the sequential work through its loops. At small
  batches (per device, below IN_LOOP_FROM_BATCH) the input projection is one (T*B, C) @ (C, H)
  matmul before the forward loop (bias added there); the forward loop carries h and saves
  h_0..h_{T-1} (time-major, nothing else); the backward loop carries dh (and h_t, to read
  act'(z_t) off it) and computes dz_t = dh_t * act'(z_t), in blocks of K steps: after each block,
  dW_rec, dW_in, db and dx take its K*B rows of dz in one matmul each while they are in cache
  (`block_steps`: K*B about BLOCK_ROWS; at large batches K = 1, the sums step by step). At large
  batches the forward's (T, B, H) input terms no longer fit in cache either, so the projection
  moves into the forward loop (IN_LOOP_FROM_BATCH). On the 2-core CPU, in the training loop: 1.3x
  "scan" at batch 32, equal at 256 and 1024 (README, Performance). The pixel-MNIST and adding
  presets use it.
* "pallas": the same custom_vjp with both loops as Pallas kernels (`irnn_jax/pallas_rnn.py`) that
  keep W_rec on chip for all T steps ("persistent RNN"). Interpret mode on CPU.
* "native": both loops as native CPU kernels, one XLA FFI call each way (`irnn_jax/native.py`,
  `csrc/rnn_kernel.cc`, built by `pip install`): CPU, up to 128 hidden units. The LSTM has its own
  (`irnn_jax/lstm.py`, `csrc/lstm_kernel.cc`).
* "auto" (a config value, not a computation): "native" where it can run, else "fused" (`resolve`).

Only h_T is an output, so the cotangent enters the backward loop at step T alone; the custom
rules do not support a loss on intermediate states (use "scan" for that).
"""

import functools

import jax
import jax.numpy as jnp

from irnn_jax import native, native_library, pallas_rnn

RECURRENCES = ("scan", "fused", "pallas", "native")
CONFIG_VALUES = (*RECURRENCES, "auto")  # what config.recurrence may say
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


# The native kernel's kind (native.KINDS) for each cell it runs: the simple RNNs' activations, the LSTM.
NATIVE_CELLS = {"irnn": "relu", "rnn_relu": "relu", "rnn_tanh": "tanh", "lstm": "lstm"}


def supports(recurrence: str, cell: str) -> bool:
    """Whether `recurrence` can run `cell`: "scan", "fused" and "auto" run any cell (the LSTM's "fused"
    and "native" are `irnn_jax/lstm.py`); "native" the cells of NATIVE_CELLS; "pallas" the simple RNNs."""
    if recurrence == "native":
        return cell in NATIVE_CELLS
    return recurrence != "pallas" or cell != "lstm"


# On the AVX2 build the simple RNN's native training step at 512 rows a device ran no faster than nn.scan's
# XLA loop (batch 1024 on 2 devices: 342 ms against 338 with XLA held to AVX2, 337 against 308 with it
# not; docs/performance.md), where at 64 and 16 rows it ran 1.2x faster than both XLA paths: from this
# many rows a device, auto takes "scan" there.
AVX2_SCAN_FROM_ROWS = 512


def resolve(recurrence: str, cell: str, hidden_size: int, platform: str | None = None, batch: int | None = None) -> str:
    """The recurrence that runs for config.recurrence: "auto" is "native" where the kernel is built,
    passes its checks on this CPU (`native.status`) and takes the cell and size on this platform (CPU),
    and "fused" everywhere else; any other value is itself. All give the same results to float32
    rounding; a run resumed on another machine may change between them (run.json records which ran in
    each session, and why: `explain`). `batch`: the rows a device runs at once, where known."""
    return explain(recurrence, cell, hidden_size, platform, batch)[0]


def explain(
    recurrence: str, cell: str, hidden_size: int, platform: str | None = None, batch: int | None = None
) -> tuple[str, str]:
    """(the recurrence that runs, why): `resolve`'s answer with the reason for it in words."""
    if recurrence != "auto":
        return recurrence, "asked for by config.recurrence"
    if cell not in NATIVE_CELLS:
        return "fused", f"auto: the native kernels do not run cell {cell!r}"
    try:
        native.check(NATIVE_CELLS[cell], hidden_size, platform)
    except native.NativeUnavailable as e:
        return "fused", f"auto: {e}"
    variant = native.status().variant
    if variant not in native_library.MEASURED:
        return "fused", (
            f"auto: the native kernel here is a {variant} build, which has not been measured against XLA "
            "(docs/performance.md); --config.recurrence=native runs it"
        )
    if variant == "avx2" and cell != "lstm" and batch is not None and batch >= AVX2_SCAN_FROM_ROWS:
        return "scan", (
            f"auto: at {batch} rows a device the AVX2 build of the native kernel runs slower than nn.scan's XLA loop "
            f"(from {AVX2_SCAN_FROM_ROWS} rows on; docs/performance.md)"
        )
    return "native", f"auto: the native kernel's {variant} build passed its checks on this CPU"


def activation_fn(name: str):
    """The activation called `name` (one of ACTIVATIONS); a ValueError for any other name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {tuple(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# lax.scan unroll of the fused loops. On a 2-core CPU (hidden 100): an empty loop step costs 0.3 us
# against 5 us for the matmul of a batch-16 step; unroll 2 sped the bare value_and_grad at batch 16
# up from 16.6 to 14.3 ms (`benchmarks/recurrence_cpu.py`), but the training step at batch 32 on
# 2 devices took 16.3-17.0 ms with unroll 1 and 16.4-17.6 with unroll 2, so it stays 1.
DEFAULT_UNROLL = 1

# From this batch size (per device) "fused" projects the inputs inside its forward loop instead of with
# one large matmul before it. Measured when the same switch also moved the weight gradients into the
# backward loop (since replaced by the blocks of BLOCK_ROWS), on one CPU core
# (`python -m benchmarks.recurrence_cpu --backward`), backward loop + weight gradients, ms:
# batch 16: 10.4 after the loop, 16.1 inside; 64: 38.9, 38.9; 128: 87.4, 71.3; 256: 181, 155;
# 512: 278, 200. The forward's hoisted projection writes and reads one more (T, B, H) array: at
# batch 1024 on 2 devices the training step took 530-560 ms with it, 402 ms with both in the loops.
IN_LOOP_FROM_BATCH = 128


# Rows (steps x batch) of one block of "fused"'s backward: the loop runs in blocks of K steps, and after
# each block the weight gradients take that block's K*B rows in one matmul while its dz are in cache.
# The training step of the keras preset, 2-core AMD EPYC, nothing else running, side by side
# (`python -m benchmarks.step_ratio --block_rows=512,128,1000000`, best of 11, ms): batch 32 on 2
# devices 14.49 in blocks of 28 steps, 15.86 of 8, 16.78 in one block of all 784 (the form before);
# batch 256 on 2 devices 101.4 in blocks of 4, 106.3 step by step (the form before), 122.6 in one;
# one device pinned to one core, batch 32: 26.25 against 29.85. A device left two cores is the
# exception: XLA spreads one large matmul over both, the blocks' small ones it does not. For the
# LSTM 256 to 512 rows were equally fast, 1,024 and more slower (docs/performance.md).
BLOCK_ROWS = 512


def _in_loop(batch_size: int) -> bool:
    """The large-batch form of "fused"'s forward: the input projection inside the loop."""
    return batch_size >= IN_LOOP_FROM_BATCH


def block_steps(seq_len: int, batch_size: int, rows: int | None = None) -> int:
    """K, the steps of one block of the backward: the largest divisor of the sequence length with
    K * batch <= `rows` (default BLOCK_ROWS; 1 at large batches: the sums step by step)."""
    limit = max(1, (BLOCK_ROWS if rows is None else rows) // batch_size)
    return max(k for k in range(1, min(seq_len, limit) + 1) if seq_len % k == 0)


def act_grad_from_state(activation: str, h: jax.Array) -> jax.Array:
    """act'(z) written in terms of h = act(z), so the forward pass only has to keep the states."""
    if activation == "relu":
        # jax.nn.relu's derivative is 0 at z = 0, and h > 0 exactly when z > 0.
        return (h > 0).astype(h.dtype)
    if activation == "tanh":
        return 1.0 - h * h
    raise ValueError(f"unknown activation {activation!r}; choose one of {tuple(ACTIVATIONS)}")


def _check(recurrence: str, activation: str) -> None:
    if recurrence not in RECURRENCES:
        raise ValueError(f"unknown recurrence {recurrence!r}; choose one of {RECURRENCES}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {tuple(ACTIVATIONS)}")


def scan_final_state(params: dict, x_BxTxC: jax.Array, activation: str) -> jax.Array:
    """The reference: `lax.scan` of the cell over time, differentiated by JAX."""
    act = ACTIVATIONS[activation]
    w_in_CxH, w_rec_HxH, b_H = params["kernel"], params["recurrent_kernel"], params["bias"]

    def step(h_BxH, x_BxC):
        return act(x_BxC @ w_in_CxH + h_BxH @ w_rec_HxH + b_H), None

    h0_BxH = jnp.zeros((x_BxTxC.shape[0], w_rec_HxH.shape[0]), w_rec_HxH.dtype)
    h_BxH, _ = jax.lax.scan(step, h0_BxH, jnp.swapaxes(x_BxTxC, 0, 1))
    return h_BxH


# The two sequential loops of the custom_vjp. Everything else (input projection, weight and input
# gradients) is shared by "fused" and "pallas". The forward saves the state each step starts from,
# h_0..h_{T-1}: exactly the left factor of dW_rec, so the weight gradient needs no shifted slice
# (a copy of a (T, B, H) array); the backward carries h_t next to dh to read act'(z_t) off it.


def _loop_forward(xs_TxBxK, project, w_rec_HxH, activation, unroll, keep_states):
    """h_T, and with keep_states also h_0..h_{T-1} as (T, B, H).

    Step t reads `project(xs[t])` as its input term x_t W_in + b: either xs holds those terms,
    computed before the loop (project is the identity), or xs is x and the step projects it."""
    act = ACTIVATIONS[activation]

    def step(h_BxH, xs_BxK):
        return act(project(xs_BxK) + h_BxH @ w_rec_HxH), (h_BxH if keep_states else None)

    h0_BxH = jnp.zeros((xs_TxBxK.shape[1], w_rec_HxH.shape[0]), w_rec_HxH.dtype)
    h_last_BxH, h_prev_TxBxH = jax.lax.scan(step, h0_BxH, xs_TxBxK, unroll=unroll)
    return (h_prev_TxBxH, h_last_BxH) if keep_states else h_last_BxH


def _loop_backward(h_prev_TxBxH, h_last_BxH, dh_BxH, w_rec_HxH, activation, unroll):
    """dz_t = dh_t * act'(z_t) for t = T..1 as (T, B, H), from dh_T = `dh_BxH`."""
    w_rec_t_HxH = w_rec_HxH.T

    def step(carry, h_prev_BxH):
        dh_BxH, h_BxH = carry
        dz_BxH = dh_BxH * act_grad_from_state(activation, h_BxH)
        # The last iteration's dh_0 is unused (h_0 is a constant): one wasted matmul of T.
        return (dz_BxH @ w_rec_t_HxH, h_prev_BxH), dz_BxH

    _, dz_TxBxH = jax.lax.scan(step, (dh_BxH, h_last_BxH), h_prev_TxBxH, reverse=True, unroll=unroll)
    return dz_TxBxH


def _loop_backward_blocked(x_TxBxC, h_prev_TxBxH, h_last_BxH, dh_BxH, w_in_CxH, w_rec_HxH, activation, block, unroll):
    """(grads, dx): the backward loop in blocks of `block` steps (a divisor of T), last block first.

    Within a block the loop is `_loop_backward`'s; after it, the block's K*B rows of dz go into the
    weight and bias gradients and dx in one matmul each, while they are still in cache. The same sums
    as one matmul over all T*B rows after the loop, in K*B-row pieces: no (T, B, H) dz array goes
    through memory, and each matmul is large enough to run at the core's rate (block_steps)."""
    t, b, h = h_prev_TxBxH.shape
    c = x_TxBxC.shape[-1]
    w_rec_t_HxH, w_in_t_HxC = w_rec_HxH.T, w_in_CxH.T

    def step(carry, h_prev_BxH):
        dh_BxH, h_BxH = carry
        dz_BxH = dh_BxH * act_grad_from_state(activation, h_BxH)
        # The very last iteration's dh_0 is unused (h_0 is a constant): one wasted matmul of T.
        return (dz_BxH @ w_rec_t_HxH, h_prev_BxH), dz_BxH

    def run_block(carry, x_h_prev):
        dh_BxH, h_BxH, d_w_in_CxH, d_w_rec_HxH, d_b_H = carry
        x_KxBxC, h_prev_KxBxH = x_h_prev
        (dh_BxH, h_BxH), dz_KxBxH = jax.lax.scan(step, (dh_BxH, h_BxH), h_prev_KxBxH, reverse=True, unroll=unroll)
        dz_NxH = dz_KxBxH.reshape(block * b, h)  # contiguous: a free reshape
        carry = (
            dh_BxH,
            h_BxH,
            d_w_in_CxH + x_KxBxC.reshape(block * b, c).T @ dz_NxH,
            d_w_rec_HxH + h_prev_KxBxH.reshape(block * b, h).T @ dz_NxH,
            d_b_H + dz_NxH.sum(axis=0),
        )
        return carry, dz_KxBxH @ w_in_t_HxC

    zeros = (jnp.zeros_like(w_in_CxH), jnp.zeros_like(w_rec_HxH), jnp.zeros((h,), w_rec_HxH.dtype))
    blocks = (x_TxBxC.reshape(t // block, block, b, c), h_prev_TxBxH.reshape(t // block, block, b, h))
    carry, dx_NxKxBxC = jax.lax.scan(run_block, (dh_BxH, h_last_BxH, *zeros), blocks, reverse=True)
    grads = {"kernel": carry[2], "recurrent_kernel": carry[3], "bias": carry[4]}
    return grads, jnp.swapaxes(dx_NxKxBxC.reshape(t, b, c), 0, 1)


def _forward(recurrence, activation, unroll, params, x_BxTxC, keep_states):
    # Time-major so each loop step reads one contiguous (B, H) slab; with C = 1 the transpose of x
    # is cheap, while transposing (B, T, H) arrays would cost a full copy.
    x_TxBxC = jnp.swapaxes(x_BxTxC, 0, 1)
    project = lambda x: jnp.einsum("...c,ch->...h", x, params["kernel"]) + params["bias"]  # noqa: E731
    w_rec_HxH = params["recurrent_kernel"]
    if recurrence == "pallas":
        h_prev_TxBxH, h_last_BxH = pallas_rnn.forward(project(x_TxBxC), w_rec_HxH, ACTIVATIONS[activation])
        return (x_TxBxC, h_prev_TxBxH, h_last_BxH) if keep_states else h_last_BxH
    if _in_loop(x_BxTxC.shape[0]):  # project x one step at a time, in the loop
        out = _loop_forward(x_TxBxC, project, w_rec_HxH, activation, unroll, keep_states)
    else:  # all T steps' input terms in one matmul before the loop
        out = _loop_forward(project(x_TxBxC), lambda zx: zx, w_rec_HxH, activation, unroll, keep_states)
    return (x_TxBxC, *out) if keep_states else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _custom_final_state(recurrence, activation, unroll, params, x_BxTxC):
    return _forward(recurrence, activation, unroll, params, x_BxTxC, keep_states=False)


def _custom_fwd(recurrence, activation, unroll, params, x_BxTxC):
    x_TxBxC, h_prev_TxBxH, h_last_BxH = _forward(recurrence, activation, unroll, params, x_BxTxC, keep_states=True)
    # Only what the backward reads: the states (act'(z_t) and the dW_rec factor), x, the two kernels.
    residuals = (x_TxBxC, h_prev_TxBxH, h_last_BxH, params["kernel"], params["recurrent_kernel"])
    return h_last_BxH, residuals


def _custom_bwd(recurrence, activation, unroll, residuals, dh_BxH):
    x_TxBxC, h_prev_TxBxH, h_last_BxH, w_in_CxH, w_rec_HxH = residuals
    act_grad = functools.partial(act_grad_from_state, activation)
    if recurrence == "fused":
        block = block_steps(h_prev_TxBxH.shape[0], dh_BxH.shape[0])
        return _loop_backward_blocked(
            x_TxBxC, h_prev_TxBxH, h_last_BxH, dh_BxH, w_in_CxH, w_rec_HxH, activation, block, unroll
        )
    if recurrence == "pallas":
        dz_TxBxH = pallas_rnn.backward(h_prev_TxBxH, h_last_BxH, dh_BxH, w_rec_HxH, act_grad)
    else:
        dz_TxBxH = _loop_backward(h_prev_TxBxH, h_last_BxH, dh_BxH, w_rec_HxH, activation, unroll)
    t, b, h = dz_TxBxH.shape
    # The per-step sums as single matmuls over all T*B rows; the reshapes are free (contiguous).
    dz_NxH = dz_TxBxH.reshape(t * b, h)
    grads = {
        "kernel": x_TxBxC.reshape(t * b, -1).T @ dz_NxH,
        "recurrent_kernel": h_prev_TxBxH.reshape(t * b, h).T @ dz_NxH,
        "bias": dz_NxH.sum(axis=0),
    }
    dx_BxTxC = jnp.swapaxes(dz_TxBxH @ w_in_CxH.T, 0, 1)
    return grads, dx_BxTxC


_custom_final_state.defvjp(_custom_fwd, _custom_bwd)


def final_state(
    recurrence: str, params: dict, x_BxTxC: jax.Array, activation: str, *, unroll: int = DEFAULT_UNROLL
) -> jax.Array:
    """h_T (B, H) of the simple RNN over x (B, T, C) with one of `RECURRENCES`.

    `unroll` applies to "fused" only. Gradients of "fused" and "pallas" are exact (equal to
    "scan" to float32 rounding) for any loss of h_T; see the module docstring.
    """
    _check(recurrence, activation)
    params = {k: params[k] for k in ("kernel", "recurrent_kernel", "bias")}
    if recurrence == "scan":
        return scan_final_state(params, x_BxTxC, activation)
    if recurrence == "native":
        return native.final_state(params, x_BxTxC, activation)
    return _custom_final_state(recurrence, activation, unroll, params, x_BxTxC)
