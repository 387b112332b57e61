"""The absl entry point shared by the experiments: flags, --help, clean errors."""

import importlib
import logging as std_logging
import re
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

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
    """Drops Orbax's INFO chatter (one line per save) from the absl log."""

    def filter(self, record):
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def run_experiment(doc: str, config_file: str, default_preset: str, experiment: str) -> None:
    """Defines --workdir and --config, then trains. Known failures exit 1 with a message."""
    config_path = CONFIG_DIR / config_file
    presets = importlib.import_module(f"experiments.configs.{config_path.stem}").PRESETS
    sys.modules["__main__"].__doc__ = (
        f"{doc}\nPRESETS ({config_path.relative_to(CONFIG_DIR.parent.parent)}): {', '.join(presets)}\n\n"
        f"{_module_doc(config_path)}\n\n"
        f"CONFIG FIELDS (override with --config.FIELD=VALUE; presets change some defaults):\n"
        f"{field_help(config_file)}\n"
    ).replace("%", "%%")
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

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        from irnn_jax import checkpoint, data, parallel, sweep, train

        logging.get_absl_handler().addFilter(_QuietLibraries())
        config = config_flag.value
        workdir = workdir_flag.value or f"runs/{experiment}/{config.name}"
        logging.info("config:\n%s", config)
        logging.info("workdir: %s", Path(workdir).resolve())
        try:
            train.validate_config(config)
            share = len(sweep.expand(config)) if config.sweep else config.batch_size
            parallel.use_cpu_devices(cpu_devices_flag.value, share)
            parallel.maybe_initialize_distributed()  # before anything starts JAX's backends
            record_session(Path(workdir), experiment, config)
            result = train.train_and_evaluate(config, workdir)
        except (train.ConfigError, data.DataError, checkpoint.CheckpointMismatchError, train.DivergenceError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        if result.stopped_by_signal:
            print(f"stopped by signal at step {result.step}; run the same command to resume", file=sys.stderr)
        elif result.last_row is not None:
            row = result.last_row
            accuracy = f", test accuracy {row['test_accuracy']:.4f}" if "test_accuracy" in row else ""
            print(f"done: step {row['step']}{accuracy}, test loss {row['test_loss']:.4f}")
        else:
            print(f"nothing to do: {workdir} already holds the finished run (step {result.step})")

    app.run(main)


def hardware() -> str:
    """'CPU model (N cores)[; N x accelerator kind]', for the results page."""
    import os

    import jax

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    accelerator = "" if dev.platform == "cpu" else f"; {jax.device_count()} x {dev.device_kind}"
    return f"{cpu} ({os.cpu_count()} cores){accelerator}"


def record_session(workdir: Path, experiment: str, config) -> None:
    """Appends this invocation (command, hardware, time) to WORKDIR/run.json."""
    import datetime
    import json
    import shlex

    import jax

    path = workdir / "run.json"
    info = json.loads(path.read_text()) if path.exists() else {"sessions": []}
    info.update(experiment=experiment, preset=config.name, config=config.to_dict())
    info["sessions"].append(
        {
            "command": shlex.join(["python", "-m", f"experiments.{experiment}", *sys.argv[1:]]),
            "hardware": hardware(),
            "jax": jax.__version__,
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **code_version(),
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1, default=list) + "\n")


def code_version() -> dict:
    """{'git_commit': sha, 'git_dirty': bool} of the checkout the code runs from (empty if none)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if sha.returncode != 0:
        return {}
    return {"git_commit": sha.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def _is_literal(text: str) -> bool:
    import ast

    try:
        ast.literal_eval(text)
        return True
    except (ValueError, SyntaxError):
        return False


def _module_doc(path: Path) -> str:
    import ast

    return ast.get_docstring(ast.parse(path.read_text())) or ""
