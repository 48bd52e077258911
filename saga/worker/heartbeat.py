"""Leases kept alive while steps run: one thread per process renews every held lease."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("saga.worker")


class Heartbeat:
    """Renews one lease every `lease_s / 3` while entered, until stopped or fenced off.

    One thread per process does the renewing for every held lease (a thread per step
    would cost more than a no-op step).
    """

    def __init__(self, renew: Callable[[], bool], lease_s: float) -> None:
        self._renew = renew
        self.interval = max(lease_s / 3, 0.05)
        self._lease_s = lease_s
        self.lost = threading.Event()
        self._last_ok = time.monotonic()

    def __enter__(self) -> Heartbeat:
        _BEATER.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _BEATER.remove(self)

    def beat(self) -> bool:
        if self.lost.is_set():
            return False
        try:
            alive = self._renew()
        except Exception as exc:  # the database may be away for a moment; the lease says how long
            log.warning("heartbeat failed: %s", exc)
            alive = time.monotonic() - self._last_ok < self._lease_s
        else:
            self._last_ok = time.monotonic()
        if not alive:
            log.warning("lease lost; this attempt's result will be discarded")
            self.lost.set()
        return alive


class _Beater:
    """The process's heartbeat thread: beats each entered Heartbeat when it falls due.

    Entering a lease wakes the thread only if it falls due before the thread's next wake:
    waking it for every attempt (to find nothing due for a third of a lease) cost a thread
    switch and a GIL handover per step. Idle, the thread wakes once per interval.
    """

    def __init__(self) -> None:
        self._due: dict[Heartbeat, float] = {}
        self._wake = threading.Condition()
        self._pid = 0
        # When the waiting thread wakes by itself; -inf while it is not waiting (it looks
        # at `_due` again before it waits).
        self._sleeps_until = -math.inf

    def add(self, heartbeat: Heartbeat) -> None:
        with self._wake:
            if self._pid != os.getpid():  # first use, or a forked child: start its own thread
                self._pid, self._due, self._sleeps_until = os.getpid(), {}, -math.inf
                threading.Thread(target=self._loop, name="saga-heartbeat", daemon=True).start()
            due = self._due[heartbeat] = time.monotonic() + heartbeat.interval
            if due < self._sleeps_until:
                self._wake.notify()

    def remove(self, heartbeat: Heartbeat) -> None:
        with self._wake:
            self._due.pop(heartbeat, None)

    def _loop(self) -> None:
        idle_s = 1.0  # how long to sleep with nothing held: the last interval seen
        while True:
            with self._wake:
                now = time.monotonic()
                if self._due:
                    heartbeat, at = min(self._due.items(), key=lambda item: item[1])
                    idle_s = heartbeat.interval
                else:
                    heartbeat, at = None, now + idle_s
                if heartbeat is None or at > now:
                    self._sleeps_until = at
                    self._wake.wait(at - now)
                    self._sleeps_until = -math.inf
                    continue
                self._due[heartbeat] = now + heartbeat.interval
            if not heartbeat.beat():
                self.remove(heartbeat)


_BEATER = _Beater()
