"""Every preset's results are those of the reference recurrence: a short run of each cell the presets
train, at the presets' real sizes, gives the same metric rows with the preset's recurrence ("auto":
the native kernels, simple RNNs and LSTM, where they are built, CI's machine among them; "fused", the
custom VJPs, elsewhere) as with "scan" (autodiff of the scanned cell), to float32 tolerance.

The presets of one cell differ only in the optimiser, its schedule, the run's length and the
order of the pixels (a permutation of the input before the recurrence), which both recurrences
meet identically; the representative is the first preset of each cell. Rows agree
to rtol 1e-4: the custom rules sum the weight gradients in another order (tests/test_recurrence.py)."""

import pytest

from experiments.configs import adding, pixel_mnist
from irnn_jax import loop
from tests.conftest import read_rows

pytestmark = pytest.mark.slow  # 14 compilations of 150- and 784-step models


def representatives(module, key) -> list[str]:
    seen, out = set(), []
    for preset in module.PRESETS:
        k = key(module.get_config(preset))
        if k not in seen:
            seen.add(k)
            out.append(preset)
    return out


PIXEL = representatives(pixel_mnist, lambda c: c.cell)
ADDING = representatives(adding, lambda c: c.cell)


def short_run(config, recurrence: str, workdir) -> list[dict]:
    c = config.copy_and_resolve_references()
    c.recurrence = recurrence
    c.batch_size, c.eval_batch_size = 8, 16
    c.num_train_steps, c.eval_every_steps, c.steps_per_call = 4, 2, 2
    c.checkpoint_every_steps = 4
    c.progress_bar = False
    if c.get("validation_size", 0):
        c.validation_size = 16
    loop.train_and_evaluate(c, workdir)
    return read_rows(workdir)


def assert_rows_close(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want] == [2, 4]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k, v in w.items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, rel=1e-4, abs=1e-7), k
            else:
                assert g[k] == v, k


def test_every_recurrent_preset_is_covered():
    assert {pixel_mnist.get_config(p).recurrence for p in pixel_mnist.PRESETS} == {"auto"}
    assert {adding.get_config(p).recurrence for p in adding.PRESETS} == {"auto"}
    assert len(PIXEL) == 4 and len(ADDING) == 3  # irnn, rnn_relu, rnn_tanh, lstm; irnn, lstm, rnn_tanh


@pytest.mark.parametrize("preset", PIXEL)
def test_pixel_preset_rows_equal_the_scan_reference(preset, idx_dir, tmp_path):
    c = pixel_mnist.get_config(preset)
    c.data_dir = str(idx_dir)
    assert_rows_close(short_run(c, c.recurrence, tmp_path / "preset"), short_run(c, "scan", tmp_path / "scan"))


@pytest.mark.parametrize("preset", ADDING)
def test_adding_preset_rows_equal_the_scan_reference(preset, tmp_path):
    c = adding.get_config(preset)
    c.num_train_examples, c.num_test_examples = 64, 32
    assert_rows_close(short_run(c, c.recurrence, tmp_path / "preset"), short_run(c, "scan", tmp_path / "scan"))
