"""The watchdog that turns a lost process into a clean exit (irnn_jax/peers.py), without JAX: a fake
key-value store stands for the coordination service, and `lost(now=...)` reads a chosen clock. The
real thing, two processes on localhost with one killed, is in tests/test_parallel.py."""

import signal
import sys
import time

import pytest

from irnn_jax import peers


class Store:
    """The two calls of JAX's DistributedRuntimeClient the watchdog uses; `down` makes both fail."""

    def __init__(self):
        self.values, self.down = {}, False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise ConnectionError("coordination service unreachable")
        self.values[key] = value

    def key_value_try_get(self, key):
        if self.down:
            raise ConnectionError("coordination service unreachable")
        if key not in self.values:
            raise KeyError(key)
        return self.values[key]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _job(n=3, timeout_s=10.0):
    """A store, a clock, and the n processes' watchdogs (threads not started: the test beats them)."""
    store, clock = Store(), Clock()
    dogs = [peers.PeerWatchdog(store, i, n, timeout_s, 1.0, on_lost=lambda *a: None, clock=clock) for i in range(n)]
    return store, clock, dogs


def _beat_all(dogs, skip=()):
    """Two heartbeats of each process not in `skip`, at the clock's time. A watchdog may see a peer's last
    count only at its next beat: the tests leave a margin of a beat on each side of the timeout."""
    for _ in range(2):
        for i, d in enumerate(dogs):
            if i not in skip:
                d.beat()


def test_a_silent_peer_is_lost_after_the_timeout_and_not_before():
    store, clock, dogs = _job()
    _beat_all(dogs)
    for _ in range(9):  # process 2 stops beating; 0 and 1 go on
        clock.t += 1
        _beat_all(dogs, skip={2})
    assert dogs[0].lost() is None  # at most 9 s of silence: not yet
    clock.t += 6
    _beat_all(dogs, skip={2})
    message, status = dogs[0].lost()
    assert status == peers.EXIT_PEER_LOST == 75
    assert "process 2 has sent no heartbeat" in message and message.startswith("process 0 of 3")


def test_beating_peers_are_never_lost():
    store, clock, dogs = _job()
    for _ in range(50):
        clock.t += 1
        _beat_all(dogs)
    assert all(d.lost() is None for d in dogs)


def test_a_peer_that_ended_normally_is_not_expected_to_beat():
    store, clock, dogs = _job()
    _beat_all(dogs)
    dogs[2].done()
    _beat_all(dogs)
    clock.t += 100
    _beat_all(dogs, skip={2})
    assert dogs[0].lost() is None
    for _ in range(3):  # a live peer that goes silent is still lost
        clock.t += 8
        _beat_all(dogs, skip={1, 2})
    message, status = dogs[0].lost()
    assert "process 1 has sent no heartbeat" in message and status == 75


def test_a_peer_that_failed_stops_the_others_with_status_1_at_once():
    store, clock, dogs = _job()
    _beat_all(dogs)
    dogs[1].failed()
    dogs[1].done()  # the end published first stands: the atexit `done` does not hide the failure
    _beat_all(dogs, skip={1})
    message, status = dogs[2].lost()
    assert status == 1 and "process 1 stopped with an error" in message


def test_an_unreachable_coordinator_is_lost_after_the_timeout():
    store, clock, dogs = _job(n=2)
    _beat_all(dogs)
    store.down = True
    clock.t += 5
    dogs[1].beat()  # fails: the store does not answer
    assert dogs[1].lost() is None
    clock.t += 6
    dogs[1].beat()
    message, status = dogs[1].lost()
    assert status == 75 and "the coordinator (process 0) has not answered" in message


def test_the_threads_call_on_lost_once_with_the_verdict():
    store = Store()
    verdicts = []
    dog = peers.PeerWatchdog(store, 0, 2, 0.3, 0.05, on_lost=lambda *v: verdicts.append(v)).start()
    deadline = time.monotonic() + 10
    while not verdicts and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    dog.stop()
    assert len(verdicts) == 1 and "process 1" in verdicts[0][0] and verdicts[0][1] == 75


def test_settings_come_from_the_environment_and_are_checked(monkeypatch):
    monkeypatch.setenv("IRNN_JAX_PEER_TIMEOUT", "8")
    monkeypatch.setenv("IRNN_JAX_PEER_INTERVAL", "0.5")
    assert peers.settings() == (8.0, 0.5)
    assert peers.jax_heartbeat_timeout(8.0) == 100 and peers.jax_heartbeat_timeout(30.0) == 150
    monkeypatch.setenv("IRNN_JAX_PEER_INTERVAL", "9")
    with pytest.raises(ValueError, match="IRNN_JAX_PEER_INTERVAL"):
        peers.settings()


ABORT_AFTER_LOSING_THE_COORDINATOR = r"""
import os, sys
sys.stderr.write("I1203 some log line\n")
sys.stderr.write("E1203 08:02:25 coordination_service_agent.cc:289] Polled an error from coordination service\n")
sys.stderr.write("F1203 a native stack trace, line 1\n" * 50)
sys.stderr.flush()
os.abort()
"""


def test_the_supervisor_turns_an_abort_after_a_lost_coordinator_into_75_and_one_line(capfd):
    assert peers.supervise(["-c", ABORT_AFTER_LOSING_THE_COORDINATOR]) == 75
    err = capfd.readouterr().err
    assert "I1203 some log line" in err  # forwarded until the loss
    assert "native stack trace" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        line for line in err.splitlines() if "exit status 75" in line
    ]
    assert err.count("error:") == 1


@pytest.mark.parametrize(
    "code, status",
    [("import sys; sys.exit(3)", 3), ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + 15)],
)
def test_the_supervisor_passes_other_outcomes_through(code, status):
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert peers.supervise(["-c", code]) == status
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert sys.executable  # the child ran under this interpreter
