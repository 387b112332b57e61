"""notebooks/pixel_mnist_colab.ipynb runs top to bottom in its CI smoke mode, and a re-run resumes."""

import json
import sys

import nbclient
import nbformat
import pytest

from irnn_jax import metrics
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # executes the whole notebook

NOTEBOOK = ROOT / "notebooks" / "pixel_mnist_colab.ipynb"
KERNEL = "irnn-jax-test"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec for this interpreter, so that the kernel has this environment's packages
    whatever `python3` kernel the user may have installed; and the smoke-mode variables."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "irnn-jax tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IRNN_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("IRNN_NOTEBOOK_SMOKE_DIR", str(tmp_path / "smoke"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    return tmp_path / "smoke"


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_notebook_smoke_run_plots_and_resumes(kernel_env):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=120,
        # The kernel starts where Jupyter or Colab would start it: the notebook's folder.
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    with client.setup_kernel():
        for index, cell in enumerate(list(nb.cells)):
            client.execute_cell(cell, index)  # raises CellExecutionError if the cell fails
        code_cells = [c for c in nb.cells if c.cell_type == "code"]
        train_cell = next(c for c in code_cells if "experiments.pixel_mnist" in c.source)
        # Running the training cell again, as after a disconnect, resumes the finished run instead of restarting.
        nb.cells.append(nbformat.v4.new_code_cell(train_cell.source))
        client.execute_cell(nb.cells[-1], len(nb.cells) - 1)

    outputs = "".join(_text(c) for c in code_cells)
    assert f"repository: {ROOT}" in outputs
    assert "nothing to install" in outputs
    assert "CPU: " in outputs  # the accelerator report

    rows = metrics.read_rows(kernel_env / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert "done: step 20" in _text(train_cell)

    plot_cell = code_cells[-1]
    assert "plt.show()" in plot_cell.source
    assert any("image/png" in o.get("data", {}) for o in plot_cell.outputs), plot_cell.outputs
    assert "step 20: test accuracy" in _text(plot_cell)

    assert "nothing to do" in _text(nb.cells[-1])
    assert metrics.read_rows(kernel_env / "run" / "metrics.jsonl") == rows
