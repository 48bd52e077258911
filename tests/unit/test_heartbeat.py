"""The shared heartbeat thread: renews every held lease on time, stops at a lost fence."""

from __future__ import annotations

import threading
import time

from saga.worker.heartbeat import _BEATER, Heartbeat


def _until(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_leases_are_renewed_while_held_and_not_after():
    """Given two held leases, both are renewed about every third of the lease; none after exit."""
    calls = {"a": 0, "b": 0}
    lock = threading.Lock()

    def renew(name):
        def go():
            with lock:
                calls[name] += 1
            return True
        return go

    held = [Heartbeat(renew("a"), lease_s=0.3), Heartbeat(renew("b"), lease_s=0.3)]
    with held[0], held[1]:
        _until(lambda: calls["a"] >= 3 and calls["b"] >= 3)
    assert not any(beat in _BEATER._due for beat in held)  # nothing left to renew


def test_a_refused_renewal_marks_the_lease_lost_and_stops_beating():
    refused = []

    def renew():
        refused.append(1)
        return False

    with Heartbeat(renew, lease_s=0.15) as beat:
        _until(beat.lost.is_set)
        assert not beat.beat()  # a lost lease stays lost without asking the database again
    assert len(refused) == 1


def test_a_database_outage_shorter_than_the_lease_keeps_the_lease():
    outcomes = iter([ConnectionError("down"), True])

    def renew():
        outcome = next(outcomes, True)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    beat = Heartbeat(renew, lease_s=60)
    assert beat.beat() is True  # the outage is recent: the lease is still ours
    assert not beat.lost.is_set()


def test_entering_a_lease_wakes_the_thread_only_if_it_falls_due_before_its_next_wake(monkeypatch):
    """Waking the thread for every attempt cost a thread switch per step: a lease due after
    the thread's next wake leaves it asleep; one due sooner wakes it, and is renewed in time."""
    with Heartbeat(lambda: True, lease_s=30):  # renewed every 10 s: the thread sleeps so long
        _until(lambda: _BEATER._sleeps_until > time.monotonic() + 5)
    wakes = []
    notify = _BEATER._wake.notify
    monkeypatch.setattr(_BEATER._wake, "notify", lambda *a: (wakes.append(1), notify(*a)))
    with Heartbeat(lambda: True, lease_s=60):  # due in 20 s: after the thread wakes anyway
        pass
    assert wakes == []
    renewed = threading.Event()

    def renew():
        renewed.set()
        return True

    with Heartbeat(renew, lease_s=0.3):  # due in 0.1 s: the thread must wake for it
        assert renewed.wait(2), "a lease due before the thread's next wake was not renewed"
    assert wakes == [1]
