"""Orbax checkpoints, the guard against resuming another run, and stop-on-signal.

A checkpoint holds the whole `TrainState` (parameters, optimiser state, step
and the running training-metric sums) plus a JSON `meta` item with the config
that made it. A workdir resumes by itself; one whose checkpoint came from a
different model or config is refused, never overwritten.
"""

import signal
import threading
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

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
        "steps_per_call",
        "recurrence",
        "max_checkpoints_to_keep",
        "eval_batch_size",
        "data_dir",
        "tfds_data_dir",
        "progress_bar",
    }
)


class CheckpointMismatchError(RuntimeError):
    """The workdir holds a checkpoint of a different model or config."""


def config_differences(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """Fields (outside RESUMABLE_FIELDS) whose values differ: name -> (saved, current)."""
    keys = (set(saved) | set(current)) - RESUMABLE_FIELDS
    missing = object()
    diffs = {}
    for k in sorted(keys):
        a, b = saved.get(k, missing), current.get(k, missing)
        # JSON turns tuples into lists; compare through the JSON form.
        if _jsonable(a) != _jsonable(b):
            diffs[k] = (None if a is missing else a, None if b is missing else b)
    return diffs


def _jsonable(v):
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def param_shapes(params) -> dict[str, list[int]]:
    """{'rnn/kernel': [1, 100], ...}: a fingerprint of the model in the meta item."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): list(x.shape) for path, x in flat}


class Checkpointer:
    """An Orbax CheckpointManager with explicit saves and a config guard."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            # A save interrupted by a kill leaves a *.orbax-checkpoint-tmp folder.
            cleanup_tmp_directories=True,
            enable_async_checkpointing=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        """Saves asynchronously; `close()` (or `wait()`) makes it durable."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def read_meta(self, step: int) -> dict:
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def restore_compatible(self, abstract_state, config_dict: dict, shapes: dict):
        """Restores the latest checkpoint, or returns None when there is none.

        Raises CheckpointMismatchError when the checkpoint belongs to another
        config or model; nothing on disk is touched in that case.
        """
        step = self.latest_step()
        if step is None:
            return None
        try:
            meta = self.read_meta(step)
        except Exception as e:  # noqa: BLE001 - any failure here means "not ours"
            raise CheckpointMismatchError(
                f"{self.directory} holds checkpoint {step} without a readable config "
                f"({type(e).__name__}: {e}); use a new --workdir"
            ) from e
        diffs = config_differences(meta.get("config", {}), config_dict)
        if diffs:
            lines = "\n".join(f"  {k}: checkpoint has {a!r}, this run has {b!r}" for k, (a, b) in diffs.items())
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of a different config:\n{lines}\n"
                f"Use a new --workdir, or run with the checkpoint's values to resume it."
            )
        if meta.get("param_shapes") != shapes:
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of a different model: "
                f"parameters {meta.get('param_shapes')} != {shapes}; use a new --workdir"
            )
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
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointMismatchError(
                f"checkpoint {step} in {self.directory} does not fit this model's state: {e}"
            ) from e
        return step, restored["state"], restored["meta"]

    def close(self) -> None:
        """Waits for pending saves and releases the manager; safe to call twice."""
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
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
