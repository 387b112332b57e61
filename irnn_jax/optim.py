"""Optimisers with Keras' constants, behind global-norm clipping.

The learning rate and the clipping norm are injected hyperparameters: they
live in the optimiser state, not in the (static) transformation, so runs of a
sweep share one transformation and `jax.vmap` gives each its own values.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")


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


def clip_by_global_norm(max_norm) -> optax.GradientTransformation:
    """Scales the gradient to global norm `max_norm` when larger; 0 turns it off.

    `max_norm` may be a traced value (an injected hyperparameter), so "off" is
    a select rather than a Python branch.
    """

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.where((max_norm > 0) & (norm > max_norm), max_norm / norm, 1.0)
        return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_leaves(name: str, factor: float) -> optax.GradientTransformation:
    """Multiplies the updates of every parameter called `name` (the last key of its path) by `factor`:
    a learning rate of its own for, say, the recurrent kernel."""

    def update(updates, state, params=None):
        del params

        def one(path, u):
            last = path[-1]
            key = getattr(last, "key", getattr(last, "name", None))
            return u * jnp.asarray(factor, u.dtype) if key == name else u

        return jax.tree_util.tree_map_with_path(one, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class EmaState(NamedTuple):
    ema: Any  # the moving average of the parameters, a tree like them


def track_ema(decay: float) -> optax.GradientTransformation:
    """Passes the updates through and keeps, in its state, an exponential moving average of the
    parameters they lead to: ema <- decay * ema + (1 - decay) * (params + updates), starting from the
    initial parameters (so no bias correction is needed). Last in the chain: it must see the final
    updates. `ema_params(opt_state)` reads it."""

    def init(params):
        return EmaState(jax.tree.map(jnp.copy, params))  # its own buffers: the train step donates the state

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("track_ema needs the parameters: call update(updates, state, params)")
        ema = jax.tree.map(
            lambda e, p, u: decay * e + (1 - decay) * (p + u).astype(e.dtype), state.ema, params, updates
        )
        return updates, EmaState(ema)

    return optax.GradientTransformation(init, update)


def ema_params(opt_state):
    """The moving average of the parameters kept by `track_ema` in `opt_state`, or None without one."""
    found = [
        x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, EmaState)) if isinstance(x, EmaState)
    ]
    return found[0].ema if found else None


class SpikeState(NamedTuple):
    inner: Any  # the wrapped optimiser's state
    log_norm: jax.Array  # running mean of log(global gradient norm), each step's capped (see skip_spikes)
    count: jax.Array  # steps seen
    skipped: jax.Array  # steps skipped


SPIKE_WARMUP_STEPS = 100  # steps seen before any may be skipped: the running mean settles first


def skip_spikes(
    inner: optax.GradientTransformation, factor: float, decay: float = 0.99, warmup: int = SPIKE_WARMUP_STEPS
) -> optax.GradientTransformation:
    """`inner`, except that a step whose global gradient norm exceeds `factor` times the running
    geometric mean of the norms (an exponential moving average of the log norm, `decay`) is skipped:
    zero update, and `inner`'s state (moments, EMA, schedule count) left as it was. No step is skipped
    before `warmup` steps were seen.

    Every step moves the mean, a spike by at most log(factor): so a lone spike barely shifts it, and a
    lasting rise of the norm (they grow several-fold early in training) is followed within a few
    hundred steps instead of being skipped for ever. (A mean of the steps taken only, the first form
    of this, froze once the norm had risen past the factor: every later step was skipped.)"""
    log_factor = math.log(factor)  # a Python float: this may run under a trace (jax.eval_shape)

    def init(params):
        zero = jnp.zeros((), jnp.int32)
        return SpikeState(inner.init(params), jnp.zeros((), jnp.float32), zero, zero)

    def update(grads, state, params=None):
        log_norm = jnp.log(optax.tree.norm(grads)).astype(jnp.float32)
        spike = (state.count >= warmup) & (log_norm > state.log_norm + log_factor)
        updates, inner_state = inner.update(grads, state.inner, params)
        updates = jax.tree.map(lambda u: jnp.where(spike, jnp.zeros_like(u), u), updates)
        inner_state = jax.tree.map(lambda new, old: jnp.where(spike, old, new), inner_state, state.inner)
        capped = jnp.minimum(log_norm, state.log_norm + log_factor)
        mean = jnp.where(state.count == 0, log_norm, decay * state.log_norm + (1 - decay) * capped)
        return updates, SpikeState(inner_state, mean, state.count + 1, state.skipped + jnp.where(spike, 1, 0))

    return optax.GradientTransformation(init, update)


def skipped_steps(opt_state):
    """The running count of steps `skip_spikes` skipped (an array: one per run of a sweep), or None."""
    return opt_state.skipped if isinstance(opt_state, SpikeState) else None


def _factory(name: str):
    def make(learning_rate, clip_norm):
        if name == "rmsprop":
            # Keras RMSprop: rho 0.9, eps 1e-7 outside the square root, velocity from 0.
            opt = optax.rmsprop(learning_rate, decay=0.9, eps=1e-7, initial_scale=0.0, eps_in_sqrt=False)
        elif name == "adam":
            opt = optax.chain(scale_by_keras_adam(0.9, 0.999, 1e-7), optax.scale_by_learning_rate(learning_rate))
        elif name == "sgd":
            opt = optax.sgd(learning_rate)
        else:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
        return optax.chain(clip_by_global_norm(clip_norm), opt)

    return make


def step_decay(warmup_steps: int, boundaries: tuple[int, ...], factor: float):
    """step -> a linear warm-up from 0 over `warmup_steps`, then 1, times `factor` once for each of
    `boundaries` (optimiser steps) the step has reached: a step decay."""
    bounds = jnp.asarray(sorted(boundaries), jnp.int32)

    def schedule(count):
        warm = jnp.minimum(1.0, (count + 0.0) / warmup_steps) if warmup_steps > 0 else 1.0
        passed = jnp.sum(count >= bounds)
        return warm * jnp.asarray(factor, jnp.float32) ** passed

    return schedule


def schedule_factor(
    schedule: str, total_steps: int, warmup_steps: int = 0, step_boundaries: tuple[int, ...] = (), step_factor=1.0
):
    """step -> multiplier of the learning rate: 1 (constant); a linear warm-up from 0 over
    `warmup_steps` then a cosine from 1 to 0 at `total_steps` (cosine); or the warm-up, then 1 times
    `step_factor` at each of `step_boundaries` (step)."""
    if schedule == "constant":
        return None
    if schedule == "step":
        if not step_boundaries:
            raise ValueError("a step schedule needs the steps at which the rate drops")
        return step_decay(warmup_steps, tuple(step_boundaries), step_factor)
    if schedule != "cosine":
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if total_steps < 1:
        raise ValueError(f"a cosine schedule needs the run's length in steps, got {total_steps!r}")
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps, max(total_steps, warmup_steps + 1), 0.0)


def make_optimizer(
    name: str, learning_rate: float, clip_norm: float, schedule: str = "constant", total_steps: int = 0,
    warmup_steps: int = 0, recurrent_lr_scale: float = 1.0, update_clip_norm: float = 0.0, ema_decay: float = 0.0,
    skip_spike_factor: float = 0.0, step_boundaries: tuple[int, ...] = (), step_factor: float = 1.0,
) -> optax.GradientTransformation:  # fmt: skip
    """Global-norm clipping of the gradient (off when clip_norm is 0), then the Keras-exact optimiser.

    A non-constant `schedule` multiplies the update by its factor at each step (`schedule_factor`;
    "step" drops it by `step_factor` at each of `step_boundaries`); the learning
    rate stays an injected hyperparameter, so sweep runs share the schedule's shape.
    `recurrent_lr_scale` != 1 multiplies the recurrent kernels' updates by it (their own learning
    rate); `update_clip_norm` > 0 clips the global norm of the update itself, after the optimiser's
    transform and the schedule; `ema_decay` > 0 keeps a moving average of the parameters
    (`track_ema`), which evaluation then uses; `skip_spike_factor` > 0 wraps it all in `skip_spikes`.
    Each is in the chain only when set, so the optimiser state of runs
    without them is as it always was (and their checkpoints restore)."""
    opt = optax.inject_hyperparams(_factory(name))(learning_rate=learning_rate, clip_norm=clip_norm)
    chain = [opt]
    factor = schedule_factor(schedule, total_steps, warmup_steps, step_boundaries, step_factor)
    if factor is not None:
        chain.append(optax.scale_by_schedule(factor))
    if recurrent_lr_scale != 1.0:
        chain.append(scale_leaves("recurrent_kernel", recurrent_lr_scale))
    if update_clip_norm > 0:
        chain.append(clip_by_global_norm(update_clip_norm))
    if ema_decay > 0:
        chain.append(track_ema(ema_decay))
    tx = chain[0] if len(chain) == 1 else optax.chain(*chain)
    return skip_spikes(tx, skip_spike_factor) if skip_spike_factor > 0 else tx


def with_hyperparams(opt_state, learning_rate: float, clip_norm: float):
    """The same optimiser state with other injected values (for sweep runs)."""
    if isinstance(opt_state, SpikeState):
        return opt_state._replace(inner=with_hyperparams(opt_state.inner, learning_rate, clip_norm))
    if isinstance(opt_state, tuple) and not hasattr(opt_state, "hyperparams"):  # (injected, schedule)
        return (with_hyperparams(opt_state[0], learning_rate, clip_norm), *opt_state[1:])
    hp = dict(opt_state.hyperparams)
    hp["learning_rate"] = jnp.asarray(learning_rate, hp["learning_rate"].dtype)
    hp["clip_norm"] = jnp.asarray(clip_norm, hp["clip_norm"].dtype)
    return opt_state._replace(hyperparams=hp)
