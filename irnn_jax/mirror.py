"""A run's portable copy: its record, its metrics and its newest checkpoint, in a folder of its own.

A workdir holds everything a run writes (every kept checkpoint, TensorBoard events, a lock). A
*mirror* holds just what another machine needs to go on with the run, a few hundred KB for the
paper's models:

    MIRROR/run.json                  every session: command, machine, commit, data, steps
    MIRROR/metrics.jsonl             (a sweep: MIRROR/runs/NNN_*/metrics.jsonl)
    MIRROR/checkpoint/STEP/...       the newest checkpoint, as Orbax wrote it

`--mirror=DIR` on the command line keeps one up to date: `push` runs after every checkpoint and when
the run stops, and `pull` runs before the run starts, so that a workdir with no checkpoint, or an
older one, starts from the mirror's. Commit the mirror, copy it, or keep it on a shared disk: the
same command then resumes the run on any machine, from exactly where the mirror was written. The
checkpoint is verified on restore as any other (its SHA-256), and a resume on other data is refused.

Every file is written under a temporary name and renamed into place, so that a mirror caught
mid-push still holds a complete checkpoint: the old one or the new one.
"""

import os
import shutil
from pathlib import Path

from absl import logging

from irnn_jax import workdir as workdir_lib

CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"


def _steps(folder: Path) -> list[int]:
    """The finished checkpoint steps in a folder of Orbax step folders, newest last."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def mirror_step(mirror: str | Path) -> int | None:
    """The step of the mirror's checkpoint, or None when it holds none."""
    steps = _steps(Path(mirror) / CHECKPOINT)
    return steps[-1] if steps else None


def _logs(root: Path) -> list[Path]:
    """run.json and every metrics.jsonl under `root`, relative to it."""
    found = [Path(workdir_lib.RUN_JSON)] if (root / workdir_lib.RUN_JSON).is_file() else []
    found += sorted(p.relative_to(root) for p in root.glob(f"**/{METRICS}") if CHECKPOINT not in p.parts)
    return found


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copies folder `src` to `dst` (which must not exist) through a temporary name."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)


def push(workdir: str | Path, mirror: str | Path, step: int | None) -> None:
    """Writes the workdir's logs and its checkpoint `step` (already durable) into `mirror`, then drops
    the mirror's older checkpoint. `step` None copies the logs only."""
    workdir, mirror = Path(workdir), Path(mirror)
    if step is not None:
        target = mirror / CHECKPOINT / str(step)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_tree(workdir / "checkpoints" / str(step), target)
        for old in target.parent.iterdir():
            if old.name != str(step):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    for rel in _logs(workdir):
        _copy_file(workdir / rel, mirror / rel)
    logging.info("mirrored %s (checkpoint %s) to %s", workdir, step, mirror)


def pull(mirror: str | Path, workdir: str | Path) -> int | None:
    """When `mirror` holds a newer checkpoint than `workdir` (or the workdir has none), copies it and
    the mirror's logs into the workdir; returns the step taken, or None when the workdir was left as
    it was. A missing or empty mirror is not an error: the first session of a run creates it."""
    mirror, workdir = Path(mirror), Path(workdir)
    step = mirror_step(mirror)
    if step is None:
        return None
    have = _steps(workdir / "checkpoints")
    if have and have[-1] >= step:
        return None
    target = workdir / "checkpoints" / str(step)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    _copy_tree(mirror / CHECKPOINT / str(step), target)
    for rel in _logs(mirror):
        _copy_file(mirror / rel, workdir / rel)
    logging.warning("took checkpoint %d and the run's logs from the mirror %s into %s", step, mirror, workdir)
    return step
