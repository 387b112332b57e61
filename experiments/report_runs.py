"""The runs behind the results page: read from workdirs and sweep folders, grouped over seeds.

`experiments.report` lays them out; `experiments.report_plots` draws them. A RUN_DIR is a workdir of
one of the experiments (or a `--mirror` of one): run.json and metrics.jsonl, or a sweep's run.json
and runs/NNN_*/metrics.jsonl (each sweep member counts as a run of its own).
"""

import dataclasses
import json
import math
import shlex
from pathlib import Path

import ml_collections
import numpy as np

from experiments.configs import adding, base, pixel_mnist, row_mnist
from irnn_jax import checkpoint, metrics, sweep, train
from irnn_jax import workdir as workdir_lib

EXPERIMENTS = {"pixel_mnist": pixel_mnist, "row_mnist": row_mnist, "adding": adding}
SOURCE_IDS = {"keras": "S0", "keras_900": "S0", "keras_default_init": "S1", "keras_relu16": "S2"}
SOURCE_IDS.update({"tanh50_dense30": "S3", "tanh50": "S4", "tanh50_dense30_as_logged": "S3"})
# Config fields that say nothing about what was trained: left out of a configuration's identity.
# The recurrence among them: every option gives the same results to float32 rounding
# (tests/test_presets_recurrence.py), so a preset's runs before and after a change of its default
# recurrence stay one configuration; the printed command still names the one a run used.
_BOOKKEEPING = checkpoint.RESUMABLE_FIELDS - {"num_epochs", "num_train_steps"} | {"name", "sweep"}


@dataclasses.dataclass
class Run:
    """One trained model: its config, metric rows and the run record of the workdir it lives in."""

    name: str  # the folder under runs/ (and the sweep member, if one)
    experiment: str
    preset: str
    config: dict
    rows: list[dict]
    sessions: list[dict]
    superseded: str = ""  # the workdir's SUPERSEDED file: why its code's results no longer stand for the preset
    sweep_size: int = 1  # the runs trained together in its workdir's sweep, on one clock (1: not a sweep)
    diverged_note: str = ""  # the workdir's DIVERGED file: a divergence its log could not record

    @property
    def diverged(self) -> bool:
        """Its loss became non-finite: a frozen sweep member, a session that ended so, or a DIVERGED file."""
        return (
            bool(self.diverged_note)
            or any(r.get("diverged") for r in self.rows)
            or any(str(s.get("outcome", "")).startswith("diverged") for s in self.sessions)
        )

    @property
    def unfinished(self) -> bool:
        """It stopped short of the length it asked for (its own num_epochs or num_train_steps) without
        diverging: under way, or left off."""
        return not self.diverged and self.rows[-1]["step"] < asked_steps(self)

    @property
    def epochs(self) -> np.ndarray:
        return np.asarray([r["epoch"] for r in self.rows], np.float64)


SUPERSEDED = "SUPERSEDED"  # a file in a committed run's folder: one line on why its code no longer stands
# A file in a committed run's folder: one line on a divergence that its log does not record (the code of
# the time stopped without writing an outcome or a diverged row).
DIVERGED = "DIVERGED"


def load_runs(workdir: Path) -> list[Run]:
    """The runs of one workdir (one, or a sweep's members); ValueError naming what is missing."""
    info_path = workdir / workdir_lib.RUN_JSON
    if not info_path.exists():
        raise ValueError(f"{workdir} has no run.json: not a workdir of experiments.* (or written before it)")
    info = json.loads(info_path.read_text())
    config = ml_collections.ConfigDict(info["config"])
    members = sweep.expand(config) if config.sweep else [("", config)]
    marker = workdir / SUPERSEDED
    superseded = marker.read_text().strip() if marker.exists() else ""
    diverged_file = workdir / DIVERGED
    diverged_note = diverged_file.read_text().strip() if diverged_file.exists() else ""
    runs = []
    for member, member_config in members:
        rows = metrics.read_rows((workdir / "runs" / member if member else workdir) / "metrics.jsonl")
        if rows:
            name = f"{workdir.name}/{member}" if member else workdir.name
            runs.append(
                Run(
                    name,
                    info["experiment"],
                    info["preset"],
                    member_config.to_dict(),
                    rows,
                    info["sessions"],
                    superseded,
                    len(members),
                    diverged_note,
                )
            )
    if not runs:
        raise ValueError(f"{workdir} has no evaluations in metrics.jsonl yet")
    for run in runs:
        run.preset = adopted_preset(run)
    return runs


# Presets a search candidate became: a run made under another preset whose settings are exactly one of
# these counts as its run (the command on the page stays the one that ran).
ADOPTED_FROM_SEARCH = ("irnn_tuned", "irnn_tuned_permuted")


def adopted_preset(run: Run) -> str:
    """The preset a run counts for: its own, or the one of ADOPTED_FROM_SEARCH whose settings it ran
    exactly (bookkeeping and the seed aside), when it ran as an irnn_fast candidate before that preset
    existed."""
    if run.experiment != "pixel_mnist" or not run.preset.startswith("irnn_fast"):
        return run.preset
    for preset in ADOPTED_FROM_SEARCH:
        if preset in pixel_mnist.PRESETS and not overrides(dataclasses.replace(run, preset=preset)):
            return preset
    return run.preset


def overrides(run: Run, with_recurrence: bool = False) -> dict:
    """What the run changed from its preset, bookkeeping and the seed aside (and the recurrence,
    unless `with_recurrence`: the command that reproduces a run names it)."""
    preset = EXPERIMENTS[run.experiment].get_config(run.preset).to_dict()
    skip = _BOOKKEEPING | {"seed"}
    if with_recurrence:
        skip = skip - {"recurrence"}
    config = config_as_now(run)
    return {k: v for k, v in config.items() if k not in skip and checkpoint.as_json(preset.get(k)) != v}


def config_as_now(run: Run) -> dict:
    """The run's config with the fields it predates filled in. A field of base.py that the run predates
    had the value base.py gives it, what the older code did (a run from before spike skipping skipped
    nothing): set against a preset that changed it since, or against seeds run after the field came."""
    preset = EXPERIMENTS[run.experiment].get_config(run.preset).to_dict()
    older = {k: checkpoint.as_json(v) for k, v in base.base_config().to_dict().items() if k in preset}
    return older | run.config


def asked_steps(run: Run) -> int:
    """The length the run's own config asks for (num_train_steps when set, else num_epochs)."""
    preset = EXPERIMENTS[run.experiment].get_config(run.preset)
    n = preset.get("num_train_examples", 60_000) - run.config.get("validation_size", 0)
    return train.total_steps(ml_collections.ConfigDict(config_as_now(run)), n)


def planned_steps(run: Run) -> int:
    """The length the run asked for: its own num_epochs and batch size, with the preset's step cap
    (a run cut short by --config.num_train_steps is set against the preset's length), on the
    preset's data (MNIST: 60,000 images) less the run's validation split."""
    preset = EXPERIMENTS[run.experiment].get_config(run.preset)
    asked = ml_collections.ConfigDict(run.config)
    asked.num_train_steps = preset.num_train_steps
    return train.total_steps(asked, preset.get("num_train_examples", 60_000) - run.config.get("validation_size", 0))


@dataclasses.dataclass
class Group:
    """Runs of one configuration that differ only in their seed."""

    runs: list[Run]

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def module(self):
        return EXPERIMENTS[self.first.experiment]

    @property
    def metric(self) -> str:
        return self.module.METRIC

    @property
    def label(self) -> str:
        sid = SOURCE_IDS.get(self.first.preset)
        name = f"{self.first.preset} ({sid})" if sid else self.first.preset
        # A field of the preset itself (not of base.py, whose later fields default to what older code did)
        # that the run's config lacks: the run is of an older version of the preset. Say so, or two rows
        # would read alike.
        preset_fields = set(self.module.get_config(self.first.preset).to_dict()) - set(base.base_config().to_dict())
        predates = sorted(preset_fields - set(self.first.config))
        if predates:
            name += f" [run before {', '.join(predates)} existed]"
        if self.first.superseded:  # kept on the page, set apart from the current code's runs
            name += f" [superseded: {self.first.superseded}]"
        if self.first.unfinished:  # under way, or left off: set apart from finished runs of its configuration
            name += " [unfinished]"
        changed = overrides(self.first)
        changed.pop("dataset", None)
        changed.pop("num_train_steps", None)
        if not changed:
            return name
        text = ", ".join(f"{k}={short(v)}" for k, v in sorted(changed.items()))
        return f"{name} + {text}"

    def finals(self) -> np.ndarray:
        return np.asarray([r.rows[-1][self.metric] for r in self.runs], np.float64)

    def ours(self) -> str:
        v = self.finals()
        num = "{:.4f}".format if self.metric != "test_loss" else "{:.2g}".format  # MSEs span decades
        prefix = "MSE " if self.metric == "test_loss" else ""
        diverged = f", {self.diverged()} diverged" if self.diverged() else ""
        if len(v) == 1:
            return f"{prefix}{num(v[0])} (1 seed{diverged})"
        return f"{prefix}{num(v.mean())} ± {num(v.std(ddof=1))} ({num(v.min())} to {num(v.max())}){diverged}"

    def steps(self) -> str:
        done = min(r.rows[-1]["step"] for r in self.runs)
        planned = planned_steps(self.first)
        return f"{done:,}" + ("" if done >= planned else f" of {planned:,}")

    def wall(self) -> str:
        seconds = [r.rows[-1].get("elapsed_seconds", math.nan) for r in self.runs]
        sizes = {r.sweep_size for r in self.runs}
        note = f" (a sweep: its {'/'.join(map(str, sorted(sizes)))} runs together)" if sizes != {1} else ""
        return fmt_time(float(np.nanmax(seconds))) + note

    def samples_per_second(self) -> str:
        """Training samples per second of wall time, over all sessions, evaluations included: steps
        times the batch over elapsed_seconds, for each workdir; a sweep's runs share one clock, so
        its figure counts all of them (sweep_size), those of other configurations too. The fastest
        workdir of the group."""
        by_clock: dict[str, list[Run]] = {}
        for run in self.runs:
            by_clock.setdefault(run.name.split("/")[0], []).append(run)  # a sweep's members: one clock
        rates = []
        for runs in by_clock.values():
            seconds = max(r.rows[-1].get("elapsed_seconds", math.nan) for r in runs)
            steps = max(r.rows[-1]["step"] for r in runs)
            samples = steps * runs[0].config["batch_size"] * runs[0].sweep_size
            rates.append(samples / seconds if seconds > 0 else math.nan)
        return "?" if all(math.isnan(x) for x in rates) else f"{np.nanmax(rates):,.0f}"

    def commits(self) -> str:
        shas = []
        for run in self.runs:
            for s in run.sessions:
                sha = s.get("git_commit")
                tag = (sha[:8] + ("+changes" if s.get("git_dirty") else "")) if sha else "not recorded"
                if tag not in shas:
                    shas.append(tag)
        return ", ".join(shas)

    def commands(self) -> list[str]:
        """The first session's command of each run, portable (see `portable_command`), with a
        `--config.FIELD=VALUE` added for each field where the run differs from today's preset and the
        command does not say so (a preset changed since the run), so that the command reproduces it."""
        out = []
        for run in self.runs:
            command = portable_command(run.sessions[0]["command"], run.config.get("dataset"))
            changed = overrides(run, with_recurrence=True)
            missing = [f"--config.{k}={v}" for k, v in changed.items() if f"--config.{k}=" not in command]
            command = " ".join([command, *missing])
            if command not in out:
                out.append(command)
        return out

    def data(self) -> str:
        """The data the runs read: the start of each distinct train/test SHA-256 (data.fingerprint)."""
        prints = []
        for run in self.runs:
            for s in run.sessions:
                d = s.get("data")
                tag = f"{d['train_sha256'][:8]}/{d['test_sha256'][:8]}" if d else "not recorded"
                if tag not in prints:
                    prints.append(tag)
        return ", ".join(prints)

    def sessions(self) -> str:
        """How many sessions and machines the runs took ("3 sessions, 2 machines"). Machines are counted
        from the sessions that recorded a machine id only; the others are said to be "not recorded"."""
        counts = {len(r.sessions) for r in self.runs}
        sessions = [s for r in self.runs for s in r.sessions]
        machines = {(s.get("hardware"), s["machine"]) for s in sessions if s.get("machine")}
        unknown = len({id(s) for s in sessions if not s.get("machine")})
        n = "/".join(str(c) for c in sorted(counts))
        text = f"{n} session{'s' if counts != {1} else ''}"
        if machines:
            text += f", {len(machines)} machine{'s' if len(machines) > 1 else ''}"
        if unknown:
            text += f" ({unknown} session{'s' if unknown > 1 else ''} with no machine recorded)"
        return text

    def diverged(self) -> int:
        return sum(r.diverged for r in self.runs)

    def curve(self):
        """Steps every run evaluated at, and the runs' values there: (steps, values (R, S))."""
        common = sorted(set.intersection(*(set(r["step"] for r in run.rows) for run in self.runs)))
        values = np.asarray([[{r["step"]: r[self.metric] for r in run.rows}[s] for s in common] for run in self.runs])
        return np.asarray(common), values


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs with the same config but for the seed, in order of first appearance."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = json.dumps(
            [
                run.experiment,
                run.preset,
                run.superseded,
                run.unfinished,
                {k: v for k, v in config_as_now(run).items() if k not in _BOOKKEEPING | {"seed"}},
            ],  # fmt: skip
            sort_keys=True,
            default=list,
        )
        groups.setdefault(key, Group([])).runs.append(run)
    return list(groups.values())


IRNN_FAST_PRESETS = tuple(p for p in pixel_mnist.PRESETS if p.startswith(("irnn_fast", "irnn_tuned")))


def section_of(group: Group) -> str:
    """The question a configuration's runs answer (the results page's sections, in SECTION_TITLES)."""
    first = group.first
    if first.superseded or "[run before" in group.label:
        return "record"  # kept for the record: code or presets that no longer stand
    recipe = first.experiment == "pixel_mnist" and first.preset in IRNN_FAST_PRESETS
    if recipe and not first.name.startswith("search_") and not overrides(first):
        return "irnn_fast"  # a preset as it stands, whatever its runs were named (a candidate it adopted)
    if first.name.startswith("search2_") or (recipe and first.preset.startswith("irnn_tuned")):
        return "search2"  # the second search (batch 128): screens, full-length candidates, irnn_tuned's past forms
    if first.name.startswith("search_") or recipe:  # (a recipe's preset as it stands returned above)
        return "search"  # every candidate of the irnn_fast recipe, beside the presets as they stand
    if first.experiment == "row_mnist" and first.preset == "tanh50_dense30_as_logged":
        return "s3replay"
    if group.first.name.startswith("lrsweep_"):
        return "lrsweep"
    if (
        group.first.experiment == "pixel_mnist"
        and group.first.config["dataset"] == "mnist"
        and pixel_mnist.cell_and_task(group.first.preset, "budget")
    ):
        return "budget"
    if group.first.experiment == "pixel_mnist" and pixel_mnist.cell_and_task(group.first.preset, "cells20"):
        return "cells20"
    if group.first.experiment == "pixel_mnist" and group.first.preset in IRNN_FAST_PRESETS:
        return "irnn_fast"
    if group.first.experiment == "adding":
        return "adding"
    dataset = group.first.config["dataset"]
    return f"{group.first.experiment}_{'mnist' if dataset == 'mnist' else dataset}"


def short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "(" + ",".join(short(x) for x in v) + ")"
    return str(v)


def fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def reported(group: Group) -> str:
    return group.module.REPORTED.get(group.first.preset, {}).get("text", "")


_PATH_FLAGS = {"--workdir", "--mirror"}


def portable_command(command: str, dataset: str | None = None) -> str:
    """A recorded command as a reader can paste it: `--workdir` relative (runs/NAME), no `--mirror`,
    and `--config.data_dir` dropped for MNIST (the package ships the same digits; the run's data
    fingerprint shows it) or written DIR for other datasets. run.json keeps the command as it ran."""
    out = []
    for arg in shlex.split(command):
        flag, eq, value = arg.partition("=")
        if eq and flag == "--mirror":
            continue  # where this project kept its copy (docs/results/runs/): not for a reader's run
        if eq and flag in _PATH_FLAGS and Path(value).is_absolute():
            name = Path(value).name
            arg = f"{flag}=docs/results/runs/{name}" if flag == "--mirror" else f"{flag}=runs/{name}"
        elif eq and flag == "--config.data_dir":
            if dataset == "mnist":
                continue
            arg = f"{flag}=DIR"
        out.append(arg)
    return shlex.join(out)
