"""The bare forward chain the benchmarks set the training step against: 784 dependent steps of the
cell's recurrence, nothing kept (`benchmarks.step_ratio`, `benchmarks.recurrence_cpu --native_parts`).
A module of its own, without command-line flags, so that both can import it."""


def bare_chain(cell: str, batch: int, hidden: int):
    """(weights (W, w_in), chain(W, w_in, x_TxBx1) -> final state) of the cell's bare forward chain:
    784 dependent steps, nothing kept. The IRNN: relu(h @ W + x_t w_in), W (H, H). The LSTM: one
    (B, H) @ (H, 4H) matmul and the gates a step, its cell state carried beside h."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    width = 4 * hidden if cell == "lstm" else hidden
    w = (np.eye(hidden, width) + rng.normal(0, 0.01, (hidden, width))).astype(np.float32)
    w_in = rng.normal(0, 0.001, width).astype(np.float32)

    def chain(w, w_in, x_TxBx1):
        zeros_BxH = jnp.zeros((batch, hidden), jnp.float32)
        if cell != "lstm":
            step = lambda h_BxH, x_Bx1: (jax.nn.relu(h_BxH @ w + x_Bx1 * w_in), None)  # noqa: E731
            return jax.lax.scan(step, zeros_BxH, x_TxBx1)[0]

        def lstm_step(carry, x_Bx1):
            h_BxH, c_BxH = carry
            i, f, g, o = jnp.split(h_BxH @ w + x_Bx1 * w_in, 4, axis=-1)
            c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
            return (jax.nn.sigmoid(o) * jnp.tanh(c_BxH), c_BxH), None

        return jax.lax.scan(lstm_step, (zeros_BxH, zeros_BxH), x_TxBx1)[0][0]

    return (w, w_in), chain
