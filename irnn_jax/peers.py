"""A multi-process run notices a lost process within seconds and exits cleanly, to be requeued.

When one process of a `jax.distributed` job dies (SIGKILL, a node failure, an OOM kill), the others
are left waiting in a collective. JAX's coordination service notices only after its heartbeat
timeout (100 s by default), then aborts every survivor with SIGABRT: exit status 134, a native
stack trace of thousands of lines and possibly a core dump. The scheduler sees a crash.

`PeerWatchdog` does better. Every process publishes a counter in the coordination service's
key-value store every `interval_s` and reads the others'. When a peer's counter has not moved for
`timeout_s`, or the store itself (held by process 0, the coordinator) stops answering for that
long, the process prints one line that names the lost process and exits at once with
EXIT_PEER_LOST (75, EX_TEMPFAIL: "try again"), without a core dump.
`experiments/cluster/pixel_mnist.sbatch` requeues on 75; the restart resumes from the last complete
checkpoint (an interrupted save is discarded by Orbax), bit for bit.

A process that stops with an error publishes that too: its peers then stop at once with exit status 1
(the job failed; requeueing would fail again) instead of waiting for it. A process that ends normally
publishes that it is done, and its peers stop expecting heartbeats from it.

Settings, from the environment (read when the job joins, `parallel.maybe_initialize_distributed`):
IRNN_JAX_PEER_TIMEOUT (seconds of silence before a process counts as lost, default 20) and
IRNN_JAX_PEER_INTERVAL (seconds between heartbeats, default 2). JAX's own heartbeat timeout is set
to 5 x IRNN_JAX_PEER_TIMEOUT (at least 100 s), so that this watchdog acts first.
"""

import ctypes
import os
import resource
import signal
import subprocess
import sys
import threading
import time

EXIT_PEER_LOST = 75  # EX_TEMPFAIL (sysexits.h): a transient failure; the job may be requeued
DEFAULT_TIMEOUT_S = 20.0
DEFAULT_INTERVAL_S = 2.0
_KEY = "irnn_jax/alive/{}"
_DONE = "done"  # published by a process that ends normally: its silence after that is no loss
_FAILED = "failed"  # published by a process that stops with an error: its peers stop too, with exit status 1


def settings() -> tuple[float, float]:
    """(timeout_s, interval_s) from IRNN_JAX_PEER_TIMEOUT and IRNN_JAX_PEER_INTERVAL."""
    timeout = float(os.environ.get("IRNN_JAX_PEER_TIMEOUT", DEFAULT_TIMEOUT_S))
    interval = float(os.environ.get("IRNN_JAX_PEER_INTERVAL", DEFAULT_INTERVAL_S))
    if not (timeout > 0 and 0 < interval < timeout):
        raise ValueError(
            f"IRNN_JAX_PEER_TIMEOUT must be > 0 and IRNN_JAX_PEER_INTERVAL between 0 and it, got {timeout}, {interval}"
        )
    return timeout, interval


def jax_heartbeat_timeout(timeout_s: float) -> int:
    """JAX's coordination heartbeat timeout to pass to jax.distributed.initialize: well after ours."""
    return int(max(100, 5 * timeout_s))


class PeerWatchdog:
    """Heartbeats through `client` (a jax DistributedRuntimeClient, or anything with key_value_set and
    key_value_try_get) and calls `on_lost(message, exit_status)` once when a peer or the coordinator
    goes silent (EXIT_PEER_LOST), or a peer reports that it failed (1).

    Two daemon threads: one talks to the store (its calls may block when the coordinator is gone),
    the other only reads the clock, so a blocked call cannot hide the silence. Both go on after this
    process has published its end (`done`, `failed`): JAX's shutdown at exit waits for every peer, and
    a peer lost then must still be noticed."""

    def __init__(
        self, client, process_id: int, num_processes: int, timeout_s: float, interval_s: float, on_lost=None,
        clock=time.monotonic,
    ):  # fmt: skip
        self.client, self.process_id, self.num_processes = client, process_id, num_processes
        self.timeout_s, self.interval_s = timeout_s, interval_s
        self.on_lost = on_lost or exit_peer_lost
        self.clock = clock
        now = clock()
        self._seen = {p: (None, now) for p in range(num_processes) if p != process_id}  # peer -> (value, when)
        self._store_ok = now  # the last time the store answered
        self._final: str | None = None  # published instead of the count once this process ends
        self._count = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "PeerWatchdog":
        for target in (self._beat, self._judge):
            t = threading.Thread(target=target, daemon=True, name=f"irnn-jax-{target.__name__[1:]}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()

    def done(self) -> None:
        """Tells the peers that this process ends normally: its silence from now on is no loss."""
        self._publish_end(_DONE)

    def failed(self) -> None:
        """Tells the peers that this process stops with an error: they stop too (exit status 1)."""
        self._publish_end(_FAILED)

    def _publish_end(self, state: str) -> None:
        if self._final is None:
            self._final = state
            try:
                self.client.key_value_set(_KEY.format(self.process_id), state, allow_overwrite=True)
            except Exception:  # noqa: BLE001 - the beat thread tries again
                pass

    def beat(self) -> None:
        """One heartbeat: publishes this process's count (or its end) and reads the peers'."""
        self._count += 1
        try:
            self.client.key_value_set(
                _KEY.format(self.process_id), self._final or str(self._count), allow_overwrite=True
            )
            now = self.clock()
            for peer, (value, _) in list(self._seen.items()):
                try:
                    current = self.client.key_value_try_get(_KEY.format(peer))
                except Exception:  # noqa: BLE001 - not published yet
                    current = value
                if current != value:
                    self._seen[peer] = (current, now)
            self._store_ok = now
        except Exception:  # noqa: BLE001 - the store is unreachable: the judge decides when it is too long
            pass

    def _beat(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.interval_s)

    def lost(self, now: float | None = None) -> tuple[str, int] | None:
        """(message, exit status) for the first failed or silent peer (or an unreachable coordinator), else
        None. Peers that ended normally are not expected to beat; nor is the store once process 0 ended."""
        now = self.clock() if now is None else now
        who = f"process {self.process_id} of {self.num_processes}"
        for peer, (value, _) in sorted(self._seen.items()):
            if value == _FAILED:
                return f"{who}: process {peer} stopped with an error (its log says why)", 1
        coordinator_done = self._seen.get(0, (None, 0))[0] == _DONE
        if not coordinator_done and now - self._store_ok > self.timeout_s:
            return (
                f"{who}: the coordinator (process 0) has not answered for {now - self._store_ok:.0f} s; "
                f"it is lost (killed, crashed or cut off)",
                EXIT_PEER_LOST,
            )
        for peer, (value, when) in sorted(self._seen.items()):
            if value != _DONE and now - when > self.timeout_s:
                return (
                    f"{who}: process {peer} has sent no heartbeat for {now - when:.0f} s; "
                    f"it is lost (killed, crashed or cut off)",
                    EXIT_PEER_LOST,
                )
        return None

    def _judge(self) -> None:
        while not self._stop.wait(self.interval_s / 2):
            verdict = self.lost()
            if verdict is not None:
                self.on_lost(*verdict)
                return


_running: PeerWatchdog | None = None


def start(client, process_id: int, num_processes: int, timeout_s: float, interval_s: float) -> PeerWatchdog:
    """Starts this process's watchdog (one per process)."""
    global _running
    _running = PeerWatchdog(client, process_id, num_processes, timeout_s, interval_s).start()
    return _running


def exit_if_a_peer_is_lost() -> None:
    """After an error in a multi-process run: waits for the watchdog's verdict (at most its timeout and
    two heartbeats) and, when a peer or the coordinator is lost, ends the process with EXIT_PEER_LOST
    (or 1 when a peer failed first). Otherwise the error is this process's own: it tells the peers
    that it failed, and returns for the caller to raise it. Returns at once in a single process."""
    watchdog = _running
    if watchdog is None:
        return
    deadline = time.monotonic() + watchdog.timeout_s + 2 * watchdog.interval_s
    while time.monotonic() < deadline:
        verdict = watchdog.lost()
        if verdict is not None:
            watchdog.on_lost(*verdict)
            return
        time.sleep(watchdog.interval_s / 2)
    watchdog.failed()


def finished() -> None:
    """Tells the peers that this process ended normally (called at exit)."""
    if _running is not None:
        _running.done()


def exit_peer_lost(message: str, status: int = EXIT_PEER_LOST) -> None:
    """Prints one line and ends the process at once with `status` (no cleanup, no core dump: the other
    threads may be blocked in a collective that will never finish)."""
    then = (
        "(requeue); the restart resumes from the last complete checkpoint"
        if status == EXIT_PEER_LOST
        else "(the job failed)"
    )
    sys.stderr.write(f"error: {message}. Stopping with exit status {status} {then}.\n")
    sys.stderr.flush()
    os._exit(status)


# ------------------------------------------------------------------------------ supervisor

SUPERVISED = "IRNN_JAX_SUPERVISED"  # set in the child: it runs the training itself
# What JAX's client logs when it loses the coordination service, just before it aborts the process.
_COORDINATOR_LOST_MARKS = ("Polled an error from coordination service", "coordination service")


def is_multi_process_launch(environ=os.environ) -> bool:
    """Whether this process is one of several of a jax.distributed job (see parallel)."""
    slurm = int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in environ
    return "JAX_COORDINATOR_ADDRESS" in environ or slurm


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _child_setup(parent: int):
    """What the supervised child runs between fork and exec: no core dump, and on Linux death with its
    parent. A SIGKILLed supervisor (a user's `kill -9` of the launched pid, a launcher, the OOM killer)
    cannot pass anything on; without this its child would train on as an orphan and keep its peers
    going. With it, the kernel sends the child SIGKILL, the peers see a dead process, and they stop with
    EXIT_PEER_LOST within their heartbeat timeout, as when a host dies."""

    def setup():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            except (OSError, AttributeError):
                return
            if os.getppid() != parent:  # the parent died before the request was in place
                os._exit(128 + signal.SIGKILL)

    return setup


def supervise(argv: list[str]) -> int:
    """Runs `python argv...` as a child and returns the exit status this process should have.

    Only a lost coordinator (process 0) needs this: JAX's client then aborts the process from a native
    thread at once, with no hook that Python can use (its `missed_heartbeat_callback` fails with
    std::bad_cast in jaxlib 0.10), leaving exit status 134, a long native stack trace and perhaps a
    core dump. The parent passes SIGTERM and SIGINT on to the child, forwards its stderr until the
    client reports the loss, and then, if the child aborted, prints one line and returns
    EXIT_PEER_LOST. Every other outcome is passed through (a signal N as 128 + N)."""
    env = dict(os.environ, **{SUPERVISED: "1"})
    child = subprocess.Popen(
        [sys.executable, *argv], env=env, stderr=subprocess.PIPE, preexec_fn=_child_setup(os.getpid())
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    lost = None
    for raw in iter(child.stderr.readline, b""):
        line = raw.decode(errors="replace")
        if lost is None and any(mark in line for mark in _COORDINATOR_LOST_MARKS) and line[:1] in "EF":
            lost = line.strip()
        if lost is None:
            sys.stderr.write(line)
            sys.stderr.flush()
    rc = child.wait()
    if lost is not None and rc == -signal.SIGABRT:
        sys.stderr.write(
            f"error: the coordination service (process 0) is lost ({lost[-160:]}). Stopping with exit status "
            f"{EXIT_PEER_LOST} (requeue); the restart resumes from the last complete checkpoint.\n"
        )
        return EXIT_PEER_LOST
    if lost is not None:  # the child ended otherwise: show what was held back
        sys.stderr.write(f"{lost}\n")
    return 128 - rc if rc < 0 else rc
