"""A run's folder: one writer at a time, and `run.json`, the record of every session that ran in it.

The lock is `fcntl.flock` on WORKDIR/.lock, which the kernel releases when the holding process
ends, however it ends (SIGKILL included), so a killed run never blocks its own restart. The lock
file holds the holder's pid, host and start time, for the message a second run prints.
Limits: `flock` is per machine; on a network filesystem (NFS, SMB, FUSE mounts such as Google
Drive) two machines may both get it, so do not start the same run on two machines at once.
"""

import datetime
import fcntl
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import jax
from absl import logging

from irnn_jax import native, parallel, recurrence, train

LOCK_NAME = ".lock"
RUN_JSON = "run.json"
REPO_ROOT = Path(__file__).resolve().parent.parent


class WorkdirBusyError(RuntimeError):
    """Another process is running in this workdir; the message names it."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class WorkdirLock:
    """Holds WORKDIR/.lock for the life of a run; `release()` (or process exit) lets it go."""

    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on host {info['host']}, started {info['started']}"
            except (ValueError, KeyError, TypeError):
                who = "another process (its lock file holds no readable description)"
            raise WorkdirBusyError(
                f"{self.path.parent} is in use by {who}. One run writes a workdir at a time: wait for it "
                f"to finish, stop it (SIGTERM saves a checkpoint), or use another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def write_json_atomically(path: Path, obj) -> None:
    """Writes a temporary file beside `path`, syncs it, then renames it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=1, default=list) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def set_aside(path: Path, why: str) -> Path:
    """Renames an unreadable file to PATH.unreadable-<time> and warns; returns the new name."""
    aside = path.with_name(f"{path.name}.unreadable-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.replace(path, aside)
    logging.warning("%s is unreadable (%s); set aside as %s", path, why, aside.name)
    return aside


def read_run_json(workdir: Path) -> dict:
    """WORKDIR/run.json, or a fresh record when there is none; an unreadable one is set aside."""
    path = Path(workdir) / RUN_JSON
    if not path.exists():
        return {"sessions": []}
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict) or not isinstance(info.get("sessions"), list):
            raise ValueError("not a run record")
        return info
    except (ValueError, UnicodeDecodeError) as e:
        set_aside(path, str(e))
        return {"sessions": []}


def hardware() -> str:
    """'CPU model (N cores)[; N x accelerator kind]', for the results page."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    accelerator = "" if dev.platform == "cpu" else f"; {jax.device_count()} x {dev.device_kind}"
    return f"{cpu} ({os.cpu_count()} cores){accelerator}"


def machine_id() -> str:
    """A short stable name of this machine (a hash of /etc/machine-id, else of the host name), so that
    run.json tells two machines of the same model apart without recording anything identifying."""
    try:
        raw = Path("/etc/machine-id").read_text().strip()
    except OSError:
        raw = ""
    return hashlib.sha256((raw or socket.gethostname()).encode()).hexdigest()[:12]


def code_version(root: Path = REPO_ROOT) -> dict:
    """{'git_commit': sha, 'git_dirty': bool} of the checkout the code runs from ({} outside git)."""
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if sha.returncode != 0 or status.returncode != 0:
        return {}
    return {"git_commit": sha.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def experiment_of(config) -> str:
    """The experiment a config belongs to (`experiments.<name>`), for the results page."""
    if config.dataset == "adding":
        return "adding"
    return "row_mnist" if config.task == "row" else "pixel_mnist"


def resolved_recurrence(config) -> dict:
    """The recurrence this session runs (config.recurrence "auto" resolves per machine), why, and for
    "native" the variant of the kernel library that runs it ("avx512", "avx2", ...)."""
    # The rows the recurrence runs at once: a device's share of the batch, as the training step splits
    # it, in chunks of grad_chunk_rows.
    rows = parallel.device_rows(parallel.make_mesh(), config.batch_size, bool(config.get("sweep")))
    chunk = train.resolve_chunk_rows(config, rows) if "grad_chunk_rows" in config else 0
    name, why = recurrence.explain(
        config.recurrence, config.cell, config.hidden_size, batch=train.chunk_size(rows, chunk)
    )
    out = {"recurrence": name, "recurrence_why": why, "grad_chunk_rows": chunk}
    if name == "native":
        out["native_variant"] = native.status().variant
    return out


def cpu_affinity() -> str:
    """The CPUs this process may run on (what taskset or a cluster's cgroup left it), e.g. "1" or "0-1"."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return "not recorded"
    ranges, start = [], None
    for k, c in enumerate(cpus):
        start = c if start is None else start
        if k + 1 == len(cpus) or cpus[k + 1] != c + 1:
            ranges.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(ranges)


def record_session(
    workdir: Path,
    config,
    experiment: str | None = None,
    command: str | None = None,
    data: dict | None = None,
    start_step: int = 0,
) -> None:
    """Adds this session (command, hardware, code version, time, the fingerprint of the data it read
    and the step it started from) to WORKDIR/run.json, atomically; `end_session` completes it."""
    info = read_run_json(workdir)
    info.update(experiment=experiment or experiment_of(config), preset=config.name, config=config.to_dict())
    info["sessions"].append(
        {
            "command": command or shlex.join([Path(sys.executable).name, *sys.argv]),
            "hardware": hardware(),
            "machine": machine_id(),
            "jax": jax.__version__,
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "cpu_affinity": cpu_affinity(),
            **(resolved_recurrence(config) if "recurrence" in config else {}),
            "started": _now(),
            **code_version(),
            "start_step": start_step,
            **({"data": data} if data is not None else {}),
            "outcome": UNRECORDED_OUTCOME,  # until end_session replaces it
        }
    )
    write_json_atomically(Path(workdir) / RUN_JSON, info)


# A session's outcome while it runs, and what stays when the process could not record its end (SIGKILL,
# a power cut, a disk too full to take the record).
UNRECORDED_OUTCOME = "unrecorded: running, or ended without writing its outcome (killed, or its disk full)"


def end_session(workdir: Path, saved_step: int | None, outcome: str) -> None:
    """Completes the newest session of WORKDIR/run.json: when it ended, how ("finished", "stopped by
    signal", "diverged at step N", "error") and the step of its last saved checkpoint (None: it saved
    none). Never raises: the run's own outcome matters more than this record."""
    try:
        info = read_run_json(workdir)
        if info["sessions"]:
            info["sessions"][-1].update(ended=_now(), end_step=saved_step, outcome=outcome)
            write_json_atomically(Path(workdir) / RUN_JSON, info)
    except OSError as e:
        logging.warning("could not complete %s: %s", Path(workdir) / RUN_JSON, e)
