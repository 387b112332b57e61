"""The results page's figures: one PNG per section, four panels, epochs on a linear axis.

Panels: accuracy (test solid, train dotted, validation dash-dot where a run held one out; the adding
problem: test MSE), test loss, training loss
and the mean gradient norm before clipping. Each configuration is its mean over seeds with a
min-to-max band; permuted order is dashed and shares its colour with the natural-order twin. The
sources' figures are horizontal lines, each labelled; a diverged run ends in a cross.
"""

from pathlib import Path

import numpy as np

from experiments import report_runs
from irnn_jax import adding as adding_task

# (row key, panel title, log scale)
PANELS = (
    ("test_loss", "test loss", True),
    ("train_loss", "training loss (since the previous evaluation)", True),
    ("grad_norm", "gradient norm before clipping (mean)", True),
)


def _series(group: report_runs.Group, key: str):
    """(epochs, values (R, S)) over the evaluations every run of the group has; None if none has `key`."""
    have = [{r["step"] for r in run.rows if r.get(key) is not None} for run in group.runs]
    steps = sorted(set.intersection(*have))
    if not steps:
        return None
    by_step = [{r["step"]: r for r in run.rows} for run in group.runs]
    epochs = np.asarray([by_step[0][s]["epoch"] for s in steps])
    return epochs, np.asarray([[rows[s][key] for s in steps] for rows in by_step], np.float64)


def _draw(ax, group, key, colour, style, label=None, band=True):
    series = _series(group, key)
    if series is None:
        return
    epochs, values = series
    ax.plot(epochs, values.mean(0), style, color=colour, label=label, marker="." if len(epochs) < 40 else None)
    if band and len(group.runs) > 1:
        ax.fill_between(epochs, values.min(0), values.max(0), color=colour, alpha=0.18)
    for run, row in zip(group.runs, values, strict=True):
        if run.diverged:
            ax.plot(epochs[-1], row[-1], "x", color="black", markersize=9, markeredgewidth=2)


def _targets(groups) -> dict[float, str]:
    """The sources' figures of the section's presets: value -> label."""
    out = {}
    for g in groups:
        rep = g.module.REPORTED.get(g.first.preset, {})
        if rep.get("value") is not None and g.metric != "test_loss":
            out.setdefault(rep["value"], rep["text"])
    return out


def _mark_targets(ax, groups) -> None:
    """The sources' figures of the groups' presets as grey horizontal lines, each labelled."""
    for k, (value, text) in enumerate(sorted(_targets(groups).items())):
        ax.axhline(value, color="grey", linestyle=(0, (4, 2 + k)), linewidth=1)
        ax.annotate(text, (0.01, value), xycoords=("axes fraction", "data"), fontsize=6, color="dimgrey",
                    va="bottom")  # fmt: skip


def plot(groups: list, title: str, path: Path) -> None:
    """Writes the section's figure to `path`."""
    import matplotlib  # optional heavy dependency, only for the plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    main_ax = axes[0, 0]
    colours: dict[str, str] = {}
    regression = groups[0].metric == "test_loss"
    for g in groups:
        colour = colours.setdefault(g.label.replace("_permuted", ""), f"C{len(colours) % 10}")
        style = "--" if g.first.config.get("task") == "permuted" else "-"
        seeds = f"{len(g.runs)} seed{'s' if len(g.runs) > 1 else ''}"
        diverged = f", {g.diverged()} diverged" if g.diverged() else ""
        label = f"{g.label} ({seeds}{diverged})"
        if regression:
            _draw(main_ax, g, "test_loss", colour, style, label)
        else:
            _draw(main_ax, g, "test_accuracy", colour, style, label)
            _draw(main_ax, g, "train_accuracy", colour, ":", band=False)
            _draw(main_ax, g, "validation_accuracy", colour, "-.", band=False)  # runs with a validation split
        for ax, (key, _, _) in zip(axes.flat[1:], PANELS, strict=True):
            _draw(ax, g, key, colour, style)
    if regression:
        main_ax.axhline(adding_task.BASELINE_MSE, color="grey", linestyle="--", label="always predict 1 (0.167)")
        main_ax.set_yscale("log")
        main_ax.set_title("test MSE", fontsize=9)
    else:
        _mark_targets(main_ax, groups)
        main_ax.set_title(
            "accuracy: test solid, training dotted, validation dash-dot; grey lines: the sources' figures", fontsize=9
        )
    for ax, (_, name, log) in zip(axes.flat[1:], PANELS, strict=True):
        ax.set_title(name, fontsize=9)
        if log:
            ax.set_yscale("log")
    for ax in axes.flat:
        ax.set_xlabel("epochs (passes over the training set)")
        ax.grid(True, alpha=0.3)
    main_ax.legend(fontsize=6, loc="best")
    fig.suptitle(
        f"{title}\nmean over seeds, band: min to max over seeds; dashed: permuted order; x: a run that diverged",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_seeds(groups: list, title: str, path: Path) -> None:
    """A panel per configuration (a preset as it stands): its training, validation and test accuracy,
    each the mean over seeds with a min-to-max band; a cross where a run diverged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.2), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        for key, colour, name in (
            ("train_accuracy", "C2", "training (since the previous evaluation)"),
            ("validation_accuracy", "C1", "validation"),
            ("test_accuracy", "C0", "test"),
        ):
            _draw(ax, g, key, colour, "-", name)
        _mark_targets(ax, [g])
        diverged = f", {g.diverged()} diverged" if g.diverged() else ""
        ax.set_title(f"{g.label} ({len(g.runs)} seed{'s' if len(g.runs) > 1 else ''}{diverged})", fontsize=9)
        ax.set_xlabel("epochs (passes over the training set)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0, 0].set_ylabel("accuracy")
    fig.suptitle(f"{title}\nmean over seeds, band: min to max over seeds; x: a run that diverged", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_lrsweep(groups: list, title: str, path: Path, chosen: dict) -> None:
    """The learning-rate sweeps' figure: final validation accuracy against the learning rate, a line per
    cell (dashed: permuted order), a cross where the run diverged (drawn at its last validation
    accuracy), a ring on the rate chosen (`chosen`: (cell, order) -> rate, `report.chosen_learning_rates`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key: dict[tuple[str, str], list] = {}
    for g in groups:
        key = (g.first.config["cell"], g.first.config.get("task", "pixel"))
        by_key.setdefault(key, []).append(g)
    fig, ax = plt.subplots(figsize=(8, 5))
    colours: dict[str, str] = {}
    for (cell, order), gs in sorted(by_key.items()):
        colour = colours.setdefault(cell, f"C{len(colours) % 10}")
        gs = sorted(gs, key=lambda g: g.first.config["learning_rate"])
        lrs = [g.first.config["learning_rate"] for g in gs]
        vals = [float(np.mean([r.rows[-1].get("validation_accuracy", np.nan) for r in g.runs])) for g in gs]
        ax.plot(lrs, vals, "--" if order == "permuted" else "-", color=colour, marker=".", label=f"{cell}, {order}")
        for g, lr, v in zip(gs, lrs, vals, strict=True):
            if g.diverged():
                ax.plot(lr, v, "x", color="black", markersize=9, markeredgewidth=2)
        if (cell, order) in chosen:
            k = lrs.index(chosen[cell, order])
            ax.plot(lrs[k], vals[k], "o", markersize=12, markerfacecolor="none", color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{title}\nring: the rate chosen; x: a run that diverged (its last validation accuracy)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
