"""Training: state, optimiser, pure train/eval steps, and the resumable loop.

`train_and_evaluate(config, workdir)` runs one experiment. The loop counts
optimiser steps, not epochs; the batch for step N is `data.batch_at(N)`; the
running training-metric sums live in the state, so a run stopped by a signal
and resumed from its checkpoint ends bit-identical to an uninterrupted one.
"""

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from irnn_jax import checkpoint as ckpt_lib
from irnn_jax import data as data_lib
from irnn_jax import metrics as metrics_lib
from irnn_jax import model as model_lib

OPTIMIZERS = ("rmsprop", "adam", "sgd")
SUM_KEYS = ("loss", "correct", "count", "grad_norm", "steps", "nonfinite")


class ConfigError(ValueError):
    """A config field is out of range; the message names every such field."""


class DivergenceError(FloatingPointError):
    """The training loss or gradient became NaN or infinite."""


# ------------------------------------------------------------------- config


def validate_config(config) -> None:
    """Raises ConfigError naming every field that is out of range."""
    c = config
    problems = []

    def need(ok, msg):
        if not ok:
            problems.append(msg)

    need(c.dataset in data_lib.DATASETS, f"dataset must be one of {data_lib.DATASETS}, got {c.dataset!r}")
    need(c.task in data_lib.TASKS, f"task must be one of {data_lib.TASKS}, got {c.task!r}")
    need(c.cell in model_lib.CELLS, f"cell must be one of {model_lib.CELLS}, got {c.cell!r}")
    need(c.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}")
    need(
        c.head_activation in model_lib.HEAD_ACTIVATIONS,
        f"head_activation must be one of {tuple(model_lib.HEAD_ACTIVATIONS)}, got {c.head_activation!r}",
    )
    for field in (
        "batch_size",
        "eval_batch_size",
        "hidden_size",
        "eval_every_steps",
        "checkpoint_every_steps",
        "log_every_steps",
        "max_checkpoints_to_keep",
    ):
        v = c[field]
        need(isinstance(v, int) and v >= 1, f"{field} must be an integer >= 1, got {v!r}")
    need(
        all(isinstance(s, int) and s >= 1 for s in c.head_sizes),
        f"head_sizes must be positive integers, got {c.head_sizes!r}",
    )
    need(math.isfinite(c.learning_rate) and c.learning_rate > 0, f"learning_rate must be > 0, got {c.learning_rate!r}")
    need(
        math.isfinite(c.clip_norm) and c.clip_norm >= 0,
        f"clip_norm must be >= 0 (0 turns clipping off), got {c.clip_norm!r}",
    )
    need(math.isfinite(c.recurrent_gain), f"recurrent_gain must be finite, got {c.recurrent_gain!r}")
    need(c.input_init_std > 0, f"input_init_std must be > 0, got {c.input_init_std!r}")
    need(
        isinstance(c.num_train_steps, int) and c.num_train_steps >= 0,
        f"num_train_steps must be an integer >= 0 (0: use num_epochs), got {c.num_train_steps!r}",
    )
    need(
        c.num_train_steps > 0 or (isinstance(c.num_epochs, int) and c.num_epochs >= 1),
        f"num_epochs must be an integer >= 1 when num_train_steps is 0, got {c.num_epochs!r}",
    )
    need(
        isinstance(c.eval_offset, int) and c.eval_offset >= 0,
        f"eval_offset must be an integer >= 0, got {c.eval_offset!r}",
    )
    need(
        (c.dataset == "adding") == (c.task == "adding"),
        f"task 'adding' goes with dataset 'adding' only, got dataset {c.dataset!r} and task {c.task!r}",
    )
    if c.dataset == "adding":
        for field, low in (("sequence_length", 2), ("num_train_examples", 1), ("num_test_examples", 1)):
            v = c.get(field)
            need(isinstance(v, int) and v >= low, f"{field} must be an integer >= {low}, got {v!r}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def total_steps(config, num_train_examples: int) -> int:
    """num_train_steps when > 0, else num_epochs full epochs."""
    if config.num_train_steps > 0:
        return config.num_train_steps
    return config.num_epochs * data_lib.steps_per_epoch(num_train_examples, config.batch_size)


# ---------------------------------------------------------------- optimiser


class KerasAdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def scale_by_keras_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> optax.GradientTransformation:
    """Keras Adam's direction: sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps).

    Differs from optax.adam, which adds eps to the bias-corrected sqrt(v).
    """

    def init(params):
        # Two separate trees: the train step donates the state, and a buffer
        # shared by mu and nu would be donated twice.
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return KerasAdamState(jnp.zeros((), jnp.int32), zeros(), zeros())

    def update(grads, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - b2), state.nu, grads)
        t = count.astype(jnp.float32)
        alpha = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        updates = jax.tree.map(lambda m, v: alpha * m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, KerasAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(config) -> optax.GradientTransformation:
    """Global-norm clipping (unless clip_norm is 0), then the Keras-exact optimiser."""
    lr = config.learning_rate
    if config.optimizer == "rmsprop":
        # Keras RMSprop: rho 0.9, eps 1e-7 outside the square root, velocity from 0.
        opt = optax.rmsprop(lr, decay=0.9, eps=1e-7, initial_scale=0.0, eps_in_sqrt=False)
    elif config.optimizer == "adam":
        opt = optax.chain(scale_by_keras_adam(0.9, 0.999, 1e-7), optax.scale(-lr))
    else:
        opt = optax.sgd(lr)
    if config.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
    return opt


# -------------------------------------------------------------- state, steps


class TrainState(train_state.TrainState):
    # Training-metric sums since the last evaluation. Part of the checkpoint,
    # so that a resumed run reports exactly what the uninterrupted one would.
    sums: dict


def zero_sums() -> dict:
    return {k: jnp.zeros((), jnp.int32 if k == "nonfinite" else jnp.float32) for k in SUM_KEYS}


def build_model(config) -> model_lib.SequenceClassifier:
    return model_lib.SequenceClassifier(
        num_outputs=data_lib.num_outputs(config),
        cell=config.cell,
        hidden_size=config.hidden_size,
        recurrent_gain=config.recurrent_gain,
        input_init_std=config.input_init_std,
        head_sizes=tuple(config.head_sizes),
        head_activation=config.head_activation,
    )


def create_state(config) -> TrainState:
    """Initial parameters (from `config.seed`) and optimiser state."""
    model = build_model(config)
    steps, width = data_lib.sequence_shape(config)
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, steps, width), jnp.float32))["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(config), sums=zero_sums())


def make_loss_fn(config):
    """loss(params, apply_fn, batch) -> (mean loss, (loss sum, correct count, count)).

    Classification: softmax cross-entropy and accuracy. Regression (the adding
    problem): squared error, and `correct` is 0. Masked examples count nowhere.
    """
    sequence_fn = data_lib.make_sequence_fn(config)
    regression = data_lib.is_regression(config)

    def loss_fn(params, apply_fn, batch):
        out_BxK = apply_fn({"params": params}, sequence_fn(batch["inputs"]))
        targets, mask_B = batch["targets"], batch["mask"]
        if regression:
            losses_B = jnp.square(out_BxK[:, 0] - targets)
            correct_B = jnp.zeros_like(losses_B)
        else:
            losses_B = optax.softmax_cross_entropy_with_integer_labels(out_BxK, targets)
            correct_B = jnp.argmax(out_BxK, -1) == targets
        count = mask_B.sum()
        loss_sum = (losses_B * mask_B).sum()
        return loss_sum / jnp.maximum(count, 1.0), (loss_sum, (correct_B * mask_B).sum(), count)

    return loss_fn


def train_step(state: TrainState, batch: dict, loss_fn) -> TrainState:
    """One optimiser step; pure. Once a step is non-finite the state stops changing.

    The update is applied only while every step so far was finite, so the state
    kept after a divergence is the last good one (the loop saves it and raises).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (loss_sum, correct, count)), grads = grad_fn(state.params, state.apply_fn, batch)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.sums["nonfinite"] == 0)
    stepped = state.apply_gradients(grads=grads)
    s = state.sums
    sums = {
        "loss": s["loss"] + jnp.where(ok, loss_sum, 0.0),
        "correct": s["correct"] + jnp.where(ok, correct, 0.0),
        "count": s["count"] + jnp.where(ok, count, 0.0),
        "grad_norm": s["grad_norm"] + jnp.where(ok, grad_norm, 0.0),
        "steps": s["steps"] + jnp.where(ok, 1.0, 0.0),
        "nonfinite": s["nonfinite"] + jnp.where(ok, 0, 1),
    }
    new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), stepped, state)
    return new.replace(sums=sums)


def eval_step(params, batch: dict, apply_fn, loss_fn) -> jax.Array:
    """(loss sum, correct count, example count) over the batch's real examples."""
    _, (loss_sum, correct, count) = loss_fn(params, apply_fn, batch)
    return jnp.stack([loss_sum, correct, count])


def evaluate(eval_fn, params, split: data_lib.Split, batch_size: int, regression: bool = False) -> dict:
    """Mean test loss (and accuracy, for classification) over the whole split."""
    totals = sum(np.asarray(eval_fn(params, b), np.float64) for b in data_lib.eval_batches(split, batch_size))
    loss_sum, correct, count = totals
    if regression:
        return {"test_loss": float(loss_sum / count)}
    return {"test_loss": float(loss_sum / count), "test_accuracy": float(correct / count)}


# --------------------------------------------------------------------- loop


def jitted_steps(config, apply_fn):
    """jit-compiled (train_step, eval_step) for a config's task."""
    loss_fn = make_loss_fn(config)
    train = jax.jit(functools.partial(train_step, loss_fn=loss_fn), donate_argnums=0)
    evaluate_batch = jax.jit(functools.partial(eval_step, apply_fn=apply_fn, loss_fn=loss_fn))
    return train, evaluate_batch


@dataclasses.dataclass
class RunResult:
    state: TrainState
    step: int  # optimiser steps completed
    stopped_by_signal: bool
    last_row: dict | None


def _host_sums(state: TrainState) -> dict:
    return {k: v.item() for k, v in jax.device_get(state.sums).items()}


def train_and_evaluate(config, workdir: str | Path) -> RunResult:
    """Trains and evaluates `config` in `workdir`, resuming from its latest checkpoint.

    Raises ConfigError (bad config), data.DataError (data missing or corrupt),
    checkpoint.CheckpointMismatchError (workdir holds another run) and
    DivergenceError (non-finite loss; the last good state is saved first).
    """
    validate_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = data_lib.load(config)
    num_steps = total_steps(config, len(dataset.train))
    spe = data_lib.steps_per_epoch(len(dataset.train), config.batch_size)
    config_dict = config.to_dict()
    regression = data_lib.is_regression(config)

    state = create_state(config)
    shapes = ckpt_lib.param_shapes(state.params)
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", config.max_checkpoints_to_keep)
    writer = None
    try:
        restored = checkpointer.restore_compatible(jax.eval_shape(lambda: state), config_dict, shapes)
        start, elapsed = 0, 0.0
        if restored is not None:
            start, state, meta = restored
            elapsed = float(meta.get("elapsed_seconds", 0.0))
            logging.info("resumed from step %d in %s", start, checkpointer.directory)
        writer = metrics_lib.MetricsWriter(workdir, resume_step=start)
        logging.info(
            "%s: %d train / %d test examples from %s; %d steps (%.2f epochs), %d parameters",
            config.dataset,
            len(dataset.train),
            len(dataset.test),
            dataset.source,
            num_steps,
            num_steps / spe,
            model_lib.count_params(state.params),
        )

        train_fn, eval_fn = jitted_steps(config, state.apply_fn)
        last_saved = start if restored is not None else None
        last_row = None

        def save(step):
            nonlocal last_saved
            if last_saved != step:
                meta = {
                    "config": config_dict,
                    "param_shapes": shapes,
                    "step": step,
                    "elapsed_seconds": elapsed + time.perf_counter() - t_run,
                }
                checkpointer.save(step, state, meta)
                last_saved = step

        def check_finite(step):
            if _host_sums(state)["nonfinite"]:
                good = int(state.step)
                save(good)
                checkpointer.wait()
                raise DivergenceError(
                    f"the loss or gradient became non-finite at step {good + 1} (of steps "
                    f"{good + 1}..{step}); the state after step {good} is saved in "
                    f"{checkpointer.directory}. Lower learning_rate or set clip_norm, in a new workdir."
                )

        t_run = t_interval = time.perf_counter()
        interval_start = start
        progress = _progress_bar(config, num_steps, start)
        with ckpt_lib.StopOnSignal() as stop:
            for step in range(start, num_steps):
                batch = data_lib.batch_at(dataset.train, step, config.batch_size, config.seed, config.shuffle)
                state = train_fn(state, batch)
                done = step + 1
                progress.update(1)
                is_eval = metrics_lib.should_run(done, config.eval_every_steps, num_steps, config.eval_offset)
                is_ckpt = metrics_lib.should_run(done, config.checkpoint_every_steps, num_steps)
                if is_eval or is_ckpt or stop.requested or done % config.log_every_steps == 0:
                    check_finite(done)
                if is_eval:
                    sums = _host_sums(state)  # waits for the step: the rate excludes evaluation
                    rate = (done - interval_start) / (time.perf_counter() - t_interval)
                    row = _row(done, spe, sums, regression)
                    row.update(evaluate(eval_fn, state.params, dataset.test, config.eval_batch_size, regression))
                    row["steps_per_second"] = rate
                    row["elapsed_seconds"] = elapsed + time.perf_counter() - t_run
                    state = state.replace(sums=zero_sums())
                    writer.write(row)
                    last_row = row
                    progress.write(_format_row(row))
                    t_interval, interval_start = time.perf_counter(), done
                if is_ckpt or stop.requested:
                    save(done)
                if stop.requested:
                    logging.warning("signal %d: saved step %d, stopping", stop.received, done)
                    break
        progress.close()
        return RunResult(state, done if num_steps > start else start, stop.requested, last_row)
    finally:
        checkpointer.close()  # waits for the last async save, on every exit path
        if writer is not None:
            writer.close()


def _progress_bar(config, total: int, initial: int):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="step", disable=not config.progress_bar, dynamic_ncols=True, mininterval=1.0
    )


def _row(step: int, steps_per_epoch: int, sums: dict, regression: bool) -> dict:
    """The training half of a metrics row, from the sums since the last one."""
    row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "train_loss": sums["loss"] / sums["count"]}
    if not regression:
        row["train_accuracy"] = sums["correct"] / sums["count"]
    row["grad_norm"] = sums["grad_norm"] / sums["steps"]
    return row


def _format_row(row: dict) -> str:
    acc = lambda k: f" acc {row[k]:.4f}" if k in row else ""  # noqa: E731
    return (
        f"step {row['step']} (epoch {row['epoch']:.2f}): train loss {row['train_loss']:.4f}"
        f"{acc('train_accuracy')} | test loss {row['test_loss']:.4f}{acc('test_accuracy')} | "
        f"grad norm {row['grad_norm']:.3g} | {row['steps_per_second']:.1f} steps/s"
    )
