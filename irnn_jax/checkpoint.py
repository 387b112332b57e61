"""Orbax checkpoints: verified on restore, refused when they belong to another run; stop-on-signal.

A checkpoint holds the whole `TrainState` (parameters, optimiser state, step and the running
training-metric sums) plus a JSON `meta` item: the config that made it, the config version, the
state's structure and a SHA-256 over the bytes of every leaf. Restoring:

* a checkpoint of another model or config is refused, and nothing on disk is touched;
* a checkpoint that cannot be read, or whose restored bytes do not match their checksum, is never
  used: it is moved aside to WORKDIR/checkpoints_bad/ (kept for inspection), and the newest good
  one older than it is restored instead. The batches are a function of the step, so training on
  from there ends bit-identical to an uninterrupted run. With no good checkpoint left the run
  stops with an error rather than start over.
* a checkpoint written before a config field existed resumes with that field's default when the
  default reproduces the old behaviour (ADDED_FIELDS); otherwise it is refused, saying why.
"""

import contextlib
import datetime
import hashlib
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from irnn_jax import parallel

# Version of the config and meta layout written into each checkpoint. 1: before it was recorded.
CONFIG_VERSION = 2
# Fields added since version 1, with the value that reproduces what runs made before them did.
ADDED_FIELDS = {
    "input_mean": 0.0,
    "input_std": 1.0,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "checkpoint_every_seconds": 0.0,
    "earlier_passes": 1,  # S3's replay: the second pass was the only one before the field
    "validation_size": 0,  # no validation split: every training example trained on
    "validation_seed": 0,
    "recurrent_lr_scale": 1.0,  # not in the optimiser's chain: its state is as before
    "update_clip_norm": 0.0,
    "ema_decay": 0.0,
    "skip_spike_factor": 0.0,
    "grad_chunk_rows": 0,  # the whole share of the batch differentiated at once
    "lr_step_epochs": [100],  # only read by the step schedule, which came with them
    "lr_step_factor": 0.1,
    "unroll": 1,
}

# Fields that may change between a run and its resumption without making the
# checkpoint meaningless: how long to train, how often to report, where the
# same data lives.
RESUMABLE_FIELDS = frozenset(
    {
        "num_epochs",
        "num_train_steps",
        "eval_every_steps",
        "eval_offset",
        "checkpoint_every_steps",
        "checkpoint_every_seconds",
        "steps_per_call",
        "recurrence",
        "grad_chunk_rows",  # the same gradient, summed in another order
        "unroll",  # the same loop, more steps an iteration
        "max_checkpoints_to_keep",
        "eval_batch_size",
        "data_dir",
        "data_source",
        "tfds_data_dir",
        "progress_bar",
    }
)
# A learning-rate schedule spans the run: with one, the run's length is part of the numbers.
_LENGTH_FIELDS = frozenset({"num_epochs", "num_train_steps"})


class CheckpointMismatchError(RuntimeError):
    """The workdir holds a checkpoint of a different model or config."""


class CheckpointCorruptError(RuntimeError):
    """No readable, verified checkpoint is left; the bad ones were moved aside."""


def config_differences(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """Fields (outside RESUMABLE_FIELDS) whose values differ: name -> (saved, current)."""
    resumable = RESUMABLE_FIELDS
    if current.get("lr_schedule", "constant") != "constant":
        resumable = resumable - _LENGTH_FIELDS
    keys = (set(saved) | set(current)) - resumable
    missing = object()
    diffs = {}
    for k in sorted(keys):
        a, b = saved.get(k, missing), current.get(k, missing)
        # JSON turns tuples into lists; compare through the JSON form.
        if as_json(a) != as_json(b):
            diffs[k] = (None if a is missing else a, None if b is missing else b)
    return diffs


def as_json(v):
    """`v` as it comes back from JSON (tuples become lists), for comparing configs."""
    if isinstance(v, (tuple, list)):
        return [as_json(x) for x in v]
    if isinstance(v, dict):
        return {k: as_json(x) for k, x in v.items()}
    return v


def param_shapes(params) -> dict[str, list[int]]:
    """{'rnn/kernel': [1, 100], ...}: a fingerprint of the model in the meta item."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): list(x.shape) for path, x in flat}


def state_structure(state) -> list[str]:
    """'path dtype shape' of every leaf: the layout a restore target must have."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    describe = lambda x: f"{getattr(x, 'dtype', None) or np.asarray(x).dtype} {list(np.shape(x))}"  # noqa: E731
    return [f"{jax.tree_util.keystr(p, simple=True, separator='/')} {describe(x)}" for p, x in flat]


def state_checksum(state) -> str:
    """SHA-256 over the structure and the bytes of every leaf (fetched to the host)."""
    digest = hashlib.sha256()
    for line, leaf in zip(state_structure(state), jax.tree.leaves(parallel.fetch(state)), strict=True):
        digest.update(line.encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


class StorageError(RuntimeError):
    """A checkpoint could not be written (a full disk, a read-only or vanished folder); the message
    names the folder and the cause. The checkpoints already complete are untouched."""


def storage_cause(e: BaseException) -> str | None:
    """The operating system's cause of a failed write, in words, when `e` is one: an OSError, or the
    error Orbax's TensorStore writers raise (a ValueError whose text ends in [os_error_code='28'])."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    m = re.search(r"os_error_code='?(\d+)", str(e))
    return os.strerror(int(m.group(1))) if m else None


class Checkpointer:
    """An Orbax CheckpointManager with explicit saves, verified restores and a config guard."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        self.bad_directory = self.directory.with_name(self.directory.name + "_bad")
        self._options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
            create=True,
            # A save interrupted by a kill leaves a *.orbax-checkpoint-tmp folder.
            cleanup_tmp_directories=True,
            enable_async_checkpointing=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=self._options)
        self._failed = False

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        """Saves asynchronously, with the state's checksum; `close()` (or `wait()`) makes it durable."""
        meta = {**meta, "config_version": CONFIG_VERSION, "state_structure": state_structure(state)}
        meta["state_sha256"] = state_checksum(state)
        with self._storage_errors():
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )

    def wait(self) -> None:
        with self._storage_errors():
            self._manager.wait_until_finished()

    @contextlib.contextmanager
    def _storage_errors(self):
        """A failed write becomes one StorageError that names the folder and the cause; the unfinished
        save's temporary folder is removed (on a full disk, that frees the space that run.json needs)."""
        try:
            yield
        except Exception as e:
            cause = storage_cause(e)
            if cause is None:
                raise
            self._failed = True
            self._settle()
            self.remove_unfinished()
            done = self._manager.latest_step() if self._manager is not None else None
            raise StorageError(  # saves are asynchronous: the one that failed may be the previous one
                f"cannot write checkpoints in {self.directory}: {cause}. The checkpoints already complete are kept "
                f"(newest: {'none' if done is None else f'step {done}'}); fix the folder or free space, then run "
                f"the same command to resume"
            ) from e

    def _settle(self) -> None:
        """Lets the saves still in flight finish (or fail) before any temporary folder is judged
        unfinished: a save that fails at once must not delete an earlier one still being written."""
        if self._manager is None:
            return
        try:
            self._manager.wait_until_finished()
        except Exception:  # noqa: BLE001 (that save failed as well: its folder goes with the others)
            pass

    def remove_unfinished(self) -> None:
        """Deletes the temporary folders of saves that did not finish (Orbax's *.orbax-checkpoint-tmp)."""
        if parallel.is_main_process():
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def read_meta(self, step: int) -> dict:
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def _set_aside(self, step: int, why: str) -> None:
        """Moves checkpoint `step` to the bad folder (process 0 does the move) and forgets it."""
        target = self.bad_directory / f"{step}-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}"
        logging.warning("checkpoint %d in %s is unusable (%s); moved to %s", step, self.directory, why, target)
        if parallel.is_main_process():
            self.bad_directory.mkdir(parents=True, exist_ok=True)
            os.replace(self.directory / str(step), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        # A new manager, not reload(): the failed restore can leave the old one's async machinery behind.
        self._manager.close()
        self._manager = ocp.CheckpointManager(self.directory, options=self._options)

    def _check_compatible(self, step: int, meta: dict, config_dict: dict, shapes: dict, structure: list) -> None:
        """Raises CheckpointMismatchError when checkpoint `step` belongs to another config or model."""
        if not isinstance(meta.get("config"), dict):
            raise CheckpointMismatchError(
                f"{self.directory} holds checkpoint {step} with no config in its meta item: not a run of "
                f"irnn-jax's loop; use a new --workdir"
            )
        saved = meta["config"]
        version = meta.get("config_version", 1)
        unknown = sorted(set(config_dict) - set(saved) - set(ADDED_FIELDS) - RESUMABLE_FIELDS)
        if unknown:
            raise CheckpointMismatchError(
                f"{self.directory} holds checkpoint {step}, written by an older version of irnn-jax (config "
                f"version {version}) that had no field(s) {unknown}, and no default of them is known to "
                f"reproduce what it did. Resume it with the version that wrote it, or use a new --workdir."
            )
        filled = {**{k: v for k, v in ADDED_FIELDS.items() if k in config_dict}, **saved}
        diffs = config_differences(filled, config_dict)
        if diffs:
            older = lambda k: " (not in the checkpoint, which predates it)" if k not in saved else ""  # noqa: E731
            lines = "\n".join(
                f"  {k}: checkpoint has {a!r}{older(k)}, this run has {b!r}" for k, (a, b) in diffs.items()
            )
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of a different config:\n{lines}\n"
                f"Use a new --workdir, or run with the checkpoint's values to resume it."
            )
        if meta.get("param_shapes") != shapes:
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of a different model: "
                f"parameters {meta.get('param_shapes')} != {shapes}; use a new --workdir"
            )
        if "state_structure" in meta and meta["state_structure"] != structure:
            changed = sorted(set(meta["state_structure"]) ^ set(structure))[:6]
            raise CheckpointMismatchError(
                f"checkpoint {step} in {self.directory} has another state layout (optimiser or model): "
                f"differing leaves {changed}; use a new --workdir"
            )

    def restore_compatible(self, abstract_state, config_dict: dict, shapes: dict):
        """(step, state, meta) of the newest good checkpoint, or None when the workdir has none.

        Raises CheckpointMismatchError when the newest readable checkpoint belongs to another config
        or model (nothing on disk is touched), and CheckpointCorruptError when checkpoints exist (or
        were set aside before) but none is readable and verified.
        """
        # A leaf with no sharding (e.g. from jax.eval_shape) goes to the first device, whatever the
        # device count the checkpoint was saved from; Orbax would otherwise insist on that count.
        first = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract_state = jax.tree.map(
            lambda x: (
                x
                if getattr(x, "sharding", None) is not None
                else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=first)
            ),
            abstract_state,
        )
        structure = state_structure(abstract_state)
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # noqa: BLE001 - any failure to read means "not usable"
                self._set_aside(step, f"its meta item cannot be read: {type(e).__name__}: {e}")
                continue
            self._check_compatible(step, meta, config_dict, shapes, structure)
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # noqa: BLE001
                if "state_structure" not in meta:  # an old checkpoint: it may simply not fit
                    raise CheckpointMismatchError(
                        f"checkpoint {step} in {self.directory} does not fit this model's state: {e}"
                    ) from e
                self._set_aside(step, f"its state cannot be read: {type(e).__name__}: {str(e)[:300]}")
                continue
            expected = meta.get("state_sha256")
            if expected is None:
                logging.warning("checkpoint %d predates checksums; restored without verification", step)
            elif state_checksum(restored["state"]) != expected:
                self._set_aside(step, "its restored bytes do not match the checksum saved with it")
                continue
            return step, restored["state"], restored["meta"]
        if self.bad_directory.exists() and any(self.bad_directory.iterdir()):
            raise CheckpointCorruptError(
                f"no usable checkpoint is left in {self.directory}; the unusable ones are in "
                f"{self.bad_directory}. Nothing was trained. To start this run over from step 0, delete or "
                f"rename {self.bad_directory} (and the workdir's metrics.jsonl), or use a new --workdir."
            )
        return None

    def close(self) -> None:
        """Waits for pending saves and releases the manager; safe to call twice. After a failed write
        (StorageError, already raised) it only lets go: the same failure is not raised twice."""
        if self._manager is not None:
            try:
                with self._storage_errors():
                    self._manager.wait_until_finished()
                    self._manager.close()
            except StorageError:
                if not self._failed:
                    raise
            finally:
                self._manager = None


class StopOnSignal:
    """Context manager: SIGTERM/SIGINT set `requested` instead of killing.

    The training loop checks `requested` after each step, saves, waits for the
    save and exits cleanly. A second SIGINT raises KeyboardInterrupt, for a
    user who really wants out. Outside the main thread it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False
