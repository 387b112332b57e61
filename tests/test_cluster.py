"""experiments/cluster/pixel_mnist.sbatch without SLURM: fake srun, scancel and scontrol on PATH.

The batch script is run by bash as SLURM would run it. The fake `srun` runs
its arguments as a child and notes its pid; the fake `scancel --signal=SIG
JOBID` sends SIG to that pid, as slurmd would to the step's tasks; all three
append their command line to a log. SIGTERM to the script stands for the
time-limit warning (--signal=B:TERM@120).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from irnn_jax import metrics
from tests.conftest import ROOT, write_idx_dir

pytestmark = pytest.mark.slow  # the SLURM script around real runs

SCRIPT = ROOT / "experiments" / "cluster" / "pixel_mnist.sbatch"
JOB_ID = "4242"
STEPS = 1500
FLAGS = (
    "--config.hidden_size=8 --config.batch_size=4 --config.eval_batch_size=20 "
    f"--config.num_train_steps={STEPS} --config.eval_every_steps=200 --config.checkpoint_every_steps=500 "
    "--config.progress_bar=False"
)
FAKES = {
    # Like the real srun, SIGTERM makes it SIGKILL its task: the script must signal the step, not srun.
    "srun": """echo "srun $*" >> "$FAKE_SLURM/calls"
trap 'kill -KILL "$task"' TERM
"$@" &
task=$!
echo "$task" > "$FAKE_SLURM/step.pid"
while :; do wait "$task"; rc=$?; kill -0 "$task" 2>/dev/null || exit "$rc"; done""",
    "scancel": 'echo "scancel $*" >> "$FAKE_SLURM/calls"; kill "-${1#--signal=}" "$(cat "$FAKE_SLURM/step.pid")"',
    "scontrol": 'echo "scontrol $*" >> "$FAKE_SLURM/calls"',
}


@pytest.fixture
def cluster(tmp_path):
    """A fake SLURM environment: returns (env, calls, workdir); calls() lists the fakes' command lines
    other than srun's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls"
    data_dir = write_idx_dir(tmp_path / "idx", n_train=96, n_test=40)
    workdir = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # a real job's variables would leak in
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        FAKE_SLURM=str(tmp_path),
        SLURM_JOB_ID=JOB_ID,
        SLURM_SUBMIT_DIR=str(ROOT),
        PYTHON=sys.executable,
        PRESET="keras",
        WORKDIR=str(workdir),
        EXTRA_FLAGS=f"--config.data_dir={data_dir} {FLAGS}",
    )

    def calls():
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if not line.startswith("srun ")]

    return env, calls, workdir


def _start(env, **extra):
    return subprocess.Popen(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env={**env, **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_sigterm_saves_and_requeues_then_the_requeued_job_finishes(cluster):
    env, calls, workdir = cluster
    job = _start(env)
    deadline = time.monotonic() + 60
    while not metrics.read_rows(workdir / "metrics.jsonl"):
        assert job.poll() is None, job.stdout.read()
        assert time.monotonic() < deadline, "no metrics row after 60 s"
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 sends to the batch shell
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0, out
    assert "stopped by signal" in out  # the training itself saved and exited
    stopped_at = _checkpoint_steps(workdir)[-1]
    assert 200 <= stopped_at < STEPS, out
    assert not list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    # The step was signalled through scancel (srun would SIGKILL its tasks on SIGTERM), then the job requeued.
    assert calls() == [f"scancel --signal=TERM {JOB_ID}", f"scontrol requeue {JOB_ID}"]

    # SLURM starts the script again with the same environment and a restart count.
    requeued = _start(env, SLURM_RESTART_COUNT="1")
    out, _ = requeued.communicate(timeout=60)
    assert requeued.returncode == 0, out
    assert "restart count 1" in out
    assert _checkpoint_steps(workdir)[-1] == STEPS
    rows = metrics.read_rows(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [*range(200, STEPS, 200), STEPS]  # resumed, not restarted
    assert len(calls()) == 2  # no second requeue


def test_failed_training_exits_nonzero_and_is_not_requeued(cluster):
    env, calls, workdir = cluster
    job = _start(env, EXTRA_FLAGS=env["EXTRA_FLAGS"] + " --config.batch_size=0")
    out, _ = job.communicate(timeout=60)
    assert job.returncode != 0, out
    assert "batch_size" in out  # the training's own error reaches the log
    assert "not requeued" in out
    assert calls() == []


def test_a_training_that_lost_a_peer_exits_75_and_is_requeued(cluster, tmp_path):
    """Exit status 75 is what a process of a multi-node job returns when another one died
    (irnn_jax/peers.py): the script requeues, and the restart resumes from the last checkpoint."""
    env, calls, workdir = cluster
    lost = tmp_path / "lost_a_peer"
    lost.write_text("#!/bin/bash\necho 'error: process 1 has sent no heartbeat for 20 s' >&2\nexit 75\n")
    lost.chmod(0o755)
    job = _start(env, PYTHON=str(lost))
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0, out
    assert "(exit 75); requeueing" in out
    assert calls() == [f"scontrol requeue {JOB_ID}"]
