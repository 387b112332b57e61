"""experiments.ink: where the ink lies along the sequence, on images the test draws."""

import subprocess
import sys

import numpy as np

from experiments import ink
from tests.conftest import ROOT


def test_ink_statistics_of_drawn_images():
    images = np.zeros((3, 784), np.uint8)
    images[0, 10] = 255  # ink at step 10 only
    images[1, [5, 700]] = 9  # last ink at step 700
    # image 2 stays blank: it counts in the fractions, and has no last inked step
    s = ink.ink_along_the_sequence(images, np.arange(784), last=100)
    assert s["ink_in_last_steps"] == 1 / 300  # one inked pixel among 3 x 100
    assert s["ink_overall"] == 3 / (3 * 784)
    assert s["last_inked_step_median"] == 355 and abs(s["last_inked_step_p90"] - (10 + 0.9 * 690)) < 1e-9
    # Reversed, pixels 10 and 5 come at steps 773 and 778, inside the last 100 steps.
    r = ink.ink_along_the_sequence(images, np.arange(784)[::-1], last=100)
    assert r["ink_in_last_steps"] == 2 / 300 and r["last_inked_step_median"] == (773 + 778) / 2


def test_ink_command_reads_idx_files(idx_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.ink", f"--data_dir={idx_dir}"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "96 training images" in out.stdout
    assert "   pixel order: " in out.stdout and "permuted order: " in out.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "experiments.ink", f"--data_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True
    )
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")
