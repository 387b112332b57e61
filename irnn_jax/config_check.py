"""Config checks: every field of a run's config in range before anything runs.

`validate_config` names every bad field at once, in one ConfigError; the command line calls it
before it touches JAX, and `loop.train_and_evaluate` and `loop.setup` call it again for callers
from Python (cheap, pure Python).
"""

import math

from jax._src import xla_bridge

from irnn_jax import input_pipeline, native, optim, recurrence, sweep
from irnn_jax import model as model_lib

OPTIMIZERS = optim.OPTIMIZERS


class ConfigError(ValueError):
    """A config field is out of range; the message names every such field."""


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
    recurrences = recurrence.CONFIG_VALUES
    need(c.recurrence in recurrences, f"recurrence must be one of {recurrences}, got {c.recurrence!r}")
    need(
        recurrence.supports(c.recurrence, c.cell),
        f"recurrence {c.recurrence!r} cannot run cell {c.cell!r}; set recurrence to 'fused' for it",
    )
    if c.recurrence == "native" and c.cell in recurrence.NATIVE_CELLS:  # not built, not on CPU, too wide
        try:
            # Before JAX starts its backends (the command line checks before --cpu_devices applies) the
            # platform waits for the second check, in loop.train_and_evaluate: asking would start them.
            platform = None if xla_bridge.backends_are_initialized() else "any"
            native.check(recurrence.NATIVE_CELLS[c.cell], c.hidden_size, platform)
        except native.NativeUnavailable as e:
            need(False, str(e))
    need_int("grad_chunk_rows", -1, " (-1: auto, 0: the whole batch at once)")
    need_int("unroll", 1)
    need(c.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}")
    need(c.lr_schedule in optim.SCHEDULES, f"lr_schedule must be one of {optim.SCHEDULES}, got {c.lr_schedule!r}")
    need_int("warmup_steps", 0)
    if c.lr_schedule == "step":
        epochs = tuple(c.lr_step_epochs)
        need(
            bool(epochs) and all(isinstance(e, int) and e >= 1 for e in epochs) and list(epochs) == sorted(set(epochs)),
            f"lr_step_epochs must be rising integers >= 1 (epochs after which the rate drops), got {epochs!r}",
        )
        need(
            math.isfinite(c.lr_step_factor) and 0 < c.lr_step_factor < 1,
            f"lr_step_factor must be in (0, 1) (the rate is multiplied by it), got {c.lr_step_factor!r}",
        )
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
    need(
        math.isfinite(c.input_init_std) and c.input_init_std > 0,
        f"input_init_std must be finite and > 0, got {c.input_init_std!r}",
    )
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
    checked = {"input_std", "input_mean", "learning_rate", "clip_norm", "recurrent_gain", "input_init_std"}
    for field, v in c.items():  # every other float field: a non-finite value is never meant
        if field not in checked and isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{field} must be finite, got {v!r}")
    if c.sweep:
        try:
            members = sweep.expand(c)
        except sweep.SweepError as e:
            problems.append(str(e))
        else:  # each run of the sweep passes the checks a single run does
            for name, member in members:
                try:
                    validate_config(member)
                except ConfigError as e:
                    lines = str(e).splitlines()[1:]
                    problems.extend(f"sweep run {name}: {line.strip()}" for line in lines)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def check_split(config, dataset) -> None:
    """ConfigError unless config.validation_size leaves training examples in `dataset` (a data.Dataset):
    the one check that needs the data, made before the run's workdir exists."""
    n = len(dataset.train)
    if config.validation_size and not config.validation_size < n:
        raise ConfigError(
            f"invalid config:\n  validation_size must be below the {n} training examples, got {config.validation_size}"
        )
