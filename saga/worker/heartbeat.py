"""Leases kept alive while steps run: one thread per process renews every held lease."""

from __future__ import annotations

import logging
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
    """The process's heartbeat thread: beats each entered Heartbeat when it falls due."""

    def __init__(self) -> None:
        self._due: dict[Heartbeat, float] = {}
        self._wake = threading.Condition()
        self._pid = 0

    def add(self, heartbeat: Heartbeat) -> None:
        with self._wake:
            if self._pid != os.getpid():  # first use, or a forked child: start its own thread
                self._pid, self._due = os.getpid(), {}
                threading.Thread(target=self._loop, name="saga-heartbeat", daemon=True).start()
            self._due[heartbeat] = time.monotonic() + heartbeat.interval
            self._wake.notify()

    def remove(self, heartbeat: Heartbeat) -> None:
        with self._wake:
            self._due.pop(heartbeat, None)

    def _loop(self) -> None:
        while True:
            with self._wake:
                if not self._due:
                    self._wake.wait()
                    continue
                heartbeat, at = min(self._due.items(), key=lambda item: item[1])
                if at > time.monotonic():
                    self._wake.wait(at - time.monotonic())
                    continue
                self._due[heartbeat] = time.monotonic() + heartbeat.interval
            if not heartbeat.beat():
                self.remove(heartbeat)


_BEATER = _Beater()
