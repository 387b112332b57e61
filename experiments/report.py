"""Results page: tables over seeds and learning curves with bands, from the runs in the repository.

    python -m experiments.report [RUN_DIR ...] [--out=docs/results]

With no RUN_DIR it reads every run under docs/results/runs/, so the page regenerates from the
repository alone. A RUN_DIR is a workdir of one of the experiments: run.json and metrics.jsonl, or
a sweep's run.json and runs/NNN_*/metrics.jsonl (each sweep member counts as a run of its own).
Runs that differ only in their seed form one configuration: the page gives the final metric's
mean +- std and min to max over them, and plots the mean curve with a band from min to max.
Writes OUT/results.md (the whole page), OUT/summary.md (the README's short table) and
OUT/<section>.png.
"""

import dataclasses
import json
import math
import sys
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags

from experiments.configs import adding, pixel_mnist, row_mnist
from irnn_jax import adding as adding_task
from irnn_jax import checkpoint, metrics, sweep, train
from irnn_jax import workdir as workdir_lib

EXPERIMENTS = {"pixel_mnist": pixel_mnist, "row_mnist": row_mnist, "adding": adding}
SOURCE_IDS = {"keras": "S0", "keras_900": "S0", "keras_default_init": "S1", "keras_relu16": "S2"}
SOURCE_IDS.update({"tanh50_dense30": "S3", "tanh50": "S4", "tanh50_dense30_as_logged": "S3"})
RUNS_DIR = Path(__file__).resolve().parent.parent / "docs" / "results" / "runs"
# Config fields that say nothing about what was trained: left out of a configuration's identity.
_BOOKKEEPING = checkpoint.RESUMABLE_FIELDS - {"num_epochs", "num_train_steps", "recurrence"} | {"name", "sweep"}

_OUT = flags.DEFINE_string("out", "docs/results", "folder for results.md, summary.md and the plots")


@dataclasses.dataclass
class Run:
    """One trained model: its config, metric rows and the run record of the workdir it lives in."""

    name: str  # the folder under runs/ (and the sweep member, if one)
    experiment: str
    preset: str
    config: dict
    rows: list[dict]
    sessions: list[dict]


def load_runs(workdir: Path) -> list[Run]:
    """The runs of one workdir (one, or a sweep's members); ValueError naming what is missing."""
    info_path = workdir / workdir_lib.RUN_JSON
    if not info_path.exists():
        raise ValueError(f"{workdir} has no run.json: not a workdir of experiments.* (or written before it)")
    info = json.loads(info_path.read_text())
    config = ml_collections.ConfigDict(info["config"])
    members = sweep.expand(config) if config.sweep else [("", config)]
    runs = []
    for member, member_config in members:
        rows = metrics.read_rows((workdir / "runs" / member if member else workdir) / "metrics.jsonl")
        if rows:
            name = f"{workdir.name}/{member}" if member else workdir.name
            runs.append(Run(name, info["experiment"], info["preset"], member_config.to_dict(), rows, info["sessions"]))
    if not runs:
        raise ValueError(f"{workdir} has no evaluations in metrics.jsonl yet")
    return runs


def overrides(run: Run) -> dict:
    """What the run changed from its preset, bookkeeping and the seed aside."""
    preset = EXPERIMENTS[run.experiment].get_config(run.preset).to_dict()
    skip = _BOOKKEEPING | {"seed"}
    return {k: v for k, v in run.config.items() if k not in skip and checkpoint.as_json(preset.get(k)) != v}


def planned_steps(run: Run) -> int:
    """The length the run asked for: its own num_epochs and batch size, with the preset's step cap
    (a run cut short by --config.num_train_steps is set against the preset's length), on the
    preset's data (MNIST: 60,000 images)."""
    preset = EXPERIMENTS[run.experiment].get_config(run.preset)
    asked = ml_collections.ConfigDict(run.config)
    asked.num_train_steps = preset.num_train_steps
    return train.total_steps(asked, preset.get("num_train_examples", 60_000))


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
        changed = overrides(self.first)
        changed.pop("dataset", None)
        changed.pop("num_train_steps", None)
        if not changed:
            return name
        text = ", ".join(f"{k}={_short(v)}" for k, v in sorted(changed.items()))
        return f"{name} + {text}"

    def finals(self) -> np.ndarray:
        return np.asarray([r.rows[-1][self.metric] for r in self.runs], np.float64)

    def ours(self) -> str:
        v = self.finals()
        fmt = "{:.4f}"
        if self.metric == "test_loss":
            fmt = "MSE {:.4f}"
        if len(v) == 1:
            return fmt.format(v[0]) + " (1 seed)"
        return f"{fmt.format(v.mean())} ± {v.std(ddof=1):.4f} ({v.min():.4f} to {v.max():.4f})"

    def steps(self) -> str:
        done = min(r.rows[-1]["step"] for r in self.runs)
        planned = planned_steps(self.first)
        return f"{done:,}" + ("" if done >= planned else f" of {planned:,}")

    def wall(self) -> str:
        seconds = [r.rows[-1].get("elapsed_seconds", math.nan) for r in self.runs]
        note = " (sweep: all seeds together)" if "/" in self.first.name else ""
        return _fmt_time(float(np.nanmax(seconds))) + note

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
        out = []
        for run in self.runs:
            command = run.sessions[0]["command"]
            if command not in out:
                out.append(command)
        return out

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
            [run.experiment, run.preset, {k: v for k, v in run.config.items() if k not in _BOOKKEEPING | {"seed"}}],
            sort_keys=True,
            default=list,
        )
        groups.setdefault(key, Group([])).runs.append(run)
    return list(groups.values())


def section_of(group: Group) -> str:
    if group.first.name.startswith("search_"):
        return "search"
    if (
        group.first.experiment == "pixel_mnist"
        and group.first.config["dataset"] == "mnist"
        and pixel_mnist.cell_and_task(group.first.preset, "budget")
    ):
        return "budget"
    if group.first.experiment == "adding":
        return "adding"
    dataset = group.first.config["dataset"]
    return f"{group.first.experiment}_{'mnist' if dataset == 'mnist' else dataset}"


SECTION_TITLES = {
    "pixel_mnist_mnist": "Pixel-by-pixel MNIST (real digits)",
    "budget": "The paper's comparison of cells at one budget (budget_* presets, real MNIST)",
    "search": "irnn_fast search: short runs of the paper's IRNN with other training recipes (real pixel MNIST)",
    "row_mnist_mnist": "Row-by-row MNIST (real digits)",
    "pixel_mnist_fashion_mnist": "Pixel-by-pixel Fashion-MNIST (a harder stand-in, kept for comparison)",
    "row_mnist_fashion_mnist": "Row-by-row Fashion-MNIST (a harder stand-in, kept for comparison)",
    "adding": "The adding problem",
}


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "(" + ",".join(_short(x) for x in v) + ")"
    return str(v)


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _reported(group: Group) -> str:
    return group.module.REPORTED.get(group.first.preset, {}).get("text", "")


def section_table(groups: list[Group]) -> str:
    lines = [
        "| configuration | reported (source, at its own length) | ours: final test metric, mean ± std (min to max) "
        "| seeds | steps | wall time | code (git commit) |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        lines.append(
            f"| {g.label} | {_reported(g)} | {g.ours()} | {len(g.runs)} | {g.steps()} | {g.wall()} | {g.commits()} |"
        )
    return "\n".join(lines) + "\n\nCommands (each run's first session):\n\n" + command_list(groups)


def command_list(groups: list[Group]) -> str:
    """One line per distinct command (a sweep's command serves all its configurations)."""
    by_command: dict[str, list[str]] = {}
    for g in groups:
        for command in g.commands():
            by_command.setdefault(command, []).append(g.label)
    return "".join(f"- {'; '.join(labels)}: `{command}`\n" for command, labels in by_command.items())


def plot(groups: list[Group], title: str, path: Path) -> None:
    """Mean curve of each configuration over its seeds, with a min-to-max band; the reported figure as a star."""
    import matplotlib  # optional heavy dependency, only for the plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = groups[0].metric
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colours: dict[str, str] = {}
    for g in groups:
        steps, values = g.curve()
        label = f"{g.label} ({len(g.runs)} seed{'s' if len(g.runs) > 1 else ''})"
        style = "--" if g.first.config.get("task") == "permuted" else "-"
        # A preset and its _permuted twin share a colour.
        colour = colours.setdefault(g.label.replace("_permuted", ""), f"C{len(colours) % 10}")
        marker = "." if len(steps) < 40 else None
        ax.plot(steps, values.mean(0), style, color=colour, marker=marker, label=label)
        if len(g.runs) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=colour, alpha=0.2)
        rep = g.module.REPORTED.get(g.first.preset, {})
        points = rep.get("curve") or ([(rep["step"], rep["value"])] if rep.get("value") and rep.get("step") else [])
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="*", markersize=10, color=colour, linestyle="")
    if metric == "test_loss":
        ax.axhline(adding_task.BASELINE_MSE, color="grey", linestyle="--", label="always predict 1 (0.167)")
        ax.set_ylabel("test MSE")
        ax.set_yscale("log")
    else:
        ax.set_ylabel("test accuracy")
    ax.set_xlabel("optimiser steps")
    ax.set_xscale("log")
    ax.set_title(
        f"{title}\nmean over seeds, band: min to max; dashed: permuted order; stars: the source's figure", fontsize=9
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_comparisons(groups: list[Group]) -> str:
    """Evaluation by evaluation, where the source logged a whole curve (S3 as logged)."""
    md = ""
    for g in groups:
        logged = dict(g.module.REPORTED.get(g.first.preset, {}).get("curve", []))
        if not logged:
            continue
        steps, values = g.curve()
        md += f"\n{g.label}, evaluation by evaluation ({len(g.runs)} seeds):\n\n"
        md += "| after step | logged by the source | ours, mean ± std (min to max) |\n|---|---|---|\n"
        for i, step in enumerate(steps):
            v = values[:, i]
            spread = f" ± {v.std(ddof=1):.4f} ({v.min():.4f} to {v.max():.4f})" if len(v) > 1 else ""
            source = f"{logged[step]:.4f}" if step in logged else ""
            md += f"| {step:,} | {source} | {v.mean():.4f}{spread} |\n"
    return md


def budget_table(groups: list[Group]) -> str:
    """The budget runs as the paper lays out its comparison: a row per cell, pixel and permuted side by side."""
    cells = {pixel_mnist.cell_and_task(g.first.preset, "budget"): g for g in groups if not overrides(g.first)}
    cells.pop(None, None)
    if not cells:
        return ""
    any_group = next(iter(cells.values()))
    lines = [
        f"Each cell trained for the same {any_group.steps()} steps, final test accuracy over seeds, beside the "
        "paper's figure at its own full length:\n",
        "| cell | pixel: ours | pixel: paper | permuted: ours | permuted: paper |",
        "|---|---|---|---|---|",
    ]
    for cell in pixel_mnist.PAPER_CELLS:
        row = [cell]
        for order in ("pixel", "permuted"):
            g = cells.get((cell, order))
            preset = f"budget_{cell}{'_permuted' if order == 'permuted' else ''}"
            row += [g.ours() if g else "not yet run", pixel_mnist.REPORTED[preset]["text"]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def not_yet_run(groups: list[Group]) -> str:
    done = {(g.first.experiment, g.first.preset) for g in groups}
    lines = []
    for experiment, module in EXPERIMENTS.items():
        for preset in module.PRESETS:
            if (experiment, preset) not in done:
                reported = module.REPORTED.get(preset, {}).get("text", "")
                cmd = f"python -m experiments.{experiment} --config=experiments/configs/{experiment}.py:{preset}"
                lines.append(f"- {preset} ({reported}): `{cmd}`")
    return "\n".join(lines) + "\n"


PAGE_HEAD = """# Results

Generated by `python -m experiments.report` from the runs under `docs/results/runs/` (each run's
`run.json` and `metrics.jsonl`). Each configuration's seeds are grouped; "ours" is the final test
metric over them. Wall times are those of the runs as they ran, on the machine in their `run.json`,
often while other work shared its 2 cores.

**Checking a result.** Training is deterministic on one machine with one device count: the same
command there gives the same metric rows, bit for bit. Re-run a recorded command into a new
`--workdir` with `--config.num_train_steps=` set to its first evaluation or two and compare the rows.
Another CPU model can differ in the last bits of float32 arithmetic, which the long ReLU recurrences
amplify over many steps; another device count (`--cpu_devices`) sums the batch in another order.
"""


def write_report(workdirs: list[Path], out: Path) -> str:
    """Writes results.md, summary.md and one PNG per section; returns the page's Markdown."""
    runs = [run for w in workdirs for run in load_runs(Path(w))]
    groups = group_runs(runs)
    out.mkdir(parents=True, exist_ok=True)
    sections: dict[str, list[Group]] = {}
    for g in groups:
        sections.setdefault(section_of(g), []).append(g)
    md = PAGE_HEAD
    for key in sorted(sections, key=lambda k: list(SECTION_TITLES).index(k) if k in SECTION_TITLES else 99):
        title = SECTION_TITLES.get(key, key)
        md += f"\n## {title}\n\n"
        if key == "budget":
            md += budget_table(sections[key]) + "\n"
        md += section_table(sections[key]) + curve_comparisons(sections[key])
        plot(sections[key], title, out / f"{key}.png")
        md += f"\n![{title}]({key}.png)\n"
    md += "\n## Presets not yet run\n\n" + not_yet_run(groups)
    (out / "results.md").write_text(md)
    (out / "summary.md").write_text(summary(groups))
    return md


def summary(groups: list[Group]) -> str:
    """The README's short table: one row per configuration (the search aside; the budget comparison as a
    table of its own), commands in a list below."""
    budget = [g for g in groups if section_of(g) == "budget"]
    groups = [g for g in groups if section_of(g) not in ("search", "budget")]
    lines = [
        "| experiment | reported | ours (mean ± std over seeds) | seeds | steps | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for g in groups:
        name = f"{g.first.experiment}: {g.label}" + ("" if g.first.config["dataset"] in ("mnist", "adding") else
                                                      f" [{g.first.config['dataset']}]")  # fmt: skip
        lines.append(f"| {name} | {_reported(g)} | {g.ours()} | {len(g.runs)} | {g.steps()} | {g.wall()} |")
    md = "\n".join(lines) + "\n"
    if budget:
        md += "\nThe paper's comparison of cells at one budget (`budget_*` presets). " + budget_table(budget)
    return md + "\nCommands:\n\n" + command_list(groups + budget)


def main(argv):
    workdirs = [Path(a) for a in argv[1:]] or sorted(p for p in RUNS_DIR.iterdir() if p.is_dir())
    try:
        md = write_report(workdirs, Path(_OUT.value))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(md)


if __name__ == "__main__":
    app.run(main)
