"""Time: the one UTC helper, and the clock that times leases and waits (the database's)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def aware(value: datetime) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite keeps only the wall-clock fields)."""
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Clock:
    """Reads the time every lease, retry and wait is measured by: the database server's.

    Tests move it forward across processes with `saga.testing.clock.ShiftedClock`; this
    one adds nothing and reads nothing.
    """

    def read(self, db_now: datetime | None) -> datetime:
        """`db_now` (None where the database has no clock to ask: SQLite) as this process sees it."""
        return aware(db_now) if db_now is not None else utcnow()
