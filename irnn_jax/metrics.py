"""Metric output: one JSON object per evaluation in `metrics.jsonl`, and TensorBoard.

Rows carry at least: step, epoch, train_loss, train_accuracy, test_loss,
test_accuracy, grad_norm, steps_per_second. Timing fields (TIMING_FIELDS) vary
from run to run; every other field is a deterministic function of the config.
"""

import json
import math
import os
from pathlib import Path

from absl import logging
from tensorboardX import SummaryWriter

TIMING_FIELDS = frozenset({"steps_per_second", "elapsed_seconds"})


def should_run(step: int, every: int, last_step: int, offset: int = 0) -> bool:
    """True at steps offset + every * k (k >= 1, or k >= 0 when offset > 0) and at the last.

    Steps count optimiser steps done, from 1. offset=1 reproduces a Keras loop
    that evaluates `if step % every == 0` right after training on 0-based `step`.
    """
    if step == last_step:
        return True
    return every > 0 and step >= max(offset, 1) and (step - offset) % every == 0


def next_due(step: int, every: int, offset: int = 0) -> int:
    """The first step after `step` at which `should_run` fires for (every, offset)."""
    first = offset if offset >= 1 else every
    if step < first:
        return first
    return offset + ((step - offset) // every + 1) * every


class MetricsFileError(ValueError):
    """metrics.jsonl has an unreadable line other than its last."""


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl. A torn last line (a write cut short by a kill) is dropped with
    a warning; an unreadable line before it is an error that names it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    rows = []
    for n, line in lines:
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a metrics row")
        except ValueError as e:
            if n == lines[-1][0]:
                logging.warning("%s: dropping its torn last line %d (%r): %s", path, n, line[:80], e)
                break
            raise MetricsFileError(f"{path}, line {n}, is not a metrics row ({e}): {line[:80]!r}") from e
        rows.append(row)
    return rows


class MetricsWriter:
    """Appends rows to WORKDIR/metrics.jsonl and writes TensorBoard scalars.

    On resume from checkpoint step S, rows past S (written after that
    checkpoint, before the interruption) are dropped so that the file ends up
    as the uninterrupted run's; TensorBoard is told to purge them too.
    """

    def __init__(self, workdir: str | Path, resume_step: int = 0, tensorboard: bool = True):
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.path = Path(workdir) / "metrics.jsonl"
        kept = [r for r in read_rows(self.path) if r["step"] <= resume_step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        self._tb = None
        if tensorboard:
            self._tb = SummaryWriter(str(workdir), purge_step=resume_step + 1 if resume_step else None)

    def write(self, row: dict) -> None:
        # Flushed and synced before the checkpoint of the same step is saved,
        # so a row never goes missing for a step that a checkpoint covers.
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, row["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def format_metric(value: float) -> str:
    """4 decimals, or 3 significant digits below 0.001 (the adding problem's MSE reaches 1e-6)."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 or not math.isfinite(value) else f"{value:.2e}"


def format_row(name: str, row: dict) -> str:
    """One evaluation's row as the line printed for it (NAME: step S (epoch E): train loss ... | ...)."""
    f = lambda k, label: f" {label} {format_metric(row[k])}" if row.get(k) is not None else ""  # noqa: E731
    validation = (
        f"{f('validation_loss', 'val loss')}{f('validation_accuracy', 'acc')} |" if "validation_loss" in row else ""
    )
    return (
        f"{name + ': ' if name else ''}step {row['step']} (epoch {row['epoch']:.2f}):"
        f"{f('train_loss', 'train loss')}{f('train_accuracy', 'acc')} |{validation}{f('test_loss', 'test loss')}"
        f"{f('test_accuracy', 'acc')} |{f('grad_norm', 'grad norm')} | {row['steps_per_second']:.1f} steps/s"
        + (" | DIVERGED (frozen)" if row.get("diverged") else "")
    )
