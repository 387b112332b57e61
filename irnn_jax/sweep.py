"""Sweeps: many runs of one model trained together, one jitted step for all.

`config.sweep` lists values for some fields, e.g.

    --config.sweep="learning_rate=1e-6,1e-5,1e-4 seed=0,1"

and every combination (here 6) becomes one run. The runs share the model's
shapes and the data, and differ in SWEEPABLE fields: the seed (initial
parameters and data order), the learning rate and clipping norm (injected
optimiser hyperparameters), and the IRNN's initial recurrent gain and input
scale. One jitted step trains them all over a leading run axis (`over_runs`:
one run after another on CPU, where each device takes its own runs; vmapped
on accelerators); each run writes its own metrics.jsonl under WORKDIR/runs/,
and one checkpoint holds the whole sweep.
"""

import itertools

import jax
import jax.numpy as jnp

from irnn_jax import optim

SWEEPABLE = {"seed": int, "learning_rate": float, "clip_norm": float, "recurrent_gain": float, "input_init_std": float}


class SweepError(ValueError):
    """The sweep spec cannot be parsed; the message says why."""


def parse(spec: str) -> dict[str, list]:
    """'a=1,2 b=3' -> {'a': [1, 2], 'b': [3]}, values typed by SWEEPABLE."""
    fields = {}
    for part in spec.replace(";", " ").split():
        name, sep, values = part.partition("=")
        if not sep or not values:
            raise SweepError(f"sweep entry {part!r} is not FIELD=V1,V2,...")
        if name not in SWEEPABLE:
            raise SweepError(f"sweep field {name!r} is not sweepable; choose from {sorted(SWEEPABLE)}")
        if name in fields:
            raise SweepError(f"sweep field {name!r} appears twice")
        try:
            fields[name] = [SWEEPABLE[name](v) for v in values.split(",") if v]
        except ValueError as e:
            raise SweepError(f"sweep field {name!r}: {e}") from e
    if not fields:
        raise SweepError(f"empty sweep spec {spec!r}")
    return fields


def expand(config) -> list[tuple[str, object]]:
    """[(run name, config of that run)], in a fixed order (row-major over the spec)."""
    fields = parse(config.sweep)
    runs = []
    for k, values in enumerate(itertools.product(*fields.values())):
        c = config.copy_and_resolve_references()
        c.sweep = ""
        for name, v in zip(fields, values, strict=True):
            c[name] = v
        label = "_".join(
            f"{n}={v:g}" if isinstance(v, float) else f"{n}={v}" for n, v in zip(fields, values, strict=True)
        )
        runs.append((f"{k:03d}_{label}", c))
    return runs


def create_state(configs: list, create_one):
    """The runs' states stacked along a leading axis, sharing one static part.

    `create_one(config)` builds a single run's state. Gains and scales only
    change initial values, so the first run's apply_fn serves all; learning
    rates and clipping norms are written into each run's optimiser state.
    """
    first = create_one(configs[0])
    states = []
    for c in configs:
        s = create_one(c)
        opt_state = optim.with_hyperparams(s.opt_state, c.learning_rate, c.clip_norm)
        states.append(first.replace(params=s.params, opt_state=opt_state, sums=s.sums, step=s.step))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def over_runs(fn, in_axes: tuple, sequential: bool):
    """fn mapped over the run axis of its arguments (`in_axes[i]`: argument i's run axis, None:
    shared), the result's run axis leading.

    `sequential=False`: `jax.vmap`, one batched step for all runs, the form for accelerators.
    `sequential=True`: `lax.map`, each run's step as a single run computes it, one run after the
    other. On CPU a vmapped step cost 1.3x a single run's per run (batch 32: 2 runs 79.7 ms, 4 runs
    154.8, one 30.6; `benchmarks/sweep_scaling.py`): batched matmuls of this size run slower than
    plain ones, and a core has nothing to gain from batching them. Each device runs its own runs
    (`parallel.map_over_run_shards`), so the sequence is per device."""
    if not sequential:
        return jax.vmap(fn, in_axes=in_axes)

    def mapped(*args):
        moved = [
            None if ax is None else jax.tree.map(lambda x, ax=ax: jnp.moveaxis(x, ax, 0), a)
            for a, ax in zip(args, in_axes, strict=True)
        ]

        def one(per_run):
            it = iter(per_run)
            return fn(*(a if ax is None else next(it) for a, ax in zip(args, in_axes, strict=True)))

        return jax.lax.map(one, [m for m in moved if m is not None])

    return mapped


def unstack(tree, k: int):
    """Run k's slice of a stacked tree."""
    return jax.tree.map(lambda x: x[k], tree)
