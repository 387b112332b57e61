"""Training: the state, and the pure train and eval steps (config checks: `config_check`).

The host loop that calls them is `irnn_jax.loop`. Everything here is pure: a step gathers its
batch on the device from indices that are a function of the step (`input_pipeline`), and the
running training-metric sums live in the state, so a run stopped by a signal and resumed from its
checkpoint ends bit-identical to an uninterrupted one.
"""

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from irnn_jax import input_pipeline, optim, parallel
from irnn_jax import model as model_lib
from irnn_jax import recurrence as recurrence_lib

OPTIMIZERS = optim.OPTIMIZERS
SUM_KEYS = ("loss", "correct", "count", "grad_norm", "steps", "nonfinite")


class DivergenceError(FloatingPointError):
    """The training loss or gradient became NaN or infinite."""


def total_steps(config, num_train_examples: int) -> int:
    """num_train_steps when > 0, else num_epochs full epochs."""
    if config.num_train_steps > 0:
        return config.num_train_steps
    return config.num_epochs * input_pipeline.steps_per_epoch(num_train_examples, config.batch_size)


# -------------------------------------------------------------- state, steps


class TrainState(train_state.TrainState):
    # Training-metric sums since the last evaluation. Part of the checkpoint,
    # so that a resumed run reports exactly what the uninterrupted one would.
    sums: dict


def zero_sums() -> dict:
    return {k: jnp.zeros((), jnp.int32 if k == "nonfinite" else jnp.float32) for k in SUM_KEYS}


def build_model(config) -> model_lib.SequenceClassifier:
    return model_lib.SequenceClassifier(
        num_outputs=input_pipeline.task_info(config).num_outputs,
        cell=config.cell,
        hidden_size=config.hidden_size,
        recurrent_gain=config.recurrent_gain,
        input_init_std=config.input_init_std,
        head_sizes=tuple(config.head_sizes),
        head_activation=config.head_activation,
        recurrence=config.recurrence,
        unroll=config.get("unroll", 1),
    )


def create_state(config, num_steps: int = 0, steps_per_epoch: int = 0) -> TrainState:
    """Initial parameters (from `config.seed`) and optimiser state; `num_steps`: the run's length,
    which a learning-rate schedule other than constant needs; `steps_per_epoch`: what the step
    schedule's epochs are in steps."""
    model = build_model(config)
    steps, width = input_pipeline.task_info(config).sequence_shape
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, steps, width), jnp.float32))["params"]
    tx = make_optimizer(config, num_steps, steps_per_epoch)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, sums=zero_sums())


def make_optimizer(config, num_steps: int = 0, steps_per_epoch: int = 0):
    """`optim.make_optimizer` for a config's optimizer, learning rate, clipping and schedule (the step
    schedule's lr_step_epochs become optimiser steps through `steps_per_epoch`)."""
    boundaries, factor = (), 1.0
    if config.lr_schedule == "step":
        if steps_per_epoch < 1 and config.num_train_steps == 0 and num_steps > 0:
            steps_per_epoch = num_steps // config.num_epochs  # a run of whole epochs
        if steps_per_epoch < 1:
            raise ValueError("the step schedule needs the steps in an epoch")
        boundaries = tuple(int(e) * steps_per_epoch for e in config.lr_step_epochs)
        factor = config.lr_step_factor
    return optim.make_optimizer(
        config.optimizer, config.learning_rate, config.clip_norm, config.lr_schedule, num_steps, config.warmup_steps,
        config.recurrent_lr_scale, config.update_clip_norm, config.ema_decay, config.skip_spike_factor,
        boundaries, factor,
    )  # fmt: skip


def eval_params(state: TrainState):
    """The parameters to evaluate: the moving average when the config keeps one (ema_decay > 0), else
    the parameters themselves."""
    ema = optim.ema_params(state.opt_state)
    return state.params if ema is None else ema


def make_loss_fn(config):
    """loss(params, apply_fn, batch[, total_count]) -> (mean loss, (loss sum, correct count, count)).

    Classification: softmax cross-entropy and accuracy. Regression (the adding
    problem): squared error, and `correct` is 0. Masked examples count nowhere.
    With `total_count` the loss sum is divided by it instead of the batch's own
    count (a device's share of a batch split across devices).
    """
    sequence_fn = input_pipeline.make_sequence_fn(config)
    regression = input_pipeline.task_info(config).regression

    def loss_fn(params, apply_fn, batch, total_count=None):
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
        # The mean's divisor: this batch's count, or the whole batch's when this is one device's share.
        divisor = count if total_count is None else total_count
        return loss_sum / jnp.maximum(divisor, 1.0), (loss_sum, (correct_B * mask_B).sum(), count)

    return loss_fn


def _split_rows(batch: dict, chunk_rows: int) -> dict:
    """The batch as `row_chunks` chunks of `chunk_size` rows each (a leading axis), padded with masked
    rows to divide."""
    rows = batch["mask"].shape[0]
    parts, per = row_chunks(rows, chunk_rows), chunk_size(rows, chunk_rows)
    pad = parts * per - rows

    def split(a):
        if pad:
            a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
        return a.reshape(parts, per, *a.shape[1:])

    return jax.tree.map(split, batch)


AUTO_CHUNK_ROWS = 32  # grad_chunk_rows "auto" (-1) with the native kernels: docs/performance.md


def resolve_chunk_rows(config, rows: int, platform: str | None = None) -> int:
    """The rows a device differentiates at once for config.grad_chunk_rows, `rows` being its share of
    the batch: the value itself, or for -1 (auto) AUTO_CHUNK_ROWS where the recurrence that then runs
    is "native" (its kernels keep a (T, rows, H) array of states for the backward: past a few dozen
    rows it leaves the caches, and a batch of 1024 ran 2.1x slower than in chunks of 32) and 0 (off)
    for the XLA recurrences, which block their backward themselves, and on GPU."""
    value = config.get("grad_chunk_rows", 0)
    if value != -1:
        return value
    if (platform or jax.default_backend()) != "cpu":
        return 0
    ran = recurrence_lib.resolve(
        config.recurrence, config.cell, config.hidden_size, platform, batch=chunk_size(rows, AUTO_CHUNK_ROWS)
    )
    return AUTO_CHUNK_ROWS if ran == "native" else 0


def row_chunks(rows: int, chunk_rows: int) -> int:
    """How many chunks a share of `rows` rows is differentiated in: 1 unless chunk_rows > 0 and the
    share is larger; then as few as hold at most chunk_rows rows each."""
    return 1 if chunk_rows <= 0 or rows <= chunk_rows else -(-rows // chunk_rows)


def chunk_size(rows: int, chunk_rows: int) -> int:
    """The rows each chunk holds (`_split_rows` pads the last to this): what the recurrence runs at once."""
    return -(-rows // row_chunks(rows, chunk_rows))


def chunked_value_and_grad(loss_fn, params, apply_fn, batch: dict, total_count, chunk_rows: int):
    """`jax.value_and_grad(loss_fn)` of the batch, the rows differentiated `chunk_rows` at a time
    (`row_chunks`) and the chunks' gradients summed in a loop: the gradient of the same mean (each
    chunk's loss sum divided by the whole batch's count), to float32 rounding. Each chunk's forward
    keeps only its own rows' states for its backward, so a large batch works in the memory, and at
    the per-row speed, of a small one."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    parts = row_chunks(batch["mask"].shape[0], chunk_rows)
    if parts == 1:
        return grad_fn(params, apply_fn, batch, total_count)
    if total_count is None:
        total_count = batch["mask"].sum()

    def body(acc, chunk):
        (_, aux), grads = grad_fn(params, apply_fn, chunk, total_count)
        return jax.tree.map(jnp.add, acc, (aux, grads)), None

    zeros = (tuple(jnp.zeros((), jnp.float32) for _ in range(3)), jax.tree.map(jnp.zeros_like, params))
    (aux, grads), _ = jax.lax.scan(body, zeros, _split_rows(batch, chunk_rows))
    return (aux[0] / jnp.maximum(total_count, 1.0), aux), grads


def batch_gradients(params, apply_fn, batch: dict, loss_fn, mesh=None, chunk_rows: int = 0):
    """((mean loss, (loss sum, correct, count)), gradients of the mean loss) over the batch.

    With a `mesh` (a single run whose batch axis is split over the mesh's devices), each device
    differentiates its share of the batch, divided by the whole batch's count, and one all-reduce
    sums the results: data parallelism written out with `shard_map`. Left to the automatic
    partitioner, the same jitted step all-reduced the scan's weight-gradient accumulator at every
    one of the 784 time steps and ran 2x slower on 2 devices than on one.
    """
    if mesh is None:
        return chunked_value_and_grad(loss_fn, params, apply_fn, batch, None, chunk_rows)

    def share(params, batch):  # this device's part of the batch, divided by the whole batch's count
        total = jax.lax.psum(batch["mask"].sum(), parallel.AXIS)
        return chunked_value_and_grad(loss_fn, params, apply_fn, batch, total, chunk_rows)

    return parallel.sum_over_batch_shards(share, mesh)(params, batch)


def reset_sums(state: TrainState) -> TrainState:
    """Zeroes the training-metric sums after an evaluation, all but `nonfinite`: a run that diverged
    stays frozen (train_step refuses every update while it is > 0)."""
    return state.replace(sums={k: v if k == "nonfinite" else jnp.zeros_like(v) for k, v in state.sums.items()})


def train_step(state: TrainState, batch: dict, loss_fn, mesh=None, chunk_rows: int = 0) -> TrainState:
    """One optimiser step; pure. Once a step is non-finite the state stops changing.

    The update is applied only while every step so far was finite, so the state
    kept after a divergence is the last good one (the loop saves it and raises).
    `mesh`: see `batch_gradients`.
    """
    (loss, (loss_sum, correct, count)), grads = batch_gradients(
        state.params, state.apply_fn, batch, loss_fn, mesh, chunk_rows
    )
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


def eval_step(params, test_data: dict, idx_B, mask_B, apply_fn, loss_fn, mesh=None) -> jax.Array:
    """(loss sum, correct count, example count) over one test batch's real examples.

    The batch is gathered on the device from `test_data` (`input_pipeline.put_split`). With a
    `mesh`, the batch axis is split over its devices and the sums added up."""

    def sums(params, batch):
        _, (loss_sum, correct, count) = loss_fn(params, apply_fn, batch)
        return jnp.stack([loss_sum, correct, count])

    batch = input_pipeline.gather(test_data, idx_B, mask_B)
    if mesh is None:
        return sums(params, batch)
    return parallel.sum_over_batch_shards(sums, mesh)(params, batch)


def train_chunk(
    state: TrainState, train_data: dict, idx_NxB, mask_NxB, loss_fn, mesh=None, chunk_rows: int = 0
) -> TrainState:
    """N consecutive train steps in one call, gathering each batch on the device.

    `train_data` holds the whole training split on the device (`input_pipeline.put_split`);
    idx/mask are `input_pipeline.train_indices` of the N steps. N steps in one call equal N calls
    of one step, bit for bit (tested). `mesh`: see `batch_gradients`.
    """

    def body(s, idx_mask):
        return train_step(s, input_pipeline.gather(train_data, *idx_mask), loss_fn, mesh, chunk_rows), None

    return jax.lax.scan(body, state, (idx_NxB, mask_NxB))[0]


def divergence_advice(config) -> str:
    """What to try after a divergence, given what the config already does."""
    if config.clip_norm > 0:
        return (
            f"Lower learning_rate (clipping is already on, clip_norm={config.clip_norm:g}: a smaller value may help), "
            "in a new workdir."
        )
    return "Lower learning_rate or set clip_norm (1.0, say), in a new workdir."
