"""The host loop and `train_and_evaluate(config, workdir)`: single runs and sweeps.

The training and test splits live on the device; each jitted call runs up to `steps_per_call`
optimiser steps, gathering its batches there from `input_pipeline.train_indices`. The host wakes
between calls only to check for a non-finite loss, evaluate, checkpoint and answer a signal.
Chunking does not change the numbers: N steps in one call equal N calls of one step, bit for bit
(tested), so a resumed run still matches an uninterrupted one. Neither do time-based checkpoints
(`checkpoint_every_seconds`): they save at call boundaries, which are a function of the step.
"""

import dataclasses
import functools
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from irnn_jax import checkpoint as ckpt_lib
from irnn_jax import config_check, data, input_pipeline, optim, parallel, peers, train
from irnn_jax import metrics as metrics_lib
from irnn_jax import mirror as mirror_lib
from irnn_jax import model as model_lib
from irnn_jax import sweep as sweep_lib
from irnn_jax import workdir as workdir_lib


@dataclasses.dataclass
class RunResult:
    state: train.TrainState  # stacked along a leading run axis for a sweep
    step: int  # optimiser steps completed
    stopped_by_signal: bool
    last_rows: list[dict] | None  # the last evaluation of each run, if one ran this session
    run_names: list[str]

    @property
    def last_row(self) -> dict | None:
        return self.last_rows[0] if self.last_rows else None


@dataclasses.dataclass
class Setup:
    """Everything a run needs before its first step; `setup` makes it."""

    config: object
    run_names: list[str]  # [""] for a single run, "000_seed=0", ... for a sweep
    run_configs: list
    is_sweep: bool
    dataset: data.Dataset
    task: input_pipeline.TaskInfo
    num_steps: int
    steps_per_epoch: int
    mesh: jax.sharding.Mesh
    state: train.TrainState  # initial, placed on the mesh
    train_data: dict  # the splits on the device
    test_data: dict
    chunk_fn: object  # jitted (state, train_data, idx, mask) -> state after N steps
    eval_fn: object  # jitted (params, test_data, idx, mask) -> sums (3,) or (R, 3)
    reset_fn: object  # jitted: zero the training-metric sums
    validation_data: dict | None  # the validation split on the device (config.validation_size > 0), or None
    data_print: dict  # data.fingerprint of the arrays as read, before the validation split

    def train_indices(self, start: int, end: int):
        """Indices and masks of steps [start, end), on the devices: (N, B) or (N, R, B)."""
        idx, mask = input_pipeline.train_indices(
            self.run_configs, len(self.dataset.train), self.config.batch_size, start, end, self.is_sweep
        )
        # Shard the batch (single run) or the run axis (sweep) over the devices when it divides.
        sharding = parallel.axis_sharding(self.mesh, idx.shape[1], axis=1)
        return parallel.put((idx, mask), (sharding, sharding))


def compile_steps(config, apply_fn, mesh, is_sweep: bool, num_runs: int = 1):
    """jitted (train_chunk, eval_step, reset of the metric sums) as the loop runs them.

    A single run splits its batch over the mesh's devices when it divides (data parallelism);
    a sweep of `num_runs` runs shards its run axis instead, each device stepping its own runs,
    and leaves each run's batch whole."""
    loss_fn = train.make_loss_fn(config)
    train_mesh = None if is_sweep else parallel.split_batch_mesh(mesh, config.batch_size)
    eval_mesh = None if is_sweep else parallel.split_batch_mesh(mesh, config.eval_batch_size)
    rows = parallel.device_rows(mesh, config.batch_size, is_sweep)
    chunk_rows = train.resolve_chunk_rows(config, rows, mesh.devices.flat[0].platform)
    chunk = functools.partial(train.train_chunk, loss_fn=loss_fn, mesh=train_mesh, chunk_rows=chunk_rows)
    evaluate = functools.partial(train.eval_step, apply_fn=apply_fn, loss_fn=loss_fn, mesh=eval_mesh)
    if is_sweep:  # one more leading axis: runs (state, indices), shared data
        on_cpu = mesh.devices.flat[0].platform == "cpu"
        chunk = sweep_lib.over_runs(chunk, in_axes=(0, None, 1, 1), sequential=on_cpu)
        if mesh.size > 1 and num_runs % mesh.size == 0:  # put_state shards the run axis then
            chunk = parallel.map_over_run_shards(chunk, mesh, in_axes=(0, None, 1, 1))
        evaluate = sweep_lib.over_runs(evaluate, in_axes=(0, None, None, None), sequential=on_cpu)
    reset = train.reset_sums
    return (
        jax.jit(chunk, donate_argnums=0),
        jax.jit(evaluate),
        jax.jit(reset, donate_argnums=0),
    )


def setup(config, dataset: data.Dataset | None = None) -> Setup:
    """Validates `config`, expands its sweep, loads the data (or takes `dataset`), builds the initial
    state and places state and data on one mesh over all devices, and compiles the steps. The one
    setup of the training loop, the benchmarks and the tests. Call after
    `parallel.maybe_initialize_distributed()` in a multi-process launch."""
    config_check.validate_config(config)
    is_sweep = bool(config.sweep)
    runs = sweep_lib.expand(config) if is_sweep else [("", config)]
    run_configs = [c for _, c in runs]
    dataset = dataset if dataset is not None else input_pipeline.load_dataset(config)
    data_print = data.fingerprint(dataset)
    config_check.check_split(config, dataset)
    dataset = input_pipeline.hold_out(dataset, config.validation_size, config.validation_seed)
    num_steps = train.total_steps(config, len(dataset.train))
    per_epoch = input_pipeline.steps_per_epoch(len(dataset.train), config.batch_size)
    if is_sweep:
        state = sweep_lib.create_state(run_configs, lambda c: train.create_state(c, num_steps, per_epoch))
    else:
        state = train.create_state(config, num_steps, per_epoch)
    mesh = parallel.make_mesh()
    state = parallel.put_state(state, mesh, is_sweep)
    chunk_fn, eval_fn, reset_fn = compile_steps(config, state.apply_fn, mesh, is_sweep, len(runs))
    return Setup(
        config=config, run_names=[n for n, _ in runs], run_configs=run_configs, is_sweep=is_sweep,
        dataset=dataset, task=input_pipeline.task_info(config), num_steps=num_steps,
        steps_per_epoch=input_pipeline.steps_per_epoch(len(dataset.train), config.batch_size), mesh=mesh,
        state=state, train_data=input_pipeline.put_split(dataset.train, mesh),
        test_data=input_pipeline.put_split(dataset.test, mesh), chunk_fn=chunk_fn, eval_fn=eval_fn,
        reset_fn=reset_fn,
        validation_data=input_pipeline.put_split(dataset.validation, mesh) if dataset.validation else None,
        data_print=data_print,
    )  # fmt: skip


def evaluate(s: Setup, params) -> list[dict]:
    """Metrics per run over the whole test split (test_loss, test_accuracy) and, when the config holds
    one out, the whole validation split (validation_loss, validation_accuracy), gathered on the device
    like training batches."""
    rows = [{} for _ in s.run_configs]
    splits = [("test", s.dataset.test, s.test_data)]
    if s.validation_data is not None:
        splits.append(("validation", s.dataset.validation, s.validation_data))
    for name, split, on_device in splits:
        for row, (loss_sum, correct, count) in zip(rows, _eval_sums(s, params, on_device, len(split)), strict=True):
            row[f"{name}_loss"] = float(loss_sum / count)
            if not s.task.regression:
                row[f"{name}_accuracy"] = float(correct / count)
    return rows


def _eval_sums(s: Setup, params, split_on_device: dict, num_examples: int) -> np.ndarray:
    """(runs, 3): loss sum, correct count and example count of each run over one split."""
    idx, mask = input_pipeline.eval_indices(num_examples, s.config.eval_batch_size)
    # A single run's batches are split over the devices like its training batches; a sweep's are whole.
    sharding = parallel.replicated(s.mesh) if s.is_sweep else parallel.axis_sharding(s.mesh, idx.shape[1])
    totals = 0
    for idx_B, mask_B in zip(idx, mask, strict=True):
        out = s.eval_fn(params, split_on_device, *parallel.put((idx_B, mask_B), (sharding, sharding)))
        totals = totals + np.asarray(parallel.fetch(out), np.float64)
    return np.reshape(totals, (len(s.run_configs), 3))


def _train_row(step: int, steps_per_epoch: int, sums: dict, regression: bool) -> dict:
    """The training half of a metrics row, from the sums since the last one."""
    count = sums["count"]
    row = {"step": step, "epoch": round(step / steps_per_epoch, 4)}
    row["train_loss"] = sums["loss"] / count if count else None
    if not regression:
        row["train_accuracy"] = sums["correct"] / count if count else None
    row["grad_norm"] = sums["grad_norm"] / sums["steps"] if sums["steps"] else None
    return row


def train_and_evaluate(
    config,
    workdir: str | Path,
    experiment: str | None = None,
    command: str | None = None,
    allow_data_change: bool = False,
    mirror: str | Path | None = None,
) -> RunResult:
    """Trains and evaluates `config` (a single run or a sweep) in `workdir`, resuming from its newest
    good checkpoint, and records the session in WORKDIR/run.json (`experiment` and `command` label it
    there; by default they come from the config and the process's command line), with the
    fingerprint of the arrays it read (`data.fingerprint`) and the steps it trained.

    A checkpoint remembers the fingerprint of the data that trained it: resuming on other arrays
    raises data.DataMismatchError, unless `allow_data_change`.

    `mirror`, a folder, keeps a portable copy of the run (`irnn_jax.mirror`): taken into the workdir
    first when it is newer, and rewritten after every checkpoint and when the run stops.

    Raises config_check.ConfigError (bad config), data.DataError (data missing or corrupt),
    workdir.WorkdirBusyError (another process runs in the workdir), checkpoint.CheckpointMismatchError
    (the workdir holds another run), checkpoint.CheckpointCorruptError (no usable checkpoint left),
    data.DataMismatchError (other data than the checkpoint's) and train.DivergenceError (non-finite
    loss; the last good state is saved first).
    """
    config_check.validate_config(config)
    parallel.maybe_initialize_distributed()
    # The data first: what only the data can refuse (a validation split as large as the training set,
    # a missing file) is refused before the workdir or its lock exists.
    dataset = input_pipeline.load_dataset(config)
    config_check.check_split(config, dataset)
    workdir = Path(workdir)
    main = parallel.is_main_process()
    lock = workdir_lib.WorkdirLock(workdir).acquire() if main else None
    try:
        if mirror is not None and main:
            mirror_lib.pull(mirror, workdir)
        parallel.barrier("mirror pulled")
        s = setup(config, dataset)
        return _train(s, workdir, main, experiment, command, allow_data_change, mirror if main else None)
    except Exception:
        # In a multi-process run a collective fails (JaxRuntimeError, or gloo's ValueError) when another
        # process dies: exit with peers.EXIT_PEER_LOST (requeue) rather than crash, if that is what
        # happened; otherwise the error is this process's own, and its peers are told so.
        peers.exit_if_a_peer_is_lost()
        raise
    finally:
        if lock is not None:
            lock.release()


def _check_same_data(meta: dict, current: dict, allow_data_change: bool, first: dict | None = None) -> None:
    """Raises DataMismatchError when the arrays read now are not those the run began on: the first
    session's in run.json (`first`), else the checkpoint's. A change allowed once is allowed once: a
    later resume on the changed data needs the flag again, since it still is not the run's own data."""
    saved, whose = (first, "the run's first session") if first else (meta.get("data"), "this checkpoint")
    if saved is None:
        logging.warning("the checkpoint predates data fingerprints; its data cannot be checked")
    elif not data.same_arrays(saved, current):
        what = [k for k in ("train_sha256", "test_sha256") if saved[k] != current[k]]
        if not allow_data_change:
            raise data.DataMismatchError(
                f"{whose} trained on other data: its {' and '.join(what)} "
                f"({', '.join(saved[k][:12] for k in what)}..., from {saved['source']}) differ from the arrays "
                f"read now ({', '.join(current[k][:12] for k in what)}..., from {current['source']}). Point the run "
                f"at the same data (data_dir, data_source), or pass --allow_data_change to go on anyway."
            )
        logging.warning("resuming on other data than %s's (%s), as asked", whose, ", ".join(what))


def _first_session_data(workdir: Path) -> dict | None:
    """The data fingerprint of the first session of WORKDIR/run.json that recorded one, or None."""
    for session in workdir_lib.read_run_json(workdir)["sessions"]:
        if isinstance(session.get("data"), dict) and "train_sha256" in session["data"]:
            return session["data"]
    return None


def _train(
    s: Setup,
    workdir: Path,
    main: bool,
    experiment: str | None,
    command: str | None,
    allow_data_change: bool,
    mirror: str | Path | None,
) -> RunResult:
    config, names, num_steps = s.config, s.run_names, s.num_steps
    config_dict = config.to_dict()
    shapes = ckpt_lib.param_shapes(s.state.params)
    data_print = s.data_print
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", config.max_checkpoints_to_keep)
    writers = []
    recorded, last_saved, outcome = False, None, "error"
    try:
        state = s.state
        restored = checkpointer.restore_compatible(parallel.abstract_like(state), config_dict, shapes)
        start, elapsed = 0, 0.0
        if restored is not None:
            start, state, meta = restored
            first = _first_session_data(workdir) if main else None
            _check_same_data(meta, data_print, allow_data_change, first)
            elapsed = float(meta.get("elapsed_seconds", 0.0))
            logging.info("resumed from step %d in %s", start, checkpointer.directory)
        if main:
            workdir_lib.record_session(workdir, config, experiment, command, data=data_print, start_step=start)
            recorded = True
            writers = [metrics_lib.MetricsWriter(workdir / "runs" / n if n else workdir, start) for n in names]
        logging.info(
            "%s: %d train / %d validation / %d test examples from %s; %d steps (%.2f epochs) of %d run(s), "
            "%d parameters each; %d device(s), %d process(es)",
            config.dataset, len(s.dataset.train), len(s.dataset.validation or ()), len(s.dataset.test),
            s.dataset.source, num_steps,
            num_steps / s.steps_per_epoch, len(names), model_lib.count_params(state.params) // len(names),
            s.mesh.size, jax.process_count(),
        )  # fmt: skip

        last_saved = start if restored is not None else None
        last_rows = None
        diverged = set()
        t_run = t_interval = t_saved = time.perf_counter()
        interval_start = step = start
        every_seconds = config.checkpoint_every_seconds

        def save(at_step):
            nonlocal last_saved, t_saved
            if last_saved != at_step:
                meta = {"config": config_dict, "param_shapes": shapes, "step": at_step, "run_names": names,
                        "elapsed_seconds": elapsed + time.perf_counter() - t_run, "data": data_print}  # fmt: skip
                checkpointer.save(at_step, state, meta)
                last_saved, t_saved = at_step, time.perf_counter()
                if mirror is not None:
                    checkpointer.wait()  # the mirror copies finished checkpoints only
                    mirror_lib.push(workdir, mirror, at_step)

        progress = tqdm(total=num_steps, initial=start, unit="step", disable=not (config.progress_bar and main),
                        dynamic_ncols=True, mininterval=1.0)  # fmt: skip
        stopping = False
        with ckpt_lib.StopOnSignal() as stop:
            while step < num_steps:
                end = min(
                    metrics_lib.next_due(step, config.eval_every_steps, config.eval_offset),
                    metrics_lib.next_due(step, config.checkpoint_every_steps),
                    metrics_lib.next_due(step, config.steps_per_call),
                    num_steps,
                )
                state = s.chunk_fn(state, s.train_data, *s.train_indices(step, end))
                progress.update(end - step)
                step = end
                sums = {k: np.atleast_1d(v) for k, v in parallel.fetch(state.sums).items()}  # waits for the chunk
                stopping = parallel.any_process(stop.requested)
                newly = {k for k in range(len(names)) if sums["nonfinite"][k] and k not in diverged}
                if newly and not s.is_sweep:
                    good = int(parallel.fetch(state.step))
                    save(good)
                    checkpointer.wait()
                    outcome = f"diverged at step {good + 1}"
                    raise train.DivergenceError(
                        f"the loss or gradient became non-finite at step {good + 1} (of steps "
                        f"{good + 1}..{step}); the state after step {good} is saved in "
                        f"{checkpointer.directory}. {train.divergence_advice(config)}"
                    )
                for k in sorted(newly):  # a sweep goes on; the diverged run stays frozen
                    logging.warning("run %s: non-finite loss; its state is frozen from here on", names[k])
                diverged |= newly
                all_diverged = len(diverged) == len(names)  # a sweep with nothing left to train
                if all_diverged or metrics_lib.should_run(step, config.eval_every_steps, num_steps, config.eval_offset):
                    rate = (step - interval_start) / (time.perf_counter() - t_interval)
                    last_rows = []
                    skipped = optim.skipped_steps(state.opt_state)  # skip_spike_factor > 0: steps skipped so far
                    skipped = None if skipped is None else np.reshape(parallel.fetch(skipped), -1)
                    for k, test in enumerate(evaluate(s, train.eval_params(state))):
                        row = _train_row(step, s.steps_per_epoch, {n: float(v[k]) for n, v in sums.items()},
                                         s.task.regression)  # fmt: skip
                        row.update(test, steps_per_second=rate, elapsed_seconds=elapsed + time.perf_counter() - t_run)
                        if skipped is not None:
                            row["skipped_steps"] = int(skipped[k])
                        if k in diverged:
                            row["diverged"] = True
                        last_rows.append(row)
                        if main:
                            writers[k].write(row)
                            progress.write(metrics_lib.format_row(names[k], row))
                    state = s.reset_fn(state)
                    t_interval, interval_start = time.perf_counter(), step
                # Time-based saves: every process must take the same decision, so process 0's clock decides.
                due_by_time = every_seconds > 0 and parallel.any_process(
                    main and time.perf_counter() - t_saved >= every_seconds
                )
                if all_diverged:
                    save(step)
                    checkpointer.wait()
                    outcome = f"diverged at step {step}: every run"
                    raise train.DivergenceError(
                        f"every run of the sweep has diverged ({', '.join(names)}), the last by step {step}; "
                        f"their rows, each marked diverged, are in {workdir / 'runs'}, and their frozen states in "
                        f"{checkpointer.directory}. {train.divergence_advice(config)}"
                    )
                if metrics_lib.should_run(step, config.checkpoint_every_steps, num_steps) or stopping or due_by_time:
                    save(step)
                if stopping:
                    logging.warning("signal: saved step %d, stopping", step)
                    break
        progress.close()
        outcome = "stopped by signal" if stopping else "finished"
        return RunResult(state, step, stopping, last_rows, names)
    except Exception as e:
        if outcome == "error":  # a divergence has named its own outcome
            outcome = f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        raise
    finally:
        checkpointer.close()  # waits for the last async save, on every exit path
        for w in writers:
            w.close()
        if recorded:
            workdir_lib.end_session(workdir, last_saved, outcome)
        if mirror is not None:
            try:
                mirror_lib.push(workdir, mirror, last_saved)
            except OSError as e:  # the run's own outcome (or exception) matters more
                logging.warning("could not update the mirror %s: %s", mirror, e)
