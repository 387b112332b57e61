"""Recurrence "native": the recurrent loops as native CPU kernels (XLA FFI), simple RNN and LSTM.

`csrc/rnn_kernel.cc` (the simple RNN) and `csrc/lstm_kernel.cc` (the Keras LSTM), compiled by the
package's own build (`setup.py`, when `pip install` runs; one library per instruction set,
`irnn_jax/_rnn_kernel_<variant>*.so`, the one this CPU runs chosen by `native_library`), hold two
handlers each: the forward loop over T steps, keeping what the backward needs, and the backward loop
with the weight gradients summed in blocks of rows while they are in cache. Each is one XLA custom
call per training step, so none of XLA's per-step loop work is paid; each step's product with the
recurrent kernel runs in a register-blocked micro-kernel (16-float vectors on AVX-512, 8 on AVX2;
`csrc/kernels.h`). The
arithmetic is recurrence "fused"'s (`irnn_jax/recurrence.py`, `irnn_jax/lstm.py`), summed in another
order: equal to "scan" to float32 rounding, values and gradients (`tests/test_native.py`).

What it runs: CPU only; the simple RNN cells (irnn, rnn_relu: relu; rnn_tanh: tanh, a rational
approximation within 3e-7 of tanh, of the kind XLA's CPU tanh is) and the LSTM (kind "lstm"); float32;
1 to 128 hidden units. Anything else, and a machine where the kernel was not built (no C++ compiler at
install), is refused with a clear error by `check`; "fused" is the XLA path for all of them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from irnn_jax.native_library import CPU_FLAGS_ENV, LIBRARY_ENV, TARGETS, Status, _load  # noqa: F401 (for callers)

LANES = 16  # floats per vector in the kernel: rows are padded to a multiple of it
MAX_HIDDEN = 128
ACTIVATION_CODES = {"relu": 0, "tanh": 1}  # the simple RNN kernel's `activation` attribute
KINDS = (*ACTIVATION_CODES, "lstm")  # what the kernels run: a simple RNN's activation, or the LSTM
GATES = 4  # the LSTM's gates i, f, g, o


class NativeUnavailable(RuntimeError):
    """The native kernel cannot run this: not built, another platform, cell or size, or a library that
    cannot run on this CPU (built for another one, or damaged)."""


def status() -> Status:
    """What `native_library` found: the library, its variant, and why it cannot run (None: it can)."""
    return _load()


def available() -> bool:
    return _load().reason is None


def check(kind: str, hidden_size: int, platform: str | None = None) -> None:
    """Raises NativeUnavailable, with the reason and what to use instead, unless "native" can run
    a recurrence of this kind (KINDS: a simple RNN's activation, or "lstm") and size on `platform`
    (default: JAX's default backend; "any": the platform is not checked, for a check made before JAX
    starts its backends)."""
    if platform != "any":
        platform = platform or jax.default_backend()
        if platform != "cpu":
            raise NativeUnavailable(f"recurrence 'native' runs on CPU only, not {platform}; use 'fused'")
    if kind not in KINDS:
        raise NativeUnavailable(
            f"recurrence 'native' runs relu and tanh RNNs and the LSTM only, not {kind}; use 'fused'"
        )
    if not 1 <= hidden_size <= MAX_HIDDEN:
        raise NativeUnavailable(f"recurrence 'native' takes 1 to {MAX_HIDDEN} hidden units, not {hidden_size}")
    reason = _load().reason
    if reason:
        raise NativeUnavailable(reason)


def padded(h: int) -> int:
    return -(-h // LANES) * LANES


def gate_stride(h: int) -> int:
    """Floats in a row of the LSTM's kept gate activations: i, f, g, o packed, h columns each, and at
    least 3h + 16 (csrc/lstm_kernel.cc, gate_stride)."""
    return padded(max(GATES * h, 3 * h + LANES))


def _f32_params(params: dict) -> dict:
    """The three weights the kernels read, as float32."""
    return {k: jnp.asarray(params[k], jnp.float32) for k in ("kernel", "recurrent_kernel", "bias")}


def _f32_like(a) -> jax.ShapeDtypeStruct:
    """A float32 result of `a`'s shape (the gradient of `a`)."""
    return jax.ShapeDtypeStruct(a.shape, jnp.float32)


def _forward(params, x_TxBxC, keep_states, activation):
    t, b, _ = x_TxBxC.shape
    h = params["recurrent_kernel"].shape[0]
    states = jax.ShapeDtypeStruct((t if keep_states else 0, b, padded(h)), jnp.float32)
    call = jax.ffi.ffi_call(
        "irnn_rnn_forward", (states, jax.ShapeDtypeStruct((b, h), jnp.float32)), vmap_method="sequential"
    )
    code = np.int32(ACTIVATION_CODES[activation])
    return call(x_TxBxC, params["kernel"], params["recurrent_kernel"], params["bias"], activation=code)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _final_state(activation, params, x_BxTxC):
    return _forward(params, jnp.swapaxes(x_BxTxC, 0, 1), False, activation)[1]


def _fwd(activation, params, x_BxTxC):
    x_TxBxC = jnp.swapaxes(x_BxTxC, 0, 1)
    states_TxBxHp, h_last_BxH = _forward(params, x_TxBxC, True, activation)
    return h_last_BxH, (x_TxBxC, states_TxBxHp, h_last_BxH, params["kernel"], params["recurrent_kernel"])


def _bwd(activation, residuals, dh_BxH):
    x_TxBxC, states_TxBxHp, h_last_BxH, w_in_CxH, w_rec_HxH = residuals
    call = jax.ffi.ffi_call(
        "irnn_rnn_backward",
        (
            _f32_like(x_TxBxC),
            _f32_like(w_in_CxH),
            _f32_like(w_rec_HxH),
            jax.ShapeDtypeStruct(w_rec_HxH.shape[:1], jnp.float32),
        ),
        vmap_method="sequential",
    )
    dx_TxBxC, d_w_in, d_w_rec, d_b = call(
        x_TxBxC,
        states_TxBxHp,
        h_last_BxH,
        dh_BxH,
        w_in_CxH,
        w_rec_HxH,
        activation=np.int32(ACTIVATION_CODES[activation]),
    )
    grads = {"kernel": d_w_in, "recurrent_kernel": d_w_rec, "bias": d_b}
    return grads, jnp.swapaxes(dx_TxBxC, 0, 1)


_final_state.defvjp(_fwd, _bwd)


def final_state(params: dict, x_BxTxC: jax.Array, activation: str = "relu") -> jax.Array:
    """h_T (B, H) of the simple RNN over x (B, T, C), float32, through the native kernels."""
    if activation not in ACTIVATION_CODES:
        raise NativeUnavailable(
            f"the simple RNN kernel runs relu and tanh, not {activation}; the LSTM's is lstm_final_state"
        )
    params = _f32_params(params)
    check(activation, params["recurrent_kernel"].shape[0])
    return _final_state(activation, params, jnp.asarray(x_BxTxC, jnp.float32))


def _lstm_forward(params, x_TxBxC, keep):
    t, b, _ = x_TxBxC.shape
    h = params["recurrent_kernel"].shape[0]
    kept = t if keep else 0
    shapes = (
        jax.ShapeDtypeStruct((kept, b, gate_stride(h)), jnp.float32),  # gate activations i, f, g, o
        jax.ShapeDtypeStruct((kept, b, padded(h)), jnp.float32),  # c_{t-1}
        jax.ShapeDtypeStruct((kept, b, padded(h)), jnp.float32),  # h_{t-1}
        jax.ShapeDtypeStruct((b, h), jnp.float32),  # h_T
    )
    call = jax.ffi.ffi_call("irnn_lstm_forward", shapes, vmap_method="sequential")
    return call(x_TxBxC, params["kernel"], params["recurrent_kernel"], params["bias"])


@jax.custom_vjp
def _lstm_final_state(params, x_BxTxC):
    return _lstm_forward(params, jnp.swapaxes(x_BxTxC, 0, 1), False)[3]


def _lstm_fwd(params, x_BxTxC):
    x_TxBxC = jnp.swapaxes(x_BxTxC, 0, 1)
    gates, c_prev, h_prev, h_last_BxH = _lstm_forward(params, x_TxBxC, True)
    return h_last_BxH, (x_TxBxC, gates, c_prev, h_prev, params["kernel"], params["recurrent_kernel"])


def _lstm_bwd(residuals, dh_BxH):
    x_TxBxC, gates, c_prev, h_prev, w_in_Cx4H, w_rec_Hx4H = residuals
    bias = jax.ShapeDtypeStruct(w_rec_Hx4H.shape[1:], jnp.float32)
    shapes = (_f32_like(x_TxBxC), _f32_like(w_in_Cx4H), _f32_like(w_rec_Hx4H), bias)
    call = jax.ffi.ffi_call("irnn_lstm_backward", shapes, vmap_method="sequential")
    dx_TxBxC, d_w_in, d_w_rec, d_b = call(x_TxBxC, gates, c_prev, h_prev, dh_BxH, w_in_Cx4H, w_rec_Hx4H)
    grads = {"kernel": d_w_in, "recurrent_kernel": d_w_rec, "bias": d_b}
    return grads, jnp.swapaxes(dx_TxBxC, 0, 1)


_lstm_final_state.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_final_state(params: dict, x_BxTxC: jax.Array) -> jax.Array:
    """h_T (B, H) of the Keras LSTM (irnn_jax/lstm.py) over x (B, T, C), float32, through the native
    kernels; `params` as the LSTM's: kernel (C, 4H), recurrent_kernel (H, 4H), bias (4H,)."""
    params = _f32_params(params)
    check("lstm", params["recurrent_kernel"].shape[0])
    return _lstm_final_state(params, jnp.asarray(x_BxTxC, jnp.float32))
