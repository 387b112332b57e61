"""Results page and the README's generated parts, from the runs in the repository and the presets.

    python -m experiments.report [RUN_DIR ...] [--out=docs/results] [--readme=README.md]

With no RUN_DIR it reads every run under docs/results/runs/, so the page regenerates from the
repository alone (`experiments.report_runs` reads and groups them). Runs that differ only in their
seed form one configuration: the page gives the final metric's mean +- std and min to max over
them, and plots the mean curve with a band from min to max (`experiments.report_plots`). Writes
OUT/results.md (the whole page), OUT/summary.md (the README's short table), OUT/<section>.png, and
rewrites the README's generated blocks (the preset table, the config fields, the results table)
between their `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` markers.
"""

import ast
import re
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

from experiments import ink, report_headline, report_plots
from experiments.configs import base, pixel_mnist, row_mnist
from experiments.report_runs import (
    EXPERIMENTS,
    SOURCE_IDS,
    Group,
    Run,
    group_runs,
    load_runs,
    overrides,
    planned_steps,
    reported,
    section_of,
    short,
)
from irnn_jax import data, train

__all__ = ["Run", "group_runs", "load_all", "load_runs", "section_of", "write_report"]

ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = ROOT / "docs" / "results" / "runs"

_OUT = flags.DEFINE_string("out", "docs/results", "folder for results.md, summary.md and the plots")
_README = flags.DEFINE_string("readme", "README.md", "README whose generated blocks to rewrite; empty: none")

# The page's sections, by the question their runs answer, in the page's order (report_runs.section_of).
SECTION_TITLES = {
    "pixel_mnist_mnist": "S0 and S1: the Keras IRNN and its control (pixel MNIST)",
    "row_mnist_mnist": "S2, S3 and S4: row-by-row MNIST",
    "s3replay": "S3 as its notebook logged it: which replay fits the log",
    "irnn_fast": "irnn_fast and irnn_tuned: the paper's IRNN with faster recipes, the presets over their seeds",
    "search": "The irnn_fast search: every candidate recipe, with validation and test",
    "search2": "The second recipe search: batch 128, Adam or RMSprop, the input kernel's scale, clipping, schedule",
    "budget": "The cell comparison, 1 of 3: early learning speed at one budget (budget_* presets)",
    "lrsweep": "The cell comparison, 2 of 3: a learning rate for each cell, chosen on validation (lrsweep_* sweeps)",
    "cells20": "The cell comparison, 3 of 3: 20 epochs, each cell at its rate (cells20_* presets)",
    "adding": "The adding problem",
    "pixel_mnist_fashion_mnist": "Pixel-by-pixel Fashion-MNIST (a harder stand-in, kept for comparison)",
    "row_mnist_fashion_mnist": "Row-by-row Fashion-MNIST (a harder stand-in, kept for comparison)",
    "record": "Kept for the record: superseded code and runs of older presets",
}


# ------------------------------------------------------------------------------------ tables


def section_table(groups: list[Group]) -> str:
    """One row per configuration; a validation column when a run of the section held a split out."""
    with_validation = any("validation_accuracy" in run.rows[-1] for g in groups for run in g.runs)
    lines = [
        "| configuration | reported (source, at its own length) | ours: final test metric, mean ± std (min to max) "
        + ("| final validation accuracy, each seed " if with_validation else "")
        + "| seeds | steps | wall time | samples/s | sessions | data (train/test SHA-256) | code (git commit) |",
        "|---" * (11 if with_validation else 10) + "|",
    ]
    for g in groups:
        validation = ""
        if with_validation:
            values = [run.rows[-1].get("validation_accuracy") for run in g.runs]
            validation = "| " + (", ".join(f"{v:.4f}" for v in values if v is not None) or "none") + " "
        lines.append(
            f"| {g.label} | {reported(g)} | {g.ours()} {validation}| {len(g.runs)} | {g.steps()} | {g.wall()} "
            f"| {g.samples_per_second()} "
            f"| {g.sessions()} | {g.data()} | {g.commits()} |"
        )
    return "\n".join(lines) + "\n\nCommands (each run's first session):\n\n" + command_list(groups)


def command_list(groups: list[Group]) -> str:
    """One line per distinct command (a sweep's command serves all its configurations)."""
    by_command: dict[str, list[str]] = {}
    for g in groups:
        for command in g.commands():
            by_command.setdefault(command, []).append(g.label)
    return "".join(f"- {'; '.join(labels)}: `{command}`\n" for command, labels in by_command.items())


def logged_curve_table(groups: list[Group]) -> str:
    """S3 as logged: each replay's nine evaluations beside the nine logged values, with the mean
    absolute difference, and which replay the log fits best."""
    logged = np.asarray(row_mnist.REPORTED["tanh50_dense30_as_logged"]["curve"])
    replays = sorted(
        (g for g in groups if g.first.preset == "tanh50_dense30_as_logged"),
        key=lambda g: g.first.config.get("earlier_passes", 1),
    )
    if not replays:
        return ""
    columns = []  # (header, values (seeds, 9), mean absolute difference from the log)
    for g in replays:
        _, values = g.curve()
        if values.shape[1] != len(logged):
            continue
        passes = g.first.config.get("earlier_passes", 1)
        older = " [older replay]" if "earlier_passes" not in g.first.config else ""
        header = f"{passes} earlier pass{'es' if passes > 1 else ''}{older} ({len(g.runs)} seeds)"
        columns.append((header, values, float(np.abs(values - logged).mean())))  # over seeds and evaluations
    if not columns:
        return ""
    md = "\nS3 as logged: which replay the log fits. Mean over seeds (min to max).\n\n"
    md += "| evaluation | logged | " + " | ".join(h for h, _, _ in columns) + " |\n"
    md += "|---" * (2 + len(columns)) + "|\n"
    for k, value in enumerate(logged):
        cells = [f"{v[:, k].mean():.4f} ({v[:, k].min():.4f} to {v[:, k].max():.4f})" for _, v, _ in columns]
        md += f"| {k + 1} | {value:.4f} | " + " | ".join(cells) + " |\n"
    md += "| mean absolute difference from the log | | " + " | ".join(f"{m:.4f}" for _, _, m in columns) + " |\n"
    md += "| mean of the nine | " + f"{logged.mean():.4f} | " + " | ".join(f"{v.mean():.4f}" for _, v, _ in columns)
    md += " |\n"
    return md + _replay_fit(columns, logged)


def _replay_fit(columns: list, logged: np.ndarray) -> str:
    """Which replay the log fits, seed by seed: each seed's mean absolute difference from the log for
    each number of earlier passes, their mean ± std over seeds, and how many seeds each fits best."""
    if len(columns) < 2:
        return ""
    seeds = min(len(v) for _, v, _ in columns)
    per_seed = np.asarray([np.abs(v[:seeds] - logged).mean(axis=1) for _, v, _ in columns])  # (replays, seeds)
    names = [h.rsplit(" (", 1)[0] for h, _, _ in columns]
    wins = np.bincount(per_seed.argmin(axis=0), minlength=len(columns))
    md = (
        f"\nThe fit seed by seed ({seeds} seeds of each replay, seed k of one against seed k of the others): the "
        "mean absolute difference of a seed's nine evaluations from the logged nine, mean ± std over seeds, and "
        "the number of seeds for which each replay fits the log best.\n\n"
        "| replay | difference from the log, mean ± std over seeds (min to max) | seeds it fits best |\n|---|---|---|\n"
    )
    for name, diffs, won in zip(names, per_seed, wins, strict=True):
        md += (
            f"| {name} | {diffs.mean():.4f} ± {diffs.std(ddof=1):.4f} ({diffs.min():.4f} to {diffs.max():.4f}) "
            f"| {won} of {seeds} |\n"
        )
    best = int(np.argmin(per_seed.mean(axis=1)))
    others = ", ".join(f"{per_seed[k].mean():.4f} with {names[k]}" for k in range(len(names)) if k != best)
    md += (
        f"\nOn average over seeds the log is closest to the replay with {names[best]} "
        f"({per_seed[best].mean():.4f}, against {others}); it fits best for {wins[best]} of {seeds} seeds.\n"
    )
    return md


def budget_table(groups: list[Group], family: str = "budget") -> str:
    """The runs of a comparison of cells (`budget_*` or `cells20_*` presets) as the paper lays out its
    comparison: a row per cell, pixel and permuted side by side."""
    cells = {pixel_mnist.cell_and_task(g.first.preset, family): g for g in groups if not overrides(g.first)}
    cells.pop(None, None)
    if not cells:
        return ""
    any_group = next(iter(cells.values()))
    if family == "budget":
        head = f"Early learning speed, not where each cell ends: each cell trained for the same {any_group.steps()} "
        head += (
            "steps with one recipe, final test accuracy over seeds, beside the paper's figure at its own full length:"
        )
    else:
        head = f"Each cell trained for {planned_steps(any_group.first):,} steps with the budget recipe at its own "
        head += "learning rate (in brackets, chosen on validation), or until every run of it diverged (then the "
        head += "step it stopped at is given); final test accuracy over seeds, beside the paper's figure at its own "
        head += "full length:"
    lines = [
        head + "\n",
        "| cell | pixel: ours | pixel: paper | permuted: ours | permuted: paper |",
        "|---|---|---|---|---|",
    ]
    for cell in pixel_mnist.PAPER_CELLS:
        row = [cell]
        for order in ("pixel", "permuted"):
            g = cells.get((cell, order))
            preset = f"{family}_{cell}{'_permuted' if order == 'permuted' else ''}"
            ours = g.ours() if g else "not yet run"
            if g and g.diverged() and " of " in g.steps():
                ours += f", stopped at step {g.steps().split(' of ')[0]}"
            if g and family != "budget":
                ours += f" [lr {g.first.config['learning_rate']:g}]"
            row += [ours, pixel_mnist.REPORTED[preset]["text"]]
        lines.append("| " + " | ".join(row) + " |")
    others = [g for g in groups if overrides(g.first) and pixel_mnist.cell_and_task(g.first.preset, family)]
    if others and family != "budget":  # the budget family's other recipes are the sweeps' own tables
        lines += ["", "Also run, with a change to the preset (not in the table above):", ""]
        lines += [f"- {g.label}: {g.ours()}, {g.steps()} steps" for g in others]
    return "\n".join(lines) + "\n"


def chosen_learning_rates(groups: list[Group]) -> dict[tuple[str, str], float]:
    """(cell, order) -> the learning rate of the sweep's configuration with the highest final validation
    accuracy (mean over its seeds), among those of the budget family that ran to their end and where no
    run diverged. The test set plays no part."""
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for g in groups:
        key = pixel_mnist.cell_and_task(g.first.preset, "budget")
        values = [run.rows[-1].get("validation_accuracy") for run in g.runs]
        if key is None or g.diverged() or None in values or " of " in g.steps():
            continue
        score = float(np.mean(values))
        if key not in best or score > best[key][0]:
            best[key] = (score, g.first.config["learning_rate"])
    return {key: lr for key, (_, lr) in best.items()}


def lrsweep_table(groups: list[Group]) -> str:
    """The learning-rate sweeps: a row per cell and order, final validation accuracy per learning rate,
    and the one chosen."""
    by_key: dict[tuple[str, str], dict[float, Group]] = {}
    for g in groups:
        key = pixel_mnist.cell_and_task(g.first.preset, "budget")
        if key is not None:
            by_key.setdefault(key, {})[g.first.config["learning_rate"]] = g
    if not by_key:
        return ""
    rates = sorted({lr for sweep in by_key.values() for lr in sweep})
    chosen = chosen_learning_rates(groups)
    steps = next(iter(next(iter(by_key.values())).values())).steps()
    lines = [
        f"Each cell and pixel order trained at each learning rate for {steps} steps on the training set less "
        "a held-out validation split; the figure is the final validation accuracy (mean over seeds), and the "
        "rate chosen is the one with the highest (bold). The test set plays no part in the choice.\n",
        "| cell | order | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | chosen |",
        "|---" * (3 + len(rates)) + "|",
    ]
    for cell in pixel_mnist.PAPER_CELLS:
        for order in ("pixel", "permuted"):
            sweep = by_key.get((cell, order))
            if sweep is None:
                continue
            row = [cell, order]
            for lr in rates:
                g = sweep.get(lr)
                if g is None:
                    row.append("not run")
                    continue
                value = float(np.mean([run.rows[-1].get("validation_accuracy", np.nan) for run in g.runs]))
                text = "diverged" if g.diverged() else f"{value:.4f}"
                row.append(f"**{text}**" if chosen.get((cell, order)) == lr else text)
            lr = chosen.get((cell, order))
            edge = lr is not None and len(sweep) > 1 and lr in (min(sweep), max(sweep))
            unfinished = [g.steps() for g in sweep.values() if " of " in g.steps()]
            if unfinished:
                row.append(f"none yet: under way, step {unfinished[0]}")
            else:
                row.append("none (all diverged)" if lr is None else f"{lr:g}" + (" (the grid's edge)" if edge else ""))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n\n"


def ink_note() -> str:
    """Where the ink lies along the sequence, from the shipped MNIST (`python -m experiments.ink`)."""
    lines = ink.summary(data.load_embedded("mnist").train.inputs)
    return (
        "\nWhere the ink lies along the 784 steps of MNIST's 60,000 training images (`python -m experiments.ink`):\n\n"
        + "".join(f"    {line.strip()}\n" for line in lines)
    )


def not_yet_run(groups: list[Group]) -> str:
    done = {(g.first.experiment, g.first.preset) for g in groups}
    lines = []
    for experiment, module in EXPERIMENTS.items():
        for preset in module.PRESETS:
            if (experiment, preset) not in done:
                text = module.REPORTED.get(preset, {}).get("text", "")
                cmd = f"python -m experiments.{experiment} --config=experiments/configs/{experiment}.py:{preset}"
                lines.append(f"- {preset} ({text}): `{cmd}`")
    return "\n".join(lines) + "\n"


PAGE_HEAD = """# Results

Generated by `python -m experiments.report` from the runs under `docs/results/runs/` (each run's
`run.json` and `metrics.jsonl`). Each configuration's seeds are grouped; "ours" is the final test
metric over them. Wall times are those of the runs as they ran, on the machine in their `run.json`,
often while other work shared its 2 cores. "sessions" counts the processes that trained a run (it
is stopped and resumed across them) and the machines they ran on; "data" is the start of the
SHA-256 of the training and test arrays each session read (`irnn_jax.data.fingerprint`): equal
prints, the same digits. Commands are written to paste: a workdir under `runs/`, and no
`--config.data_dir` for MNIST, which the package ships (run.json keeps each command as it ran).

**Checking a result.** Training is deterministic on one machine with one device count: the same
command there gives the same metric rows, bit for bit. Re-run a recorded command into a new
`--workdir` with `--config.num_train_steps=` set to its first evaluation or two and compare the rows.
Another CPU model can differ in the last bits of float32 arithmetic, which the long ReLU recurrences
amplify over many steps; another device count (`--cpu_devices`) sums the batch in another order.
"""


def write_report(runs: list[Run], out: Path) -> str:
    """Writes results.md (the headline, then a section per question) and its figures (headline.png, one
    PNG per section) of `runs` (`load_all`); returns the page's Markdown."""
    groups = group_runs(runs)
    out.mkdir(parents=True, exist_ok=True)
    sections: dict[str, list[Group]] = {}
    for g in groups:
        sections.setdefault(section_of(g), []).append(g)
    order = sorted(sections, key=lambda k: list(SECTION_TITLES).index(k) if k in SECTION_TITLES else 99)
    report_headline.plot_headline(groups, out / "headline.png")
    md = PAGE_HEAD + "\n## Headline\n\n" + headline(groups, image_dir="") + "\n## Contents\n\n"
    md += "".join(f"- [{SECTION_TITLES.get(k, k)}](#{_anchor(SECTION_TITLES.get(k, k))})\n" for k in order)
    md += "- [Presets not yet run](#presets-not-yet-run)\n"
    for key in order:
        title = SECTION_TITLES.get(key, key)
        md += f"\n## {title}\n\n"
        if key == "record":
            md += RECORD_NOTE
        if key == "budget":
            md += budget_table(sections[key]) + ink_note() + "\n"
        if key == "cells20":
            md += budget_table(sections[key], "cells20") + "\n"
        if key == "lrsweep":
            md += lrsweep_table(sections[key])
        md += section_table(sections[key]) + logged_curve_table(sections[key])
        if key == "lrsweep":
            report_plots.plot_lrsweep(sections[key], title, out / f"{key}.png", chosen_learning_rates(sections[key]))
        else:
            report_plots.plot(sections[key], title, out / f"{key}.png")
        md += f"\n![{title}]({key}.png)\n"
        if key == "irnn_fast" and (presets := [g for g in sections[key] if not overrides(g.first)]):
            # the presets as they stand over their seeds: a panel each
            report_plots.plot_seeds(
                presets, "irnn_fast's presets as they stand, over their seeds", out / "irnn_fast_seeds.png"
            )
            md += "\n![irnn_fast's presets over their seeds](irnn_fast_seeds.png)\n"
    md += "\n## Presets not yet run\n\n" + not_yet_run(groups)
    (out / "results.md").write_text(md)
    return md


RECORD_NOTE = (
    "Runs kept only for the record: their code or their preset has changed since (the label says how), so "
    "they do not stand for any preset today. Each stays on the page with its log, as it ran.\n\n"
)


def _anchor(title: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def headline(groups: list[Group], image_dir: str) -> str:
    """The headline: the table of claims (`report_headline`) and its plot (`write_report` draws it to
    headline.png), linked as IMAGE_DIR/headline.png where its runs exist."""
    md = (
        "Each claim of the sources beside this project's figure: the final test accuracy (the adding problem: "
        "test MSE) of the preset named, mean ± std over seeds (min to max); a figure from fewer than 3 seeds "
        f"says so. The verdict follows one rule: within {100 * report_headline.TOLERANCE:.1f} points of the "
        "source's figure is reproduced, beyond it beaten or short by the difference. Generated by "
        "`python -m experiments.report` from the run logs under `docs/results/runs/`.\n\n"
    )
    md += report_headline.headline_table(groups)
    if recipe := report_headline.plot_recipe(groups):
        md += (
            f"\nTest accuracy over training: S0's 900 epochs (one seed) and {recipe}'s seeds in each pixel "
            "order (mean, band from min to max), with the sources' figures.\n\n"
            f"![Test accuracy over training against the sources' figures]({image_dir}headline.png)\n"
        )
    return md


# ------------------------------------------------------------------------ the README's blocks


def preset_entries(module) -> list[tuple[str, str]]:
    """(preset names, first sentence of the description) of each entry of a config module's docstring:
    a line at the left margin followed by an indented description."""
    lines = (ast.get_docstring(ast.parse(Path(module.__file__).read_text())) or "").splitlines()
    entries = []
    for k, line in enumerate(lines[:-1]):
        if line and not line.startswith(" ") and lines[k + 1].startswith("    ") and lines[k + 1].strip():
            text = []
            for follow in lines[k + 1 :]:
                if not follow.startswith("    ") or follow.startswith("        "):
                    break
                text.append(follow.strip())
            description = " ".join(text)
            first = re.split(r"(?<=\.)\s", description, maxsplit=1)[0]
            entries.append((line.strip(), first))
    return entries


def preset_length(c) -> str:
    """A preset's length as the preset table gives it: its steps, epochs where it counts them, and
    the images it holds out."""
    trained_on = c.get("num_train_examples", 60_000) - c.get("validation_size", 0)
    length = f"{train.total_steps(c, trained_on):,} steps" + (
        f" ({c.num_epochs} epochs)" if not c.num_train_steps else ""
    )
    if c.get("validation_size", 0):
        length += f", {c.validation_size:,} images held out"
    return length


def preset_table() -> str:
    """One row per preset entry of every experiment: what it is, its batch and length, what the
    source reports. Lengths come from the configs themselves."""
    lines = ["| experiment | preset | what it is | batch | length | reported |", "|---|---|---|---|---|---|"]
    for experiment, module in EXPERIMENTS.items():
        for names, description in preset_entries(module):
            named = [n for n in re.findall(r"[a-z0-9_]+", names) if n in module.PRESETS]
            if not named:  # an entry whose presets do not exist yet (cells20_*: before their sweeps)
                continue
            first = named[0]
            configs = {n: module.get_config(n) for n in named}
            lengths = {n: preset_length(c) for n, c in configs.items()}
            if len(set(lengths.values())) == 1:
                length = lengths[first]
            else:  # the entry's presets differ in length: each named with its own
                length = "; ".join(f"{n}: {value}" for n, value in lengths.items())
            c = configs[first]
            text = module.REPORTED.get(first, {}).get("text", "")
            sid = SOURCE_IDS.get(first)
            preset = f"`{names}`" + (f" ({sid})" if sid else "")
            lines.append(f"| {experiment} | {preset} | {description} | {c.batch_size} | {length} | {text} |")
    return "\n".join(lines) + "\n"


def fields_table() -> str:
    """Every config field of base.py with its default and its comment."""
    lines = ["| field | default (`keras` preset where it sets one) | meaning |", "|---|---|---|"]
    keras = pixel_mnist.get_config("keras")
    for line in Path(base.__file__).read_text().splitlines():
        m = re.match(r"\s*c\.(\w+) = (.*?)(?:\s+#\s*(.*))?$", line)
        if m and m.group(1) != "name":
            name, _, comment = m.groups()
            default = f"`{short(keras[name])}`" if keras[name] != "" else '`""`'
            lines.append(f"| `{name}` | {default} | {(comment or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def readme_blocks(runs: list[Run] | None = None) -> dict[str, str]:
    """The README's generated blocks: the preset table and the headline of `runs` (default: every
    committed run; its plot is docs/results/headline.png, drawn by `write_report`)."""
    runs = load_all() if runs is None else runs
    return {"presets": preset_table(), "headline": headline(group_runs(runs), image_dir="docs/results/")}


def docs_blocks() -> dict[str, str]:
    """docs/running.md's generated block: every config field."""
    return {"fields": fields_table()}


RUNNING_MD = ROOT / "docs" / "running.md"


def rewrite_blocks(text: str, blocks: dict[str, str]) -> str:
    """`text` with each `<!-- generated:NAME -->...<!-- /generated:NAME -->` block replaced."""
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"the README has no generated block {name!r}")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    return text


def load_all(workdirs: list[Path] | None = None) -> list[Run]:
    """The runs of `workdirs` (ValueError for one that is not a run with evaluations); None: every run
    committed under docs/results/runs/, leaving out with a note one with no evaluation yet (a run just
    started)."""
    if workdirs is not None:
        return [run for w in workdirs for run in load_runs(Path(w))]
    runs = []
    for p in sorted(p for p in RUNS_DIR.iterdir() if p.is_dir()):
        try:
            runs += load_runs(p)
        except ValueError as e:
            print(f"note: left out {p.name}: {e}", file=sys.stderr)
    return runs


def main(argv):
    try:
        runs = load_all([Path(a) for a in argv[1:]] or None)
        md = write_report(runs, Path(_OUT.value))
        if _README.value:
            readme = Path(_README.value)
            readme.write_text(rewrite_blocks(readme.read_text(), readme_blocks(runs)))
            RUNNING_MD.write_text(rewrite_blocks(RUNNING_MD.read_text(), docs_blocks()))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(md)


if __name__ == "__main__":
    app.run(main)
