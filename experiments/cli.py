"""The absl entry point shared by the experiments: flags, --help, clean errors."""

import ast
import difflib
import importlib
import logging as std_logging
import os
import re
import shlex
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from irnn_jax import checkpoint, config_check, data, loop, metrics, parallel, peers, sweep, train, workdir

# What a run can fail with that is the user's to fix: printed as one message, exit status 1.
KNOWN_ERRORS = (
    config_check.ConfigError,
    data.DataError,
    workdir.WorkdirBusyError,
    checkpoint.CheckpointMismatchError,
    checkpoint.CheckpointCorruptError,
    checkpoint.StorageError,
    metrics.MetricsFileError,
    train.DivergenceError,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def field_help(config_file: str) -> str:
    """One line per config field, from the comments in configs/base.py and the
    experiment's own config file (fields it adds)."""
    lines, seen = [], set()
    for path in (CONFIG_DIR / "base.py", CONFIG_DIR / config_file):
        for line in path.read_text().splitlines():
            m = re.match(r"\s*c\.(\w+) = (.*?)(?:\s+#\s*(.*))?$", line)
            if m and m.group(1) not in seen:
                name, default, comment = m.groups()
                seen.add(name)
                if not _is_literal(default):
                    default = "set by the preset"
                lines.append(f"  {name:<24} default {default}" + (f"; {comment}" if comment else ""))
    return "\n".join(lines)


class _QuietLibraries(std_logging.Filter):
    """Drops Orbax's INFO chatter (one line per save) from the absl log, and the tracebacks its writer
    threads and their asyncio tasks log when a write fails: the same failure reaches the run, which
    names the folder and the cause in one line (checkpoint.StorageError)."""

    def filter(self, record):
        if "/orbax/" in record.pathname:
            failed_write = record.levelno >= std_logging.ERROR and record.exc_info
            return record.levelno >= std_logging.WARNING and not failed_write
        if "/asyncio/" in record.pathname and "exception was never retrieved" in str(record.msg):
            return False
        return True


def run_experiment(doc: str, config_file: str, default_preset: str, experiment: str) -> None:
    """Defines --workdir and --config, then trains. Known failures exit 1 with a message."""
    if peers.is_multi_process_launch() and not os.environ.get(peers.SUPERVISED):
        # One process of several: run the training in a child, so that a lost coordinator ends this
        # process with peers.EXIT_PEER_LOST (requeue) and one line, not an abort (irnn_jax.peers).
        sys.exit(peers.supervise(["-m", f"experiments.{experiment}", *sys.argv[1:]]))
    config_path = CONFIG_DIR / config_file
    presets_module = importlib.import_module(f"experiments.configs.{config_path.stem}")
    presets = presets_module.PRESETS
    sys.modules["__main__"].__doc__ = (
        f"{doc}\nPRESETS ({config_path.relative_to(CONFIG_DIR.parent.parent)}): {', '.join(presets)}\n\n"
        f"{_module_doc(config_path)}\n\n"
        f"CONFIG FIELDS (override with --config.FIELD=VALUE; presets change some defaults):\n"
        f"{field_help(config_file)}\n"
    ).replace("%", "%%")
    _exit_on_unknown_fields(presets_module)  # before DEFINE_config_file, which reads the overrides at once
    workdir_flag = flags.DEFINE_string(
        "workdir", None, f"run directory; default runs/{experiment}/<preset name>. Resumes if it holds a checkpoint."
    )
    config_flag = config_flags.DEFINE_config_file(
        "config", f"{config_path}:{default_preset}", "preset: PATH:PRESET", lock_config=True
    )
    cpu_devices_flag = flags.DEFINE_integer(
        "cpu_devices",
        0,
        "JAX devices to split the CPU into; the batch (a sweep: its runs) is divided among them. "
        "0: one per usable core, as many as divide the batch evenly. Ignored on GPU/TPU, and when "
        "XLA_FLAGS or JAX_NUM_CPU_DEVICES set a count. Not part of the config: a run may resume with "
        "another count (equal to float32 rounding, not bit for bit).",
        lower_bound=0,
    )

    allow_data_flag = flags.DEFINE_bool(
        "allow_data_change",
        False,
        "resume even when the data read now differs from the data the checkpoint was trained on "
        "(its SHA-256 fingerprint); without it such a resume is refused",
    )

    mirror_flag = flags.DEFINE_string(
        "mirror",
        None,
        "a folder that keeps a portable copy of the run (run.json, metrics, the newest checkpoint; a few "
        "hundred KB): rewritten after every checkpoint, and taken into the workdir at the start when it "
        "is newer. Commit or copy it, and the same command resumes the run on another machine.",
    )

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.get_absl_handler().addFilter(_QuietLibraries())
        config = config_flag.value
        workdir = workdir_flag.value or f"runs/{experiment}/{config.name}"
        logging.info("config:\n%s", config)
        logging.info("workdir: %s", Path(workdir).resolve())
        try:
            config_check.validate_config(config)
            share = len(sweep.expand(config)) if config.sweep else config.batch_size
            parallel.use_cpu_devices(cpu_devices_flag.value, share)  # before anything starts JAX's backends
            command = shlex.join(["python", "-m", f"experiments.{experiment}", *sys.argv[1:]])
            result = loop.train_and_evaluate(
                config,
                workdir,
                experiment=experiment,
                command=command,
                allow_data_change=allow_data_flag.value,
                mirror=mirror_flag.value,
            )
        except KNOWN_ERRORS as e:
            if isinstance(e, checkpoint.StorageError):
                sys.unraisablehook = lambda unraisable: None  # Orbax's unfinished writers, at exit
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except OSError as e:  # the workdir or the mirror: a file, read-only, under /proc, a full disk
            print(f"error: {filesystem_message(e, workdir)}", file=sys.stderr)
            sys.exit(1)
        if result.stopped_by_signal:
            print(f"stopped by signal at step {result.step}; run the same command to resume", file=sys.stderr)
        elif result.last_rows:
            print("\n".join(done_lines(result.last_rows, result.run_names)))
        else:
            print(f"nothing to do: {workdir} already holds the finished run (step {result.step})")

    app.run(main)


def filesystem_message(e: OSError, workdir: str) -> str:
    """One line for a failed file operation: the path, the cause, and what to do."""
    path = e.filename or workdir
    also = f" (and {e.filename2})" if e.filename2 else ""
    return (
        f"cannot write {path}{also}: {e.strerror or e}. The workdir ({workdir}) must be a folder that this process "
        f"can create and write, on a disk with free space; fix that and run the same command (a run resumes from its "
        f"last complete checkpoint)"
    )


def done_lines(rows: list[dict], names: list[str]) -> list[str]:
    """The closing lines of a finished run: one line for a single run; for a sweep, the step and then
    one line per run, named, so that no run's result is left out."""

    def result(row):
        accuracy = f"test accuracy {row['test_accuracy']:.4f}, " if "test_accuracy" in row else ""
        frozen = " (diverged: its state frozen where it stopped)" if row.get("diverged") else ""
        return f"{accuracy}test loss {metrics.format_metric(row['test_loss'])}{frozen}"

    if len(rows) == 1:
        return [f"done: step {rows[0]['step']}, {result(rows[0])}"]
    return [f"done: step {rows[0]['step']}, {len(rows)} runs"] + [
        f"  {name}: {result(row)}" for name, row in zip(names, rows, strict=True)
    ]


def _exit_on_unknown_fields(presets_module) -> None:
    """Exits with status 2 and a message naming the nearest real fields when the command line sets a
    config field that does not exist (ml_collections would raise a bare AttributeError)."""
    message = unknown_fields_message(sys.argv[1:], presets_module)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def unknown_fields_message(argv: list[str], presets_module) -> str | None:
    """A message for every `--config.FIELD` in `argv` that no preset of `presets_module` has, or None."""
    known = set()
    for preset in presets_module.PRESETS:
        known |= set(presets_module.get_config(preset).keys())
    problems = []
    for arg in argv:
        m = re.match(r"--config\.([A-Za-z_]\w*)", arg)
        if m and m.group(1) not in known:
            near = difflib.get_close_matches(m.group(1), sorted(known), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            problems.append(f"there is no config field {m.group(1)!r}{hint}")
    if not problems:
        return None
    return "; ".join(problems) + " (--help lists every field)"


def _is_literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
        return True
    except (ValueError, SyntaxError):
        return False


def _module_doc(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""
