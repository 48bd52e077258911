"""A clock the tests move forward in every process at once, with no sleeping.

`SAGA_TEST_CLOCK_FILE=/tmp/x/clock` makes each process add the seconds written in that file
to the database's time. The file is read again only when it changes (one stat per read),
and only in processes started with the variable: production never builds this clock.
`MovableClock` is the same shift kept in memory, for tests that run everything in one
process (the saga test kit).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta

from saga.clock import Clock

ENV = "SAGA_TEST_CLOCK_FILE"


class ShiftedClock(Clock):
    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._offset = timedelta(0)

    def read(self, db_now: datetime | None) -> datetime:
        return super().read(db_now) + self.offset()

    def offset(self) -> timedelta:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return timedelta(0)
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            with open(self.path) as f:
                self._offset = timedelta(seconds=float(f.read().strip() or 0))
            self._stamp = stamp
        return self._offset


class MovableClock(Clock):
    """The database's time plus an offset this process moves forward with `advance`."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def read(self, db_now: datetime | None) -> datetime:
        return super().read(db_now) + self.offset

    def advance(self, by: timedelta) -> None:
        if by < timedelta(0):
            raise ValueError(f"the clock only moves forward, not by {by}")
        self.offset += by


def from_env(environ: Mapping[str, str] = os.environ) -> Clock:
    """The shifted clock when a test asked for one, else the database's own."""
    path = environ.get(ENV, "")
    return ShiftedClock(path) if path else Clock()
