"""The "fused" and "pallas" recurrences equal the "scan" reference, value and gradients; "scan" equals the model.

Tolerances: all paths compute in float32 but sum the same products in different orders (the custom
rules form dW_rec = sum_t h_{t-1}^T dz_t as one matmul over B*T rows, autodiff of the scan
accumulates it step by step). Rounding error of such sums scales with the largest terms, not with
each entry, so entries are compared with atol = rtol * max|reference| besides rtol: rtol 1e-5 for
short sequences, 1e-4 over 784 steps (errors grow with the number of summed terms). A wrong
derivative, a missing term or an off-by-one step is off by orders of magnitude more.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irnn_jax import model, pallas_rnn, recurrence

ACTIVATIONS = ("relu", "tanh")


def make_params(c: int, h: int, w_rec: str, seed: int) -> dict:
    """Random input kernel and bias; recurrent matrix IRNN-like (identity + noise) or random."""
    rng = np.random.default_rng(seed)
    if w_rec == "identity":
        rec = np.eye(h) + rng.normal(0, 0.02, (h, h))
    else:
        rec = rng.normal(0, 0.9 / np.sqrt(h), (h, h))
    params = {"kernel": rng.normal(0, 0.5, (c, h)), "recurrent_kernel": rec, "bias": rng.normal(0, 0.1, h)}
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def outputs(recurrence_name: str, params, x_BxTxC, activation: str, **kw):
    """h_T from the primal function, h_T from the custom fwd rule, and the gradients of sum(h_T @ M)."""
    m_Hx3 = jnp.asarray(np.random.default_rng(99).normal(size=(params["bias"].shape[0], 3)), jnp.float32)
    f = lambda p, x: recurrence.final_state(recurrence_name, p, x, activation, **kw)

    @jax.jit  # one compilation for all three: interpret-mode Pallas compiles slowly
    def run(params, x_BxTxC):
        h_fwd_BxH, vjp = jax.vjp(f, params, x_BxTxC)
        # d sum(h_T @ M) / d h_T = M summed over its columns, for every row.
        return f(params, x_BxTxC), h_fwd_BxH, vjp(jnp.broadcast_to(m_Hx3.sum(1), h_fwd_BxH.shape))

    return run(params, x_BxTxC)


def assert_close(got, want, rtol: float) -> None:
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        w = np.asarray(w)
        np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=rtol * float(np.abs(w).max()))


def check_against_scan(recurrence_name, activation, params, x_BxTxC, rtol, **kw) -> None:
    want_h, _, want_grads = outputs("scan", params, x_BxTxC, activation)
    got_h, got_h_fwd, got_grads = outputs(recurrence_name, params, x_BxTxC, activation, **kw)
    assert float(np.abs(want_h).max()) > 0.1  # the comparison is not between near-zero states
    assert_close(got_h, want_h, rtol)
    assert_close(got_h_fwd, want_h, rtol)  # the gradient path's value comes from the fwd rule
    assert_close(got_grads, want_grads, rtol)


@pytest.mark.parametrize("w_rec", ["identity", "random"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
# Pallas runs in interpret mode on CPU: slow, and not the CPU path; CI runs it.
@pytest.mark.parametrize("recurrence_name", ["fused", pytest.param("pallas", marks=pytest.mark.slow)])
def test_short_sequence_matches_scan(recurrence_name, activation, w_rec):
    x_BxTxC = jnp.asarray(np.random.default_rng(1).normal(size=(3, 12, 2)), jnp.float32)
    check_against_scan(recurrence_name, activation, make_params(2, 5, w_rec, seed=2), x_BxTxC, rtol=1e-5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_matches_scan_over_784_pixels(activation):
    """The real pixel-MNIST length and input width, small batch and hidden."""
    x_BxTxC = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (4, 784, 1)), jnp.float32)
    params = make_params(1, 8, "identity" if activation == "relu" else "random", seed=4)
    if activation == "relu":
        # IRNN-like: near-identity recurrence, and a negative bias so units switch on and off.
        params["recurrent_kernel"] = 0.98 * params["recurrent_kernel"]
        params["bias"] = params["bias"] - 0.1
    check_against_scan("fused", activation, params, x_BxTxC, rtol=1e-4)


@pytest.mark.parametrize("w_rec", ["identity", "random"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_large_batch_form_matches_scan(monkeypatch, activation, w_rec):
    """The large-batch form (input projection and weight gradients inside the loops), on for B = 3."""
    monkeypatch.setattr(recurrence, "IN_LOOP_FROM_BATCH", 3)
    x_BxTxC = jnp.asarray(np.random.default_rng(1).normal(size=(3, 12, 2)), jnp.float32)
    check_against_scan("fused", activation, make_params(2, 5, w_rec, seed=2), x_BxTxC, rtol=1e-5)


@pytest.mark.parametrize("block_rows,block", [(3, 1), (9, 3), (36, 12)])
def test_fused_backward_in_blocks_matches_scan(monkeypatch, block_rows, block):
    """The backward in blocks of 1 (the sums step by step), 3 and all 12 steps, at B = 3."""
    monkeypatch.setattr(recurrence, "BLOCK_ROWS", block_rows)
    assert recurrence.block_steps(12, 3) == block
    x_BxTxC = jnp.asarray(np.random.default_rng(1).normal(size=(3, 12, 2)), jnp.float32)
    check_against_scan("fused", "tanh", make_params(2, 5, "random", seed=2), x_BxTxC, rtol=1e-5)


def test_block_steps_divide_the_sequence_and_fill_the_rows():
    assert recurrence.block_steps(784, 16) == 28 and recurrence.block_steps(784, 32) == 16  # 448, 512 rows
    assert recurrence.block_steps(150, 32) == 15 and recurrence.block_steps(784, 1024) == 1
    assert recurrence.block_steps(13, 64) == 1  # a prime length longer than the 8 steps allowed: step by step
    assert recurrence.block_steps(5, 2) == 5  # never more steps than the sequence has


def test_fused_with_unroll_not_dividing_length():
    x_BxTxC = jnp.asarray(np.random.default_rng(5).normal(size=(2, 10, 1)), jnp.float32)
    check_against_scan("fused", "tanh", make_params(1, 4, "random", seed=6), x_BxTxC, rtol=1e-5, unroll=3)


@pytest.mark.slow
def test_pallas_over_two_batch_blocks():
    """B = 20 pads to 32: two grid programs, each its own slice of the batch."""
    x_BxTxC = jnp.asarray(np.random.default_rng(7).normal(size=(20, 6, 1)), jnp.float32)
    check_against_scan("pallas", "relu", make_params(1, 5, "identity", seed=8), x_BxTxC, rtol=1e-5)


@pytest.mark.parametrize("cell,activation", [("irnn", "relu"), ("rnn_tanh", "tanh")])
def test_scan_reference_matches_the_model(cell, activation):
    # input_init_std 0.5 (not the IRNN's 0.001) and perturbed parameters: states of order one, and
    # a kernel, recurrent kernel or bias used in the wrong place would show.
    m = model.SequenceClassifier(num_outputs=3, cell=cell, hidden_size=5, input_init_std=0.5)
    x_BxTxC = jnp.asarray(np.random.default_rng(9).normal(size=(2, 7, 4)), jnp.float32)
    params = m.init(jax.random.key(0), x_BxTxC)["params"]
    noise = make_params(4, 5, "random", seed=10)
    params["rnn"] = jax.tree.map(lambda p, n: p + 0.3 * n, params["rnn"], noise)
    logits_Bx3 = m.apply({"params": params}, x_BxTxC)
    h_BxH = recurrence.final_state("scan", params["rnn"], x_BxTxC, activation)
    assert float(np.abs(h_BxH).max()) > 0.1
    want_Bx3 = h_BxH @ params["logits"]["kernel"] + params["logits"]["bias"]
    np.testing.assert_allclose(logits_Bx3, want_Bx3, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs", [dict(recurrence="lstm", activation="relu"), dict(recurrence="fused", activation="gelu")]
)
def test_unknown_options_are_rejected(kwargs):
    params = make_params(1, 2, "random", seed=0)
    with pytest.raises(ValueError, match="unknown"):
        recurrence.final_state(params=params, x_BxTxC=jnp.zeros((1, 3, 1)), **kwargs)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_pallas_kernels_lower_to_triton(activation):
    """JAX-side lowering for CUDA (Triton IR, power-of-two tiles) works without a GPU; PTX compilation is not tested."""
    zx_TxBxH = jax.ShapeDtypeStruct((784, 20, 100), jnp.float32)
    w_HxH = jax.ShapeDtypeStruct((100, 100), jnp.float32)
    act = recurrence.ACTIVATIONS[activation]
    act_grad = functools.partial(recurrence.act_grad_from_state, activation)
    fwd = lambda zx, w: pallas_rnn.forward(zx, w, act, interpret=False)
    bwd = lambda hs, w: pallas_rnn.backward(hs, hs[-1], hs[0], w, act_grad, interpret=False)
    for fn in (fwd, bwd):  # raises if Pallas cannot lower the kernel for Triton
        jax.jit(fn).trace(zx_TxBxH, w_HxH).lower(lowering_platforms=("cuda",))


@pytest.mark.parametrize("b,h,want", [(20, 100, (32, 128)), (16, 8, (16, 16)), (1, 17, (16, 32)), (33, 64, (48, 64))])
def test_pallas_padding_gives_whole_row_blocks_and_power_of_two_units(b, h, want):
    b_pad, h_pad = pallas_rnn.padded_sizes(b, h)
    assert (b_pad, h_pad) == want and b_pad % pallas_rnn.BLOCK_B == 0
