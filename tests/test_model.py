import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import pixel_mnist
from irnn_jax import model, train


@pytest.mark.parametrize("preset", ["keras", "keras_900", "keras_default_init"])
def test_pixel_presets_have_keras_parameter_count(preset):
    state = jax.eval_shape(lambda: train.create_state(pixel_mnist.get_config(preset)))  # shapes only
    assert model.count_params(state.params) == 11_210
    shapes = jax.tree.map(lambda x: x.shape, state.params)
    assert shapes["rnn"] == {"kernel": (1, 100), "recurrent_kernel": (100, 100), "bias": (100,)}
    assert shapes["logits"] == {"kernel": (100, 10), "bias": (10,)}


def test_irnn_initialisation():
    c = pixel_mnist.get_config("keras")
    c.recurrent_gain = 0.5
    rnn = train.create_state(c).params["rnn"]
    np.testing.assert_array_equal(rnn["recurrent_kernel"], 0.5 * np.eye(100))
    np.testing.assert_array_equal(rnn["bias"], np.zeros(100))
    assert 0.0007 < float(jnp.std(rnn["kernel"])) < 0.0013  # N(0, 0.001), 100 draws


def test_keras_default_initialisation():
    rnn = train.create_state(pixel_mnist.get_config("keras_default_init")).params["rnn"]
    w = np.asarray(rnn["recurrent_kernel"])
    np.testing.assert_allclose(w @ w.T, np.eye(100), atol=1e-5)  # orthogonal
    assert not np.allclose(w, np.eye(100))
    limit = np.sqrt(6 / (1 + 100))  # glorot-uniform, fan_in 1, fan_out 100
    k = np.asarray(rnn["kernel"])
    assert np.all(np.abs(k) <= limit) and np.abs(k).max() > 0.8 * limit


def test_identity_init_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        model.identity_init()(None, (3, 4))


@pytest.mark.parametrize("cell,act", [("irnn", lambda z: np.maximum(z, 0)), ("rnn_tanh", np.tanh)])
def test_scan_matches_the_recurrence_written_out(cell, act):
    m = model.SequenceClassifier(num_outputs=3, cell=cell, hidden_size=5, recurrent_gain=0.9, input_init_std=0.5)
    x = np.random.default_rng(0).normal(size=(2, 7, 4)).astype(np.float32)
    params = m.init(jax.random.key(1), x)["params"]
    got = np.asarray(m.apply({"params": params}, x))
    p = jax.tree.map(np.asarray, params)
    h = np.zeros((2, 5), np.float32)
    for t in range(7):
        h = act(x[:, t] @ p["rnn"]["kernel"] + h @ p["rnn"]["recurrent_kernel"] + p["rnn"]["bias"])
    want = h @ p["logits"]["kernel"] + p["logits"]["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "recurrence,cell,steps",
    [
        ("fused", "irnn", 784),
        ("fused", "rnn_tanh", 28),
        ("fused", "lstm", 784),
        ("fused", "lstm", 28),
        ("native", "irnn", 784),
        ("native", "rnn_relu", 28),
        ("native", "rnn_tanh", 784),
        ("native", "lstm", 784),
        ("native", "lstm", 28),
        pytest.param("pallas", "irnn", 30, marks=pytest.mark.slow),  # interpret mode on CPU
        pytest.param("pallas", "rnn_relu", 30, marks=pytest.mark.slow),
    ],
)
def test_every_recurrence_gives_the_reference_loss_and_gradients(recurrence, cell, steps):
    """Same parameters (names, initial values), same loss and gradients to float32 tolerance."""
    x = np.random.default_rng(0).uniform(size=(4, steps, 1)).astype(np.float32)
    labels = np.array([0, 3, 1, 2])

    def loss_and_grads(rec):
        m = model.SequenceClassifier(num_outputs=4, cell=cell, hidden_size=8, recurrence=rec, input_init_std=0.5)
        params = m.init(jax.random.key(0), x)["params"]

        def loss(p):
            logits = m.apply({"params": p}, x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

        return params, *jax.value_and_grad(loss)(params)

    p_ref, loss_ref, g_ref = loss_and_grads("scan")
    p, loss, g = loss_and_grads(recurrence)
    jax.tree.map(np.testing.assert_array_equal, p, p_ref)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), g, g_ref)
    assert float(jnp.abs(g["rnn"]["recurrent_kernel"]).max()) > 0  # the gradient reaches the recurrence


def test_pallas_refuses_the_lstm():
    m = model.SequenceClassifier(num_outputs=2, cell="lstm", hidden_size=4, recurrence="pallas")
    with pytest.raises(ValueError, match="cannot run cell"):
        m.init(jax.random.key(0), jnp.zeros((1, 3, 1)))
