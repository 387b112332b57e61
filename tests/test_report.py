import json

import pytest

from experiments import report
from experiments.configs import adding, pixel_mnist, row_mnist
from irnn_jax import loop
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def two_runs(idx_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    c = tiny_config(idx_dir, "keras_default_init", num_train_steps=6, eval_every_steps=3)
    loop.train_and_evaluate(c, root / "s1")
    a = adding.get_config("irnn_150")
    a.sequence_length, a.num_train_examples, a.num_test_examples = 10, 32, 16
    a.hidden_size, a.num_train_steps, a.eval_every_steps, a.progress_bar = 4, 4, 2, False
    loop.train_and_evaluate(a, root / "add")
    return root / "s1", root / "add"


def test_report_table_and_plots(two_runs, tmp_path):
    md = report.write_report(list(two_runs), tmp_path)
    lines = md.splitlines()
    s1 = next(line for line in lines if "keras_default_init (S1)" in line)
    assert "| pixel_mnist | mnist | keras_default_init (S1) | test accuracy 0.1137" in s1
    assert "| 6 of 590 |" in s1  # a shortened run says so
    add = next(line for line in lines if "| irnn_150 |" in line)
    assert "adding, T=10" in add and "MSE " in add and "baseline 0.167" in add
    # Every other preset is listed as not yet run, with its command.
    pending = [line for line in lines if "not yet run" in line]
    total = len(pixel_mnist.PRESETS) + len(row_mnist.PRESETS) + len(adding.PRESETS)
    assert len(pending) == total - 2
    assert any("`python -m experiments.pixel_mnist --config=experiments/configs/pixel_mnist.py:keras_900`" in x
               for x in pending)  # fmt: skip
    for name in ("pixel_mnist.png", "adding.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not (tmp_path / "row_mnist.png").exists()
    assert (tmp_path / "results.md").read_text() == md


def test_run_json_records_each_session(two_runs):
    info = json.loads((two_runs[0] / "run.json").read_text())
    assert info["experiment"] == "pixel_mnist" and info["preset"] == "keras_default_init"
    assert len(info["sessions"]) == 1 and info["sessions"][0]["command"].startswith("python -m experiments.pixel_mnist")
    assert "cores)" in info["sessions"][0]["hardware"]


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="no run.json"):
        report.load_run(tmp_path)
