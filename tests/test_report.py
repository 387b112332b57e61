"""The results page: runs read from workdirs and sweep folders, seeds grouped, mean ± std, bands."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import report, report_headline, report_runs
from experiments.configs import adding, pixel_mnist, row_mnist
from irnn_jax import checkpoint, loop, metrics
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def runs(idx_dir, tmp_path_factory):
    """S1 shortened: seeds 0 and 1 as two workdirs, seeds 2 and 3 as one sweep; an adding run."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        c = tiny_config(idx_dir, "keras_default_init", num_train_steps=6, eval_every_steps=3, seed=seed)
        loop.train_and_evaluate(c, root / f"s1_seed{seed}", experiment="pixel_mnist", command=f"cmd seed {seed}")
    c = tiny_config(idx_dir, "keras_default_init", num_train_steps=6, eval_every_steps=3, sweep="seed=2,3")
    loop.train_and_evaluate(c, root / "s1_sweep", command="cmd sweep")
    a = adding.get_config("irnn_150")
    a.sequence_length, a.num_train_examples, a.num_test_examples = 10, 32, 16
    a.hidden_size, a.num_train_steps, a.eval_every_steps, a.progress_bar = 4, 4, 2, False
    loop.train_and_evaluate(a, root / "add")
    return root


@pytest.mark.slow
def test_seeds_of_one_configuration_are_grouped_across_workdirs_and_sweeps(runs, tmp_path):
    md = report.write_report(report.load_all(sorted(p for p in runs.iterdir())), tmp_path)
    s1 = next(line for line in md.splitlines() if line.startswith("| keras_default_init (S1) + "))
    finals = [
        metrics.read_rows(path)[-1]["test_accuracy"]
        for path in [runs / "s1_seed0" / "metrics.jsonl", runs / "s1_seed1" / "metrics.jsonl"]
        + sorted((runs / "s1_sweep" / "runs").glob("*/metrics.jsonl"))
    ]
    f = np.asarray(finals)
    # Cut short at 6 steps of the 10 epochs the runs asked for: 60,000 / batch 4 * 10 = 150,000.
    assert f"| {f.mean():.4f} ± {f.std(ddof=1):.4f} ({f.min():.4f} to {f.max():.4f}) | 4 | 6 of 150,000 |" in s1
    assert "hidden_size=8" in md  # what the runs changed from the preset is named
    # Each command as it ran, with the fields where the run differs from today's preset added.
    commands = [line for line in md.splitlines() if line.startswith("- keras_default_init (S1) + ")]
    assert len(commands) == 3  # two workdirs, one sweep
    assert all(" --config.hidden_size=8" in line for line in commands)
    assert ["`cmd sweep " in c for c in commands].count(True) == 1 and any("`cmd seed 1 " in c for c in commands)
    add = next(line for line in md.splitlines() if line.startswith("| irnn_150 + "))
    assert "MSE " in add and "| 1 | 4 of 937,500 |" in add
    # Every preset without a run is listed with its command.
    pending = md.split("## Presets not yet run")[1]
    total = len(pixel_mnist.PRESETS) + len(row_mnist.PRESETS) + len(adding.PRESETS)
    assert pending.count("\n- ") == total - 2
    assert "`python -m experiments.pixel_mnist --config=experiments/configs/pixel_mnist.py:keras_900`" in pending
    for name in ("pixel_mnist_mnist.png", "adding.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "results.md").read_text() == md
    assert md.index("## Headline") < md.index("## Contents") < md.index("## S0 and S1")


@pytest.mark.slow
def test_the_page_names_the_code_that_ran(runs):
    info = json.loads((runs / "s1_seed0" / "run.json").read_text())
    session = info["sessions"][0]
    assert info["experiment"] == "pixel_mnist" and info["preset"] == "keras_default_init"
    assert session["command"] == "cmd seed 0" and "cores)" in session["hardware"]
    group = report.group_runs(report.load_runs(runs / "s1_seed0"))[0]
    if "git_commit" in session:  # a checkout: the commit, marked when the tree had changes
        assert group.commits() == session["git_commit"][:8] + ("+changes" if session["git_dirty"] else "")


def _replay(passes, seed, offset):
    """A replay of S3 with `passes` earlier passes whose nine evaluations sit `offset` above the log."""
    config = row_mnist.get_config("tanh50_dense30_as_logged")
    config.earlier_passes = passes
    config.seed = seed
    steps = range(config.eval_offset, config.num_train_steps + 1, 500)
    rows = [{"step": s, "test_accuracy": v + offset} for s, v in zip(steps, row_mnist.S3_LOGGED, strict=True)]
    return report.Run(f"p{passes}/{seed}", "row_mnist", "tanh50_dense30_as_logged", config.to_dict(), rows,
                      [{"command": "c"}])  # fmt: skip


def test_the_log_is_compared_with_each_replay_evaluation_by_evaluation():
    runs = [_replay(1, 0, -0.02), _replay(1, 1, -0.01), _replay(2, 0, 0.004), _replay(2, 1, -0.002)]
    md = report.logged_curve_table(report.group_runs(runs))
    assert "| 1 | 0.9379 | 0.9229 (0.9179 to 0.9279) | 0.9389 (0.9359 to 0.9419) |" in md
    assert "| mean absolute difference from the log | | 0.0150 | 0.0030 |" in md
    assert "closest to the replay with 2 earlier passes (0.0030, against 0.0150 with 1 earlier pass)" in md
    # Seed by seed: each seed's difference from the log, mean ± std over seeds, and the seeds each fits best.
    assert "| 1 earlier pass | 0.0150 ± 0.0071 (0.0100 to 0.0200) | 0 of 2 |" in md
    assert "| 2 earlier passes | 0.0030 ± 0.0014 (0.0020 to 0.0040) | 2 of 2 |" in md
    assert report.logged_curve_table(report.group_runs(runs[:1])).count("closest") == 0  # one replay: no verdict


def _budget_run(preset, seed, accuracy, **changes):
    config = checkpoint.as_json(pixel_mnist.get_config(preset).to_dict() | {"seed": seed} | changes)  # as in run.json
    run = report.Run(f"{preset}/{seed}", "pixel_mnist", preset, config, [], [{"command": f"cmd {preset}"}])
    run.rows = [
        {"step": 625, "test_accuracy": 0.1},
        {"step": report_runs.planned_steps(run), "test_accuracy": accuracy},
    ]
    return run


def test_the_budget_comparison_is_laid_out_as_the_papers_table():
    runs = [
        _budget_run("budget_irnn", 0, 0.80),
        _budget_run("budget_irnn", 1, 0.70),
        _budget_run("budget_lstm_permuted", 0, 0.40),
        _budget_run("budget_rnn_tanh", 0, 0.30, learning_rate=1e-3),  # not the preset's recipe: left out
    ]
    groups = report.group_runs(runs)
    assert [report.section_of(g) for g in groups] == ["budget"] * 3
    table = report.budget_table(groups)
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["irnn"] == (
        "| irnn | 0.7500 ± 0.0707 (0.7000 to 0.8000) | 0.970 at full length (paper) "
        "| not yet run | 0.820 at full length (paper) |"
    )
    assert "| 0.4000 (1 seed) | 0.360 at full length (paper, recalled) |" in rows["lstm"]
    assert rows["rnn_tanh"].count("not yet run") == 2
    assert "does not learn (paper)" in rows["rnn_relu"]
    assert "same 3,750 steps" in table


def test_the_cells20_table_lists_runs_at_another_rate_beneath_it():
    runs = [
        _budget_run("cells20_rnn_tanh_permuted", 0, 0.30),
        _budget_run("cells20_rnn_tanh_permuted", 0, 0.80, learning_rate=3e-4),
        _budget_run("cells20_rnn_tanh_permuted", 1, 0.70, learning_rate=3e-4),
    ]
    table = report.budget_table(report.group_runs(runs), "cells20")
    (row,) = [line for line in table.splitlines() if line.startswith("| rnn_tanh |")]
    assert "| 0.3000 (1 seed) [lr 0.001] |" in row  # the preset's own rate, chosen by the sweep
    table_part, also = table.split("Also run, with a change to the preset")
    assert "0.7500" not in table_part
    assert "- cells20_rnn_tanh_permuted + learning_rate=0.0003: 0.7500 ± 0.0707 (0.7000 to 0.8000)" in also
    assert "Also run" not in report.budget_table(report.group_runs(runs[:1]), "cells20")


def _irnn_fast_run(preset, seed, validation, test, diverged=False, **changes):
    config = checkpoint.as_json(pixel_mnist.get_config(preset).to_dict() | {"seed": seed} | changes)
    rows = [
        {"step": s, "epoch": s / 1719, "elapsed_seconds": s / 40, "train_accuracy": a, "validation_accuracy": a}
        | {"test_accuracy": a}
        for s, a in ((3_438, 0.5), (103_140, 0.8))  # 60 epochs of 55,000 images at batch 32: the whole run
    ]
    rows[-1] |= {"validation_accuracy": validation, "test_accuracy": test} | ({"diverged": True} if diverged else {})
    return report.Run(f"{preset}_seed{seed}", "pixel_mnist", preset, config, rows, [{"command": f"cmd {preset}"}])


def test_the_second_search_has_a_section_of_its_own_with_validation_and_test(tmp_path):
    screen = _irnn_fast_run("irnn_fast", 0, 0.88, 0.89, batch_size=128, optimizer="adam")
    screen.name = "search2_5ep_b128_adam"
    diverged = _irnn_fast_run("irnn_fast", 0, 0.3, 0.2, diverged=True, batch_size=128, learning_rate=1e-3)
    diverged.name = "search2_5ep_b128_lr1e-3"
    runs = [screen, diverged, _irnn_fast_run("irnn_fast", 0, 0.91, 0.90)]
    assert [report.section_of(g) for g in report.group_runs(runs)] == ["search2", "search2", "irnn_fast"]
    md = report.write_report(runs, tmp_path)
    section = md.split("## The second recipe search")[1].split("\n## ")[0]
    assert "optimizer=adam" in section and "| 0.8800 |" in section
    assert "learning_rate=0.001" in section and "1 diverged" in section  # a diverged candidate stays on the page


def test_a_candidate_that_became_a_preset_counts_as_that_presets_run():
    """A search run made as irnn_fast + overrides, whose settings are exactly irnn_tuned's, is one of
    irnn_tuned's seeds; one setting apart, it stays a candidate."""
    tuned = checkpoint.as_json(pixel_mnist.get_config("irnn_tuned").to_dict())
    as_run = report.Run("search2_x", "pixel_mnist", "irnn_fast", tuned | {"name": "irnn_fast", "seed": 1}, [], [])
    assert report_runs.adopted_preset(as_run) == "irnn_tuned"
    apart = dataclasses.replace(as_run, config=as_run.config | {"clip_norm": 1.0})
    assert report_runs.adopted_preset(apart) == "irnn_fast" and report_runs.overrides(apart)
    permuted = checkpoint.as_json(pixel_mnist.get_config("irnn_tuned_permuted").to_dict())
    assert report_runs.adopted_preset(dataclasses.replace(as_run, config=permuted)) == "irnn_tuned_permuted"
    assert report_runs.adopted_preset(dataclasses.replace(as_run, experiment="adding")) == "irnn_fast"


def test_irnn_fast_has_its_own_section_with_each_seeds_validation_and_a_panel_per_preset(tmp_path):
    runs = [
        _irnn_fast_run("irnn_fast", 0, 0.91, 0.90),
        _irnn_fast_run("irnn_fast", 1, 0.93, 0.94),
        _irnn_fast_run("irnn_fast", 2, 0.2, 0.1, diverged=True),
        _irnn_fast_run("irnn_fast_control", 0, 0.5, 0.6),
        _irnn_fast_run("irnn_fast", 0, 0.99, 0.99, learning_rate=1e-4),  # a candidate: no panel of its own
    ]
    groups = report.group_runs(runs)
    # The candidate with another rate is one of the search's: the irnn_fast section holds the presets.
    assert [report.section_of(g) for g in groups] == ["irnn_fast", "irnn_fast", "search"]
    md = report.write_report(runs, tmp_path)
    section = md.split("## irnn_fast and irnn_tuned: ")[1].split("\n## ")[0]
    f = np.asarray([0.90, 0.94, 0.1])
    row = next(line for line in section.splitlines() if line.startswith("| irnn_fast | "))
    spread = f"{f.mean():.4f} ± {f.std(ddof=1):.4f} ({f.min():.4f} to {f.max():.4f})"
    assert f"| {spread}, 1 diverged | 0.9100, 0.9300, 0.2000 |" in row
    assert "![irnn_fast's presets over their seeds](irnn_fast_seeds.png)" in section
    assert (tmp_path / "irnn_fast_seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "pixel_mnist_mnist.png").exists()  # nothing left for the general section


def _sweep_run(preset, lr, validation, test, diverged=False):
    config = checkpoint.as_json(
        pixel_mnist.get_config(preset).to_dict() | {"learning_rate": lr, "validation_size": 5000}
    )
    last = {"step": 3_438, "validation_accuracy": validation, "test_accuracy": test}
    first = {"step": 625, "validation_accuracy": 0.1, "test_accuracy": 0.1}
    rows = [first, last | ({"diverged": True} if diverged else {})]
    return report.Run(f"lrsweep_{preset}/{lr:g}", "pixel_mnist", preset, config, rows, [{"command": "c"}])


def test_the_learning_rate_is_chosen_on_validation_never_on_test():
    runs = [
        _sweep_run("budget_irnn", 1e-4, validation=0.80, test=0.90),  # the best test accuracy: not chosen
        _sweep_run("budget_irnn", 3e-4, validation=0.85, test=0.70),
        _sweep_run("budget_irnn", 1e-3, validation=0.95, test=0.95, diverged=True),  # diverged: never chosen
        _sweep_run("budget_lstm_permuted", 1e-3, validation=0.30, test=0.30),
    ]
    groups = report.group_runs(runs)
    assert [report.section_of(g) for g in groups] == ["lrsweep"] * 4
    assert report.chosen_learning_rates(groups) == {("irnn", "pixel"): 3e-4, ("lstm", "permuted"): 1e-3}
    table = report.lrsweep_table(groups)
    assert "| irnn | pixel | 0.8000 | **0.8500** | diverged | 0.0003 |" in table
    assert "| lstm | permuted | not run | not run | **0.3000** | 0.001 |" in table  # one rate: no edge to speak of
    edge = report.lrsweep_table(report.group_runs(runs + [_sweep_run("budget_irnn", 1e-5, 0.1, 0.1)]))
    assert "| 0.0003 |" in edge and "(the grid's edge)" not in edge  # 3e-4 lies inside 1e-5 ... 1e-3
    assert "| 0.0003 (the grid's edge) |" in report.lrsweep_table(report.group_runs(runs[:2]))
    under_way = [_sweep_run("budget_rnn_tanh", 1e-4, 0.5, 0.5)]
    under_way[0].rows[-1]["step"] = 1_250
    assert report.chosen_learning_rates(report.group_runs(under_way)) == {}  # no choice before the end
    assert "| none yet: under way, step 1,250 of 3,438 |" in report.lrsweep_table(report.group_runs(under_way))
    assert "3,438 steps" in table  # 2 epochs of 55,000 images: the run is complete, not "of 3,750"
    assert "lrsweep" not in report_headline.headline_table(groups)


def test_samples_per_second_counts_a_sweeps_runs_on_one_clock():
    def run(name, steps, seconds, seed, sweep_size=1):
        config = pixel_mnist.get_config("irnn_fast").to_dict() | {"seed": seed}  # batch 32
        return report.Run(name, "pixel_mnist", "irnn_fast", config, [{"step": steps, "elapsed_seconds": seconds,
                          "test_accuracy": 0.5}], [{"command": "c"}], sweep_size=sweep_size)  # fmt: skip

    alone = report.group_runs([run("a", 1000, 10.0, 0), run("b", 1000, 20.0, 1)])[0]
    assert alone.samples_per_second() == "3,200"  # the faster of two separate runs: 1000 * 32 / 10
    assert "sweep" not in alone.wall()
    swept = report.group_runs([run("s/000_seed=0", 1000, 20.0, 0, 2), run("s/001_seed=1", 1000, 20.0, 1, 2)])[0]
    assert swept.samples_per_second() == "3,200"  # both runs' samples over the one clock they shared
    assert swept.wall() == "20 s (a sweep: its 2 runs together)"
    # One member of a 4-run sweep over learning rates: the clock ran all four.
    (member,) = report.group_runs([run("lr/002_learning_rate=0.0003", 1000, 20.0, 0, 4)])
    assert member.samples_per_second() == "6,400"


def test_the_cells20_presets_use_the_learning_rates_the_committed_sweeps_chose():
    """Each finished sweep of docs/results/runs/lrsweep_* picks a learning rate on validation; the cells20
    preset of that cell and order trains at it, and no cells20 preset exists without its sweep."""
    runs = [run for run in report.load_all() if run.name.startswith("lrsweep_")]
    finished = [g for g in report.group_runs(runs) if "of" not in g.steps()]
    assert pixel_mnist.CELLS20_LR == report.chosen_learning_rates(finished)
    for cell, order in pixel_mnist.CELLS20_LR:
        assert f"cells20_{cell}{'_permuted' if order == 'permuted' else ''}" in pixel_mnist.PRESETS


def test_irnn_fast_takes_the_full_length_candidate_best_on_validation():
    """Pixel order: the 3-epoch screens (docs/results/runs/search_val_3ep_*) proposed candidates, each then
    run at full length on seed 0 (irnn_fast_final_*); the preset takes the learning rate, length and spike
    guard of the one with the highest final validation accuracy, a diverged run counting as the lowest.
    Permuted order: its own screen's peak rate (one sweep of three), with the pixel choice's guard, and
    its length chosen the same way among its own full-length runs of seed 0 (irnn_fast_permuted_final_*)."""
    loaded = report.load_all()

    def full_length_candidates(prefix):
        candidates = {}
        for run in loaded:
            if not run.name.startswith(prefix) or run.config["seed"] != 0:
                continue
            if run.diverged:
                score = -1.0
            elif run.rows[-1]["step"] < report_runs.planned_steps(run):
                continue  # still running
            else:
                score = run.rows[-1]["validation_accuracy"]
            c = run.config
            candidates[(c["learning_rate"], c["num_epochs"], c["skip_spike_factor"])] = score
        return candidates

    candidates = full_length_candidates("irnn_fast_final_")
    assert len(candidates) >= 4
    best = max(candidates, key=candidates.get)
    pixel = pixel_mnist.get_config("irnn_fast")
    assert (pixel.learning_rate, pixel.num_epochs, pixel.skip_spike_factor) == best
    assert pixel_mnist.IRNN_FAST_LR["pixel"] == best[0] and pixel_mnist.IRNN_FAST_EPOCHS["pixel"] == best[1]

    screens = {run.name: run for run in loaded if run.name.startswith("search_val_3ep_permuted_lr/")}
    assert len(screens) == 3
    final = {run.config["learning_rate"]: run.rows[-1]["validation_accuracy"] for run in screens.values()}
    permuted = pixel_mnist.get_config("irnn_fast_permuted")
    assert permuted.learning_rate == pixel_mnist.IRNN_FAST_LR["permuted"] == max(final, key=final.get)
    lengths = full_length_candidates("irnn_fast_permuted_final_")
    assert len(lengths) >= 2 and {lr for lr, _, _ in lengths} == {permuted.learning_rate}
    assert {guard for _, _, guard in lengths} == {best[2]}
    chosen = max(lengths, key=lengths.get)
    assert (permuted.num_epochs, permuted.skip_spike_factor) == chosen[1:]
    assert pixel_mnist.IRNN_FAST_EPOCHS["permuted"] == chosen[1]


def test_irnn_tuned_takes_what_the_second_search_found_best_on_validation():
    """The 5-epoch screens (search2_5ep_b128_*_std_clip: Adam and RMSprop at 1e-4, three input scales x
    four clipping values): the input scale best on validation averaged over the clipping values in both
    optimisers, and with Adam the clipping best averaged over the two smaller scales; the learning rate
    best at the best scale of the first screen (search2_5ep_b128_adam_lr_std, N(0, 0.1)); of the two
    full-length runs
    of seed 0, the schedule that ended higher on validation."""
    loaded = report.load_all()
    final = lambda run: run.rows[-1]["validation_accuracy"]  # noqa: E731
    tuned = pixel_mnist.get_config("irnn_tuned")
    grid = {}  # (optimizer, input scale, clip) -> final validation accuracy
    for run in loaded:
        if run.name.startswith("search2_5ep_b128_") and "_std_clip/" in run.name:
            c = run.config
            grid[(c["optimizer"], c["input_init_std"], c["clip_norm"])] = final(run)
    assert len(grid) == 24
    scales = sorted({k[1] for k in grid})
    by_scale = {x: np.mean([v for k, v in grid.items() if k[1] == x]) for x in scales}
    assert tuned.input_init_std == max(by_scale, key=by_scale.get)
    small = scales[:2]
    clips = {y: np.mean([grid[("adam", x, y)] for x in small]) for y in sorted({k[2] for k in grid})}
    assert tuned.clip_norm == max(clips, key=clips.get)
    rates = {
        run.config["learning_rate"]: final(run)
        for run in loaded
        if run.name.startswith("search2_5ep_b128_adam_lr_std/") and run.config["input_init_std"] == 0.1
    }
    assert len(rates) == 2 and tuned.learning_rate == max(rates, key=rates.get)
    schedules = {
        run.config["lr_schedule"]: final(run)
        for run in loaded
        if run.name.startswith("search2_120ep_adam_") and run.config["seed"] == 0 and not run.unfinished
    }  # the schedule's two candidates (the permuted spike-guard runs are search2_120ep_permuted_*)
    assert set(schedules) == {"cosine", "step"} and tuned.lr_schedule == max(schedules, key=schedules.get)
    assert pixel_mnist.IRNN_TUNED["lr_schedule"] == tuned.lr_schedule == "step"


def test_irnn_tuned_permuted_takes_the_spike_guard_that_ended_higher_on_validation_over_three_seeds():
    """The permuted recipe without the guard (irnn_tuned_permuted_seed*, the preset's past form) and with
    it (search2_120ep_permuted_skip5_seed*), the same three seeds: the preset's guard is the one whose
    seeds' mean final validation accuracy is higher."""
    final = {}  # skip_spike_factor -> {seed: final validation accuracy}
    for run in report.load_all():
        if run.name.startswith(("irnn_tuned_permuted_seed", "search2_120ep_permuted_skip5_seed")):
            assert not run.unfinished
            by_seed = final.setdefault(run.config["skip_spike_factor"], {})
            by_seed[run.config["seed"]] = run.rows[-1]["validation_accuracy"]
    assert {k: sorted(v) for k, v in final.items()} == {0.0: [0, 1, 2], 5.0: [0, 1, 2]}
    best = max(final, key=lambda k: np.mean(list(final[k].values())))
    assert pixel_mnist.get_config("irnn_tuned_permuted").skip_spike_factor == best == 5.0
    assert pixel_mnist.get_config("irnn_tuned").skip_spike_factor == 0.0  # pixel order is unchanged


def test_a_run_on_another_recurrence_counts_for_its_preset_and_its_command_names_it():
    """The recurrence changes no result beyond float32 rounding: seeds run with "scan" and with the
    preset's "fused" are one configuration, and each printed command reproduces its own run."""
    scan_run = _budget_run("budget_lstm", 0, 0.40, recurrence="scan")
    fused_run = _budget_run("budget_lstm", 1, 0.30)
    (group,) = report.group_runs([scan_run, fused_run])
    assert report.overrides(scan_run) == {} and report.overrides(scan_run, with_recurrence=True) == {
        "recurrence": "scan"
    }
    assert group.commands() == ["cmd budget_lstm --config.recurrence=scan", "cmd budget_lstm"]
    assert "0.3500 ± 0.0707" in report.budget_table([group])


def test_a_seed_run_before_a_config_field_existed_groups_with_seeds_run_after():
    """A run records the config of its day: one from before a field of base.py existed (here
    ema_decay) ran as that field's default, so it is one configuration with later seeds that record
    the default, and not with a seed that changed the field."""
    old_run = _budget_run("budget_irnn", 0, 0.80)
    del old_run.config["ema_decay"]
    groups = report.group_runs(
        [old_run, _budget_run("budget_irnn", 1, 0.70), _budget_run("budget_irnn", 2, 0.6, ema_decay=0.9)]
    )
    assert [[r.config["seed"] for r in g.runs] for g in groups] == [[0, 1], [2]]
    assert report.overrides(groups[1].first) == {"ema_decay": 0.9}


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="no run.json"):
        report.load_runs(tmp_path)


def test_the_readmes_generated_blocks_are_current():
    """The README's preset table and headline, and docs/running.md's fields table, are what
    `python -m experiments.report` writes from the presets, base.py and the committed run logs: rerun
    it after changing any of them."""
    from pathlib import Path

    readme = (Path(report.ROOT) / "README.md").read_text()
    assert readme.count("<!-- generated:") == 2
    assert report.rewrite_blocks(readme, report.readme_blocks()) == readme, "run: python -m experiments.report"
    running = report.RUNNING_MD.read_text()
    assert running.count("<!-- generated:") == 1
    assert report.rewrite_blocks(running, report.docs_blocks()) == running, "run: python -m experiments.report"


def test_the_readme_is_a_front_page_of_at_most_20000_bytes():
    """Commands, one table of claims, one plot: the analysis lives in docs/."""
    from pathlib import Path

    readme = (Path(report.ROOT) / "README.md").read_bytes()
    assert len(readme) <= 20_000, f"README.md is {len(readme)} bytes"
    assert readme.count(b"![") == 1  # the headline plot
    assert (Path(report.ROOT) / "docs" / "results" / "headline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rewrite_blocks_replaces_only_between_its_markers_and_refuses_a_missing_one():
    text = "a\n<!-- generated:x -->\nold\n<!-- /generated:x -->\nb\n"
    assert report.rewrite_blocks(text, {"x": "new\n"}) == "a\n<!-- generated:x -->\nnew\n<!-- /generated:x -->\nb\n"
    with pytest.raises(ValueError, match="'y'"):
        report.rewrite_blocks(text, {"y": "new\n"})


def test_the_preset_table_has_every_preset_with_the_length_its_config_gives():
    table = report.preset_table()
    for module in (pixel_mnist, row_mnist, adding):
        for preset in module.PRESETS:
            named = preset.removesuffix("_permuted")  # "paper_irnn, ... (and *_permuted)"
            assert f"`{preset}" in table or f" {preset}" in table or named in table and "*_permuted" in table, preset
    keras_900 = next(line for line in table.splitlines() if "`keras_900`" in line)
    assert "1,687,500 steps (900 epochs)" in keras_900
    fast = next(line for line in table.splitlines() if "`irnn_fast, " in line)
    for preset in ("irnn_fast", "irnn_fast_permuted"):  # lengths that differ: each preset named with its own
        c = pixel_mnist.get_config(preset)  # its epochs of the 55,000 images it trains on, at batch 32
        steps = -(-55_000 // 32) * c.num_epochs
        assert f"{preset}: {steps:,} steps ({c.num_epochs} epochs), 5,000 images held out" in fast


def test_printed_commands_are_portable():
    from experiments.report_runs import portable_command

    ran = (
        "python -m experiments.pixel_mnist --config=experiments/configs/pixel_mnist.py:keras "
        "--config.data_dir=/work/data/mnist --workdir=/work/runs/real/pixel_keras_seed0 "
        "--mirror=/somewhere/docs/results/runs/pixel_keras_seed0"
    )
    assert portable_command(ran, "mnist") == (
        "python -m experiments.pixel_mnist --config=experiments/configs/pixel_mnist.py:keras "
        "--workdir=runs/pixel_keras_seed0"
    )
    assert "--config.data_dir=DIR" in portable_command(ran, "fashion_mnist")
    assert "/work" not in portable_command(ran, "fashion_mnist")


@pytest.mark.slow
def test_a_run_with_a_validation_split_shows_its_validation_accuracy(idx_dir, tmp_path):
    c = tiny_config(idx_dir, "irnn_fast", validation_size=30, num_train_steps=4, eval_every_steps=4)
    loop.train_and_evaluate(c, tmp_path / "val", experiment="pixel_mnist", command="cmd")
    md = report.write_report(report.load_all([tmp_path / "val"]), tmp_path / "out")
    assert "| final validation accuracy, each seed |" in md
    value = metrics.read_rows(tmp_path / "val" / "metrics.jsonl")[-1]["validation_accuracy"]
    assert f"| {value:.4f} |" in md


@pytest.mark.slow
def test_a_superseded_run_stays_on_the_page_set_apart_from_its_twin(runs, tmp_path):
    import shutil

    from experiments.report_runs import SUPERSEDED

    shutil.copytree(runs / "s1_seed0", tmp_path / "current")
    shutil.copytree(runs / "s1_seed0", tmp_path / "old")
    (tmp_path / "old" / SUPERSEDED).write_text("the first form of an option, since fixed\n")
    md = report.write_report(report.load_all([tmp_path / "current", tmp_path / "old"]), tmp_path / "out")
    rows = [line for line in md.splitlines() if line.startswith("| keras_default_init (S1)")]
    assert len(rows) == 2  # not grouped as two seeds of one configuration
    assert sum("[superseded: the first form of an option, since fixed]" in r for r in rows) == 1


def _final_run(experiment, preset, seed, value, sessions=None, steps=None, **changes):
    """A run of `preset` that reached its full length (or `steps`) with final test metric `value`."""
    module = report_runs.EXPERIMENTS[experiment]
    config = checkpoint.as_json(module.get_config(preset).to_dict() | {"seed": seed} | changes)
    run = report.Run(f"{preset}/{seed}", experiment, preset, config, [], sessions or [{"command": f"cmd {preset}"}])
    end = steps if steps is not None else report_runs.planned_steps(run)
    run.rows = [
        {"step": end // 2, "epoch": 1.0, module.METRIC: value / 2},
        {"step": end, "epoch": 2.0, module.METRIC: value},
    ]
    return run


def test_the_headline_sets_each_claim_beside_our_figure_with_a_verdict_by_rule():
    runs = [
        *(_final_run("pixel_mnist", "keras_default_init", s, v) for s, v in enumerate((0.10, 0.11, 0.12))),
        *(_final_run("pixel_mnist", "irnn_fast", s, v) for s, v in enumerate((0.960, 0.962, 0.964))),
        _final_run("pixel_mnist", "irnn_fast_permuted", 0, 0.84),
        _final_run("adding", "irnn_150", 0, 2e-6),
        _final_run("adding", "irnn_150", 1, 0.05, steps=1_000),  # under way: not part of the figure
    ]
    table = report_headline.headline_table(report.group_runs(runs))
    rows = {line.split(" | ")[-1].strip(" |`"): line for line in table.splitlines()[2:]}
    assert set(rows) == {"pixel_mnist:keras_default_init", "pixel_mnist:irnn_fast", "pixel_mnist:irnn_fast_permuted",
                         "adding:irnn_150"}  # fmt: skip
    assert "| reproduced: at chance |" in rows["pixel_mnist:keras_default_init"]
    assert "| 0.9620 ± 0.0020 (0.9600 to 0.9640) | short by 0.8 points |" in rows["pixel_mnist:irnn_fast"]
    assert "| beaten by 2.0 points (1 seed only) |" in rows["pixel_mnist:irnn_fast_permuted"]
    assert "reproduced: solved (MSE 2e-06 against 0.167) (1 seed only)" in rows["adding:irnn_150"]
    # Within half a point is reproduced, whichever side.
    close = [_final_run("pixel_mnist", "irnn_fast", s, 0.968) for s in range(3)]
    assert "reproduced (within 0.5 points)" in report_headline.headline_table(report.group_runs(close))


def test_unfinished_runs_beside_finished_seeds_are_a_group_of_their_own():
    runs = [_final_run("adding", "irnn_150", 0, 2e-6), _final_run("adding", "irnn_150", 1, 0.05, steps=1_000)]
    groups = report.group_runs(runs)
    assert [g.label for g in groups] == ["irnn_150", "irnn_150 [unfinished]"]
    assert [len(g.runs) for g in groups] == [1, 1]
    # A run asked to be short (--config.num_train_steps) is finished at its own length.
    short = _final_run("adding", "irnn_150", 2, 0.05, steps=1_000, num_train_steps=1_000)
    assert [g.label for g in report.group_runs([short])] == ["irnn_150"]


def test_machines_are_counted_only_where_a_session_recorded_one():
    sessions = [{"command": "c"}, {"command": "c"}] + [{"command": "c", "hardware": "AMD", "machine": "m1"}] * 3
    g = report.group_runs([_final_run("adding", "irnn_150", 0, 2e-6, sessions=sessions)])[0]
    assert g.sessions() == "5 sessions, 1 machine (2 sessions with no machine recorded)"


def test_a_divergence_the_log_missed_is_recorded_by_a_file_beside_it(idx_dir, tmp_path):
    loop.train_and_evaluate(tiny_config(idx_dir, num_train_steps=4, eval_every_steps=2), tmp_path / "run")
    (run,) = report.load_runs(tmp_path / "run")
    assert not run.diverged
    (tmp_path / "run" / report_runs.DIVERGED).write_text("non-finite at step 5, seen on the console\n")
    (run,) = report.load_runs(tmp_path / "run")
    assert run.diverged and "1 diverged" in report.group_runs([run])[0].ours()


def test_the_headline_plot_draws_the_best_recipe_that_has_runs_in_both_orders(tmp_path):
    def finished(preset, accuracy):  # a run whose last row is at the length its preset asks for
        run = _irnn_fast_run(preset, 0, accuracy, accuracy)
        run.rows[-1]["step"] = report_runs.asked_steps(run)
        return run

    s0 = finished("keras_900", 0.6)
    fast = [finished(p, 0.9) for p in ("irnn_fast", "irnn_fast_permuted")]
    tuned = [finished(p, 0.95) for p in ("irnn_tuned", "irnn_tuned_permuted")]
    assert report_headline.plot_recipe(report.group_runs([s0, *fast])) == "irnn_fast"
    assert report_headline.plot_recipe(report.group_runs([s0, *fast, *tuned])) == "irnn_tuned"
    # irnn_tuned in one order only: the plot keeps irnn_fast, whose both orders have runs.
    assert report_headline.plot_recipe(report.group_runs([s0, *fast, tuned[0]])) == "irnn_fast"
    assert report_headline.plot_recipe(report.group_runs(fast)) == ""  # no S0: no plot
    assert "irnn_tuned's seeds in each pixel order" in report.headline(report.group_runs([s0, *fast, *tuned]), "")
    assert report_headline.plot_headline(report.group_runs([s0, *fast, *tuned]), tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_preset_whose_seeds_were_all_search_runs_stands_with_the_presets_and_its_past_form_with_the_search():
    """Runs named as search candidates whose settings are exactly a preset's are that preset's seeds,
    shown with the presets; runs of an irnn_tuned preset whose settings it no longer has (a past form
    of the preset) stay on the page with the second search."""
    adopted = []
    for seed in (0, 1, 2):
        run = _irnn_fast_run("irnn_tuned_permuted", seed, 0.9, 0.9)
        run.name = f"search2_candidate_seed{seed}"
        adopted.append(run)
    past = _irnn_fast_run("irnn_tuned_permuted", 0, 0.8, 0.8, clip_norm=1.0)  # the preset before a change
    sections = [report.section_of(g) for g in report.group_runs([*adopted, past])]
    assert sections == ["irnn_fast", "search2"]
    assert report_headline.find(report.group_runs(adopted), "pixel_mnist", "irnn_tuned_permuted") is not None
