"""The absl entry point shared by the experiments: flags, --help, clean errors."""

import logging as std_logging
import re
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def field_help() -> str:
    """One line per config field, from the comments in configs/base.py."""
    lines = []
    for line in (CONFIG_DIR / "base.py").read_text().splitlines():
        m = re.match(r"\s*c\.(\w+) = (.*?)(?:\s+#\s*(.*))?$", line)
        if m:
            name, default, comment = m.groups()
            lines.append(f"  {name:<24} default {default}" + (f"; {comment}" if comment else ""))
    return "\n".join(lines)


class _QuietLibraries(std_logging.Filter):
    """Drops Orbax's INFO chatter (one line per save) from the absl log."""

    def filter(self, record):
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def run_experiment(doc: str, config_file: str, default_preset: str, experiment: str) -> None:
    """Defines --workdir and --config, then trains. Known failures exit 1 with a message."""
    config_path = CONFIG_DIR / config_file
    presets_doc = _module_doc(config_path)
    sys.modules["__main__"].__doc__ = (
        f"{doc}\nPRESETS ({config_path.relative_to(CONFIG_DIR.parent.parent)}):\n{presets_doc}\n"
        f"CONFIG FIELDS (override with --config.FIELD=VALUE; presets change some defaults):\n"
        f"{field_help()}\n"
    ).replace("%", "%%")
    workdir_flag = flags.DEFINE_string(
        "workdir", None, f"run directory; default runs/{experiment}/<preset name>. Resumes if it holds a checkpoint."
    )
    config_flag = config_flags.DEFINE_config_file(
        "config", f"{config_path}:{default_preset}", "preset: PATH:PRESET", lock_config=True
    )

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        from irnn_jax import checkpoint, data, train

        logging.get_absl_handler().addFilter(_QuietLibraries())
        config = config_flag.value
        workdir = workdir_flag.value or f"runs/{experiment}/{config.name}"
        logging.info("config:\n%s", config)
        logging.info("workdir: %s", Path(workdir).resolve())
        try:
            result = train.train_and_evaluate(config, workdir)
        except (train.ConfigError, data.DataError, checkpoint.CheckpointMismatchError, train.DivergenceError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        if result.stopped_by_signal:
            print(f"stopped by signal at step {result.step}; run the same command to resume", file=sys.stderr)
        elif result.last_row is not None:
            row = result.last_row
            print(
                f"done: step {row['step']}, test accuracy {row['test_accuracy']:.4f}, test loss {row['test_loss']:.4f}"
            )
        else:
            print(f"nothing to do: {workdir} already holds the finished run (step {result.step})")

    app.run(main)


def _module_doc(path: Path) -> str:
    import ast

    return ast.get_docstring(ast.parse(path.read_text())) or ""
