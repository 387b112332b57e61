"""Results page: a Markdown table and learning curves from run directories.

    python -m experiments.report RUN_DIR... [--out=docs/results]

Each RUN_DIR is a workdir written by one of the experiments (it holds
run.json and metrics.jsonl). Writes OUT/results.md (one row per run, then one
row per preset with no run, marked "not yet run" with its command) and
OUT/<experiment>.png (test accuracy or test MSE against steps, one line per
run, the reported figure as a marker where the source gives one).
"""

import json
import sys
from pathlib import Path

from absl import app, flags

from experiments.configs import adding, pixel_mnist, row_mnist
from irnn_jax import metrics

EXPERIMENTS = {"pixel_mnist": pixel_mnist, "row_mnist": row_mnist, "adding": adding}
SOURCE_IDS = {"keras": "S0", "keras_900": "S0", "keras_default_init": "S1", "keras_relu16": "S2"}
SOURCE_IDS.update({"tanh50_dense30": "S3", "tanh50": "S4"})

_OUT = flags.DEFINE_string("out", "docs/results", "folder for results.md and the plots")


def load_run(workdir: Path) -> dict:
    """run.json plus the metric rows; raises ValueError naming what is missing."""
    info_path, rows_path = workdir / "run.json", workdir / "metrics.jsonl"
    if not info_path.exists():
        raise ValueError(f"{workdir} has no run.json: not a workdir of experiments.* (or written before it)")
    info = json.loads(info_path.read_text())
    rows = metrics.read_rows(rows_path)
    if not rows:
        raise ValueError(f"{workdir} has no evaluations in metrics.jsonl yet")
    info["rows"] = rows
    info["workdir"] = str(workdir)
    return info


def _fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _ours(run: dict, metric: str) -> str:
    last = run["rows"][-1]
    if metric == "test_accuracy":
        best = max(r["test_accuracy"] for r in run["rows"])
        return f"{last['test_accuracy']:.4f} (best {best:.4f})"
    best = min(r["test_loss"] for r in run["rows"])
    return f"MSE {last['test_loss']:.4f} (best {best:.4f}; baseline {adding.BASELINE_MSE:.3f})"


def _planned_steps(config: dict, num_train: int) -> int:
    if config["num_train_steps"] > 0:
        return config["num_train_steps"]
    return config["num_epochs"] * -(-num_train // config["batch_size"])


def table(runs: list[dict]) -> str:
    """The Markdown table: runs first, then presets that have none."""
    header = (
        "| experiment | dataset | preset | reported | ours (final test) | steps | wall time | hardware | command |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    done = set()
    for run in runs:
        module = EXPERIMENTS[run["experiment"]]
        preset, config, last = run["preset"], run["config"], run["rows"][-1]
        done.add((run["experiment"], preset))
        dataset = config["dataset"]
        if dataset != "adding" and dataset != "mnist":
            dataset += " (stands in for MNIST)"
        elif dataset == "adding":
            dataset = f"adding, T={config['sequence_length']}"
        # Compare with the preset's own length, so a shortened run says so.
        preset_config = module.get_config(preset).to_dict()
        planned = _planned_steps(preset_config, preset_config.get("num_train_examples", 60_000))
        steps = f"{last['step']:,}" + ("" if last["step"] >= planned else f" of {planned:,}")
        reported = module.REPORTED.get(preset, {}).get("text", "")
        sid = SOURCE_IDS.get(preset)
        name = f"{preset} ({sid})" if sid else preset
        hardware = run["sessions"][-1]["hardware"].replace("; cpu: cpu", "")  # older run.json files
        lines.append(
            f"| {run['experiment']} | {dataset} | {name} | {reported} | {_ours(run, module.METRIC)} | {steps} | "
            f"{_fmt_time(last['elapsed_seconds'])} | {hardware} | `{run['sessions'][0]['command']}` |"
        )
    for experiment, module in EXPERIMENTS.items():
        for preset in module.PRESETS:
            if (experiment, preset) in done:
                continue
            sid = SOURCE_IDS.get(preset)
            name = f"{preset} ({sid})" if sid else preset
            cmd = f"python -m experiments.{experiment} --config=experiments/configs/{experiment}.py:{preset}"
            reported = module.REPORTED.get(preset, {}).get("text", "")
            lines.append(f"| {experiment} | | {name} | {reported} | not yet run | | | | `{cmd}` |")
    return header + "\n".join(lines) + "\n"


def plot(runs: list[dict], experiment: str, path: Path) -> None:
    """Learning curves of one experiment's runs, with the reported figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    module = EXPERIMENTS[experiment]
    metric = module.METRIC
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        steps = [r["step"] for r in run["rows"]]
        values = [r[metric] for r in run["rows"]]
        label = f"{run['preset']} ({run['config']['dataset']})"
        (line,) = ax.plot(steps, values, marker=".", label=label)
        rep = module.REPORTED.get(run["preset"], {})
        if rep.get("value") is not None and rep.get("step") is not None:
            ax.plot([rep["step"]], [rep["value"]], marker="*", markersize=12, color=line.get_color(), linestyle="")
    if metric == "test_loss":
        ax.axhline(adding.BASELINE_MSE, color="grey", linestyle="--", label="always predict 1 (0.167)")
        ax.set_ylabel("test MSE")
        ax.set_yscale("log")
    else:
        ax.set_ylabel("test accuracy")
    ax.set_xlabel("optimiser steps")
    ax.set_xscale("log")
    ax.set_title(f"{experiment}: ours (lines; dataset in the legend), reported by the source (stars)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(workdirs: list[Path], out: Path) -> str:
    """Writes results.md and one PNG per experiment; returns the Markdown."""
    runs = [load_run(Path(w)) for w in workdirs]
    out.mkdir(parents=True, exist_ok=True)
    md = table(runs)
    for experiment in EXPERIMENTS:
        group = [r for r in runs if r["experiment"] == experiment]
        if group:
            plot(group, experiment, out / f"{experiment}.png")
            md += f"\n![{experiment}]({experiment}.png)\n"
    (out / "results.md").write_text(md)
    return md


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more run directories")
    try:
        md = write_report([Path(a) for a in argv[1:]], Path(_OUT.value))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(md)


if __name__ == "__main__":
    app.run(main)
