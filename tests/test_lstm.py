"""The LSTM's "fused" recurrence (irnn_jax/lstm.py) equals its "scan" reference, and "scan" equals
the model's scanned `LSTMCell`: values and gradients, to float32 tolerance.

Tolerances as in tests/test_recurrence.py: the custom rule sums dW_rec block by block in matmuls
of K*B rows and computes the sigmoid gates as tanh(z/2)/2 + 1/2, so entries agree to rounding, with
atol = rtol * max|reference|."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irnn_jax import lstm, model, recurrence


def make_params(c: int, h: int, seed: int) -> dict:
    """Gates far from saturation and from zero: the comparison exercises every derivative."""
    rng = np.random.default_rng(seed)
    params = {
        "kernel": rng.normal(0, 1.0, (c, 4 * h)),
        "recurrent_kernel": rng.normal(0, 1.2 / np.sqrt(h), (h, 4 * h)),
        "bias": rng.normal(0, 0.5, 4 * h),
    }
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def outputs(recurrence: str, params, x_BxTxC):
    """h_T and the gradients of sum(sin(h_T) * w) w.r.t. the parameters and x."""
    w_H = jnp.linspace(-1.0, 2.0, params["bias"].shape[0] // 4)

    @jax.jit
    def run(params, x_BxTxC):
        loss = lambda p, x: jnp.sum(jnp.sin(lstm.final_state(recurrence, p, x)) * w_H)  # noqa: E731
        return lstm.final_state(recurrence, params, x_BxTxC), jax.grad(loss, argnums=(0, 1))(params, x_BxTxC)

    return run(params, x_BxTxC)


def assert_close(got, want, rtol: float) -> None:
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        w = np.asarray(w)
        np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=rtol * float(np.abs(w).max()))


@pytest.mark.parametrize("c,steps,rtol", [(1, 784, 1e-4), (2, 150, 1e-5), (28, 28, 1e-5)])
def test_fused_gives_the_scan_reference_state_and_gradients(c, steps, rtol):
    params = make_params(c, 12, seed=steps)
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (5, steps, c)), jnp.float32)
    want_h, want_grads = outputs("scan", params, x)
    got_h, got_grads = outputs("fused", params, x)
    assert float(jnp.abs(want_h).max()) > 0.1  # not a comparison of near-zero states
    assert min(float(jnp.abs(g).max()) for g in jax.tree.leaves(want_grads)) > 1e-3  # every gradient is alive
    assert_close(got_h, want_h, rtol)
    assert_close(got_grads, want_grads, rtol)


@pytest.mark.parametrize("block_rows,block", [(5, 1), (35, 7)])
def test_fused_backward_in_blocks_of_any_size_gives_the_reference(monkeypatch, block_rows, block):
    """At B = 5 the presets' rule takes 98, 75 and 28 steps a block above; here 1 and 7 of 28."""
    monkeypatch.setattr(recurrence, "BLOCK_ROWS", block_rows)
    assert recurrence.block_steps(28, 5) == block
    params = make_params(3, 12, seed=5)
    x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (5, 28, 3)), jnp.float32)
    assert_close(outputs("fused", params, x), outputs("scan", params, x), 1e-5)


def test_a_wrong_gate_derivative_would_be_caught():
    """The comparison's tolerance is far below the effect of one wrong term: swapping two gates'
    roles in the parameters moves the gradients by more than the test allows."""
    params = make_params(1, 8, seed=3)
    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (4, 40, 1)), jnp.float32)
    _, want = outputs("scan", params, x)
    h = 8
    swapped = {k: jnp.concatenate([v[..., h : 2 * h], v[..., :h], v[..., 2 * h :]], -1) for k, v in params.items()}
    _, got = outputs("fused", swapped, x)
    with pytest.raises(AssertionError):
        assert_close(got[0]["recurrent_kernel"], want[0]["recurrent_kernel"], 1e-4)


def test_scan_equals_the_models_scanned_cell():
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (3, 30, 2)), jnp.float32)
    cell = model.LSTMCell(features=6)
    params = cell.init(jax.random.key(0), model.LSTMCell.initial_carry(3, 6), x[:, 0])["params"]
    params = jax.tree.map(lambda p: p + 0.3, params)  # away from the forget-bias init
    (_, h_cell), _ = jax.lax.scan(
        lambda carry, x_t: cell.apply({"params": params}, carry, x_t),
        model.LSTMCell.initial_carry(3, 6),
        jnp.swapaxes(x, 0, 1),
    )
    np.testing.assert_allclose(lstm.final_state("scan", params, x), h_cell, rtol=1e-6, atol=1e-7)


def test_the_lstm_refuses_pallas():
    with pytest.raises(ValueError, match="not 'pallas'"):
        lstm.final_state("pallas", make_params(1, 4, 0), jnp.zeros((1, 3, 1)))
