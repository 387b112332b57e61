"""The host loop behind `train.train_and_evaluate`: single runs and sweeps.

The training set lives on the device; each jitted call runs up to
`steps_per_call` optimiser steps, gathering its batches there from indices
the host computes with `data.batch_indices` (the same batches as
`data.batch_at`). The host wakes between calls only to check for a
non-finite loss, evaluate, checkpoint and answer a signal. Chunking does not
change the numbers: N steps in one call equal N calls of one step, bit for
bit (tested), so a resumed run still matches an uninterrupted one.
"""

import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from irnn_jax import checkpoint as ckpt_lib
from irnn_jax import data as data_lib
from irnn_jax import metrics as metrics_lib
from irnn_jax import model as model_lib
from irnn_jax import parallel
from irnn_jax import sweep as sweep_lib
from irnn_jax import train as train_lib


@dataclasses.dataclass
class RunResult:
    state: train_lib.TrainState  # stacked along a leading run axis for a sweep
    step: int  # optimiser steps completed
    stopped_by_signal: bool
    last_rows: list[dict] | None  # the last evaluation of each run, if one ran this session
    run_names: list[str]

    @property
    def last_row(self) -> dict | None:
        return self.last_rows[0] if self.last_rows else None


def compile_steps(config, apply_fn, mesh, stacked: bool):
    """jitted (train_chunk, eval_step, reset of the metric sums) as the loop runs them.

    A single run splits its batch over the mesh's devices when it divides (data parallelism);
    a sweep shards its run axis instead and leaves each run's batch whole."""
    loss_fn = train_lib.make_loss_fn(config)
    train_mesh = None if stacked else parallel.split_batch_mesh(mesh, config.batch_size)
    eval_mesh = None if stacked else parallel.split_batch_mesh(mesh, config.eval_batch_size)
    chunk = functools.partial(train_lib.train_chunk, loss_fn=loss_fn, mesh=train_mesh)
    evaluate = functools.partial(train_lib.eval_step, apply_fn=apply_fn, loss_fn=loss_fn, mesh=eval_mesh)
    if stacked:  # one more leading axis: runs (state, indices), shared data
        chunk = jax.vmap(chunk, in_axes=(0, None, 1, 1))
        evaluate = jax.vmap(evaluate, in_axes=(0, None))
    reset = lambda s: s.replace(sums=jax.tree.map(jnp.zeros_like, s.sums))  # noqa: E731
    return (
        jax.jit(chunk, donate_argnums=0),
        jax.jit(evaluate),
        jax.jit(reset, donate_argnums=0),
    )


def _indices(run_configs, num_examples: int, batch_size: int, start: int, end: int):
    """Host indices and masks for steps [start, end): (N, B), or (N, R, B) for a sweep."""
    per_run = []
    for c in run_configs:
        pairs = [data_lib.batch_indices(s, num_examples, batch_size, c.seed, c.shuffle) for s in range(start, end)]
        per_run.append((np.stack([i for i, _ in pairs]).astype(np.int32), np.stack([m for _, m in pairs])))
    if len(per_run) == 1:
        return per_run[0]
    return np.stack([i for i, _ in per_run], 1), np.stack([m for _, m in per_run], 1)


def _evaluate(eval_fn, params, split, batch_size, mesh, regression, num_runs, stacked):
    """Test metrics per run, over the whole split."""
    totals = 0
    # A single run's batches are split over the devices like its training batches; a sweep's are whole.
    sharding = parallel.replicated(mesh) if stacked else parallel.axis_sharding(mesh, batch_size)
    for batch in data_lib.eval_batches(split, batch_size):
        out = eval_fn(params, parallel.put(batch, jax.tree.map(lambda _: sharding, batch)))
        totals = totals + np.asarray(parallel.fetch(out), np.float64)
    totals = np.reshape(totals, (num_runs, 3))
    rows = []
    for loss_sum, correct, count in totals:
        row = {"test_loss": float(loss_sum / count)}
        if not regression:
            row["test_accuracy"] = float(correct / count)
        rows.append(row)
    return rows


def _train_row(step: int, steps_per_epoch: int, sums: dict, regression: bool) -> dict:
    """The training half of a metrics row, from the sums since the last one."""
    count = sums["count"]
    row = {"step": step, "epoch": round(step / steps_per_epoch, 4)}
    row["train_loss"] = sums["loss"] / count if count else None
    if not regression:
        row["train_accuracy"] = sums["correct"] / count if count else None
    row["grad_norm"] = sums["grad_norm"] / sums["steps"] if sums["steps"] else None
    return row


def _format_row(name: str, row: dict) -> str:
    f = lambda k, label: f" {label} {row[k]:.4f}" if row.get(k) is not None else ""  # noqa: E731
    return (
        f"{name + ': ' if name else ''}step {row['step']} (epoch {row['epoch']:.2f}):"
        f"{f('train_loss', 'train loss')}{f('train_accuracy', 'acc')} |{f('test_loss', 'test loss')}"
        f"{f('test_accuracy', 'acc')} |{f('grad_norm', 'grad norm')} | {row['steps_per_second']:.1f} steps/s"
        + (" | DIVERGED (frozen)" if row.get("diverged") else "")
    )


def run(config, workdir: Path) -> RunResult:
    train_lib.validate_config(config)
    stacked = bool(config.sweep)
    runs = sweep_lib.expand(config) if stacked else [("", config)]
    names, run_configs = [n for n, _ in runs], [c for _, c in runs]
    parallel.maybe_initialize_distributed()
    main = parallel.is_main_process()
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = data_lib.load(config)
    num_steps = train_lib.total_steps(config, len(dataset.train))
    spe = data_lib.steps_per_epoch(len(dataset.train), config.batch_size)
    regression = data_lib.is_regression(config)
    config_dict = config.to_dict()
    mesh = parallel.make_mesh()

    if stacked:
        state = sweep_lib.create_state(run_configs, lambda c: train_lib.create_state(c, num_steps))
    else:
        state = train_lib.create_state(config, num_steps)
    state = parallel.put_state(state, mesh, stacked)
    shapes = ckpt_lib.param_shapes(state.params)
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", config.max_checkpoints_to_keep)
    writers = []
    try:
        restored = checkpointer.restore_compatible(parallel.abstract_like(state), config_dict, shapes)
        start, elapsed = 0, 0.0
        if restored is not None:
            start, state, meta = restored
            elapsed = float(meta.get("elapsed_seconds", 0.0))
            logging.info("resumed from step %d in %s", start, checkpointer.directory)
        if main:
            writers = [metrics_lib.MetricsWriter(workdir / "runs" / n if n else workdir, start) for n in names]
        logging.info(
            "%s: %d train / %d test examples from %s; %d steps (%.2f epochs) of %d run(s), %d parameters each; "
            "%d device(s), %d process(es)",
            config.dataset, len(dataset.train), len(dataset.test), dataset.source, num_steps, num_steps / spe,
            len(runs), model_lib.count_params(state.params) // len(runs), mesh.size, jax.process_count(),
        )  # fmt: skip
        train_data = parallel.put_replicated({"inputs": dataset.train.inputs, "targets": dataset.train.targets}, mesh)
        chunk_fn, eval_fn, reset_fn = compile_steps(config, state.apply_fn, mesh, stacked)
        # Indices (N, B) or (N, R, B): shard the batch (single run) or run axis (sweep) when it divides.
        index_sharding = parallel.axis_sharding(mesh, len(runs) if stacked else config.batch_size, axis=1)

        last_saved = start if restored is not None else None
        last_rows = None
        diverged = set()
        t_run = t_interval = time.perf_counter()
        interval_start = step = start

        def save(at_step):
            nonlocal last_saved
            if last_saved != at_step:
                meta = {"config": config_dict, "param_shapes": shapes, "step": at_step, "run_names": names,
                        "elapsed_seconds": elapsed + time.perf_counter() - t_run}  # fmt: skip
                checkpointer.save(at_step, state, meta)
                last_saved = at_step

        progress = _progress_bar(config, num_steps, start, main)
        with ckpt_lib.StopOnSignal() as stop:
            while step < num_steps:
                end = min(
                    metrics_lib.next_due(step, config.eval_every_steps, config.eval_offset),
                    metrics_lib.next_due(step, config.checkpoint_every_steps),
                    metrics_lib.next_due(step, config.steps_per_call),
                    num_steps,
                )
                idx, mask = _indices(run_configs, len(dataset.train), config.batch_size, step, end)
                idx, mask = parallel.put((idx, mask), (index_sharding, index_sharding))
                state = chunk_fn(state, train_data, idx, mask)
                progress.update(end - step)
                step = end
                sums = {k: np.atleast_1d(v) for k, v in parallel.fetch(state.sums).items()}  # waits for the chunk
                stopping = parallel.any_process(stop.requested)
                newly = {k for k in range(len(runs)) if sums["nonfinite"][k] and k not in diverged}
                if newly and not stacked:
                    good = int(parallel.fetch(state.step))
                    save(good)
                    checkpointer.wait()
                    raise train_lib.DivergenceError(
                        f"the loss or gradient became non-finite at step {good + 1} (of steps "
                        f"{good + 1}..{step}); the state after step {good} is saved in "
                        f"{checkpointer.directory}. Lower learning_rate or set clip_norm, in a new workdir."
                    )
                for k in sorted(newly):  # a sweep goes on; the diverged run stays frozen
                    logging.warning("run %s: non-finite loss; its state is frozen from here on", names[k])
                diverged |= newly
                if metrics_lib.should_run(step, config.eval_every_steps, num_steps, config.eval_offset):
                    rate = (step - interval_start) / (time.perf_counter() - t_interval)
                    tests = _evaluate(eval_fn, state.params, dataset.test, config.eval_batch_size, mesh,
                                      regression, len(runs), stacked)  # fmt: skip
                    last_rows = []
                    for k, test in enumerate(tests):
                        row = _train_row(step, spe, {n: float(v[k]) for n, v in sums.items()}, regression)
                        row.update(test, steps_per_second=rate, elapsed_seconds=elapsed + time.perf_counter() - t_run)
                        if k in diverged:
                            row["diverged"] = True
                        last_rows.append(row)
                        if main:
                            writers[k].write(row)
                            progress.write(_format_row(names[k], row))
                    state = reset_fn(state)
                    t_interval, interval_start = time.perf_counter(), step
                if metrics_lib.should_run(step, config.checkpoint_every_steps, num_steps) or stopping:
                    save(step)
                if stopping:
                    logging.warning("signal: saved step %d, stopping", step)
                    break
        progress.close()
        return RunResult(state, step, stopping if num_steps > start else False, last_rows, names)
    finally:
        checkpointer.close()  # waits for the last async save, on every exit path
        for w in writers:
            w.close()


def _progress_bar(config, total: int, initial: int, main: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", disable=not (config.progress_bar and main),
                dynamic_ncols=True, mininterval=1.0)  # fmt: skip
