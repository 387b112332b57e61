"""Training: config checks, state, and the pure train and eval steps.

The host loop that calls them is `irnn_jax.loop`. Everything here is pure: a step gathers its
batch on the device from indices that are a function of the step (`input_pipeline`), and the
running training-metric sums live in the state, so a run stopped by a signal and resumed from its
checkpoint ends bit-identical to an uninterrupted one.
"""

import math

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from irnn_jax import input_pipeline, optim, parallel, recurrence, sweep
from irnn_jax import model as model_lib

OPTIMIZERS = optim.OPTIMIZERS
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

    def need_int(field, low, note=""):
        v = c.get(field)
        need(isinstance(v, int) and v >= low, f"{field} must be an integer >= {low}{note}, got {v!r}")

    datasets, tasks = input_pipeline.DATASETS, input_pipeline.TASKS
    need(c.dataset in datasets, f"dataset must be one of {datasets}, got {c.dataset!r}")
    need(c.task in tasks, f"task must be one of {tasks}, got {c.task!r}")
    sources = input_pipeline.DATA_SOURCES
    need(c.data_source in sources, f"data_source must be one of {sources}, got {c.data_source!r}")
    need(
        not (c.data_dir and c.data_source != "auto"),
        f"data_dir and data_source name two sources ({c.data_dir!r}, {c.data_source!r}); set one",
    )
    need(c.cell in model_lib.CELLS, f"cell must be one of {model_lib.CELLS}, got {c.cell!r}")
    recurrences = recurrence.RECURRENCES
    need(c.recurrence in recurrences, f"recurrence must be one of {recurrences}, got {c.recurrence!r}")
    need(
        recurrence.supports(c.recurrence, c.cell),
        f"recurrence {c.recurrence!r} cannot run cell {c.cell!r}; set recurrence to 'fused' for it",
    )
    need(c.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}")
    need(c.lr_schedule in optim.SCHEDULES, f"lr_schedule must be one of {optim.SCHEDULES}, got {c.lr_schedule!r}")
    need_int("warmup_steps", 0)
    need(
        math.isfinite(c.input_std) and c.input_std > 0 and math.isfinite(c.input_mean),
        f"input_std must be > 0 and input_mean finite, got {c.input_std!r}, {c.input_mean!r}",
    )
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
        "steps_per_call",
        "max_checkpoints_to_keep",
    ):
        need_int(field, 1)
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
    need_int("num_train_steps", 0, " (0: use num_epochs)")
    need_int("num_epochs", 1, " (num_train_steps > 0 overrides it)")
    need(
        isinstance(c.checkpoint_every_seconds, (int, float))
        and math.isfinite(c.checkpoint_every_seconds)
        and c.checkpoint_every_seconds >= 0,
        f"checkpoint_every_seconds must be >= 0 (0: off), got {c.checkpoint_every_seconds!r}",
    )
    need(
        isinstance(c.permutation_seed, int) and c.permutation_seed >= 0 and isinstance(c.seed, int) and c.seed >= 0,
        f"seed and permutation_seed must be integers >= 0, got {c.seed!r} and {c.permutation_seed!r}",
    )
    need(
        math.isfinite(c.recurrent_lr_scale) and c.recurrent_lr_scale >= 0,
        f"recurrent_lr_scale must be >= 0 (1: the learning rate of the rest), got {c.recurrent_lr_scale!r}",
    )
    need(
        math.isfinite(c.update_clip_norm) and c.update_clip_norm >= 0,
        f"update_clip_norm must be >= 0 (0 turns it off), got {c.update_clip_norm!r}",
    )
    need(
        math.isfinite(c.skip_spike_factor) and (c.skip_spike_factor == 0 or c.skip_spike_factor > 1),
        f"skip_spike_factor must be 0 (off) or > 1, got {c.skip_spike_factor!r}",
    )
    need(
        math.isfinite(c.ema_decay) and 0 <= c.ema_decay < 1,
        f"ema_decay must be in [0, 1) (0: evaluate the weights themselves), got {c.ema_decay!r}",
    )
    need_int("validation_size", 0, " (0: no validation split)")
    need_int("validation_seed", 0)
    need_int("eval_offset", 0)
    need(
        (c.dataset == "adding") == (c.task == "adding"),
        f"task 'adding' goes with dataset 'adding' only, got dataset {c.dataset!r} and task {c.task!r}",
    )
    if c.dataset == "adding":
        for field, low in (("sequence_length", 2), ("num_train_examples", 1), ("num_test_examples", 1)):
            need_int(field, low)
    if "earlier_passes" in c:  # S3's replay (row_mnist tanh50_dense30_as_logged)
        need(c.earlier_passes in (1, 2, 3), f"earlier_passes must be 1, 2 or 3, got {c.earlier_passes!r}")
    if c.sweep:
        try:
            sweep.parse(c.sweep)
        except sweep.SweepError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


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
    )


def create_state(config, num_steps: int = 0) -> TrainState:
    """Initial parameters (from `config.seed`) and optimiser state; `num_steps`: the run's
    length, which a learning-rate schedule other than constant needs."""
    model = build_model(config)
    steps, width = input_pipeline.task_info(config).sequence_shape
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, steps, width), jnp.float32))["params"]
    tx = make_optimizer(config, num_steps)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, sums=zero_sums())


def make_optimizer(config, num_steps: int = 0):
    """`optim.make_optimizer` for a config's optimizer, learning rate, clipping and schedule."""
    return optim.make_optimizer(
        config.optimizer, config.learning_rate, config.clip_norm, config.lr_schedule, num_steps, config.warmup_steps,
        config.recurrent_lr_scale, config.update_clip_norm, config.ema_decay, config.skip_spike_factor,
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


def batch_gradients(params, apply_fn, batch: dict, loss_fn, mesh=None):
    """((mean loss, (loss sum, correct, count)), gradients of the mean loss) over the batch.

    With a `mesh` (a single run whose batch axis is split over the mesh's devices), each device
    differentiates its share of the batch, divided by the whole batch's count, and one all-reduce
    sums the results: data parallelism written out with `shard_map`. Left to the automatic
    partitioner, the same jitted step all-reduced the scan's weight-gradient accumulator at every
    one of the 784 time steps and ran 2x slower on 2 devices than on one.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if mesh is None:
        return grad_fn(params, apply_fn, batch)

    def share(params, batch):  # this device's part of the batch, divided by the whole batch's count
        return grad_fn(params, apply_fn, batch, jax.lax.psum(batch["mask"].sum(), parallel.AXIS))

    return parallel.sum_over_batch_shards(share, mesh)(params, batch)


def reset_sums(state: TrainState) -> TrainState:
    """Zeroes the training-metric sums after an evaluation, all but `nonfinite`: a run that diverged
    stays frozen (train_step refuses every update while it is > 0)."""
    return state.replace(sums={k: v if k == "nonfinite" else jnp.zeros_like(v) for k, v in state.sums.items()})


def train_step(state: TrainState, batch: dict, loss_fn, mesh=None) -> TrainState:
    """One optimiser step; pure. Once a step is non-finite the state stops changing.

    The update is applied only while every step so far was finite, so the state
    kept after a divergence is the last good one (the loop saves it and raises).
    `mesh`: see `batch_gradients`.
    """
    (loss, (loss_sum, correct, count)), grads = batch_gradients(state.params, state.apply_fn, batch, loss_fn, mesh)
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


def train_chunk(state: TrainState, train_data: dict, idx_NxB, mask_NxB, loss_fn, mesh=None) -> TrainState:
    """N consecutive train steps in one call, gathering each batch on the device.

    `train_data` holds the whole training split on the device (`input_pipeline.put_split`);
    idx/mask are `input_pipeline.train_indices` of the N steps. N steps in one call equal N calls
    of one step, bit for bit (tested). `mesh`: see `batch_gradients`.
    """

    def body(s, idx_mask):
        return train_step(s, input_pipeline.gather(train_data, *idx_mask), loss_fn, mesh), None

    return jax.lax.scan(body, state, (idx_NxB, mask_NxB))[0]
