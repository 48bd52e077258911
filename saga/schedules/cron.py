"""Cron schedules on a time zone's wall clock: their logical times, and what a missed one comes to.

A schedule's firings are *logical times*: UTC instants, each the input and the idempotency
key of one run (`schedule:2025-03-30T01:00:00Z`), so a firing starts once however many
sweepers look at it and however often a backfill asks for it. Pure: no clock, no I/O.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import islice
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

from saga.errors import DefinitionError

__all__ = ["Schedule", "Plan", "CatchUp", "CATCH_UP", "iso", "schedule_key"]

class CatchUp(StrEnum):
    """What the firings missed while no sweeper ran come to."""

    SKIP = "skip"  # none; wait for the next
    LATEST = "latest"  # the newest one, once
    ALL = "all"  # each in order, a batch per sweep


CATCH_UP = tuple(CatchUp)
# More than any daylight-saving or zone-rule shift in use, so the order of logical
# times can be settled that far ahead of the wall clock.
SHIFT_BOUND = timedelta(hours=3)


@dataclass(frozen=True)
class Schedule:
    """When a saga starts by itself: a five-field cron read on the wall clock of `timezone`.

        nightly = Saga("nightly_report", steps=[...],
                       schedule=Schedule("0 3 * * *", timezone="Europe/Paris", catch_up="latest"))

    Daylight saving: a wall time the clocks skip fires as if they had not moved (02:30 on
    the spring-forward night fires at 03:30 summer time); a wall time that happens twice
    fires at its first occurrence only, unless the hour field is `*`, where the job
    follows the real hours and fires in both.

    After downtime, a firing more than `grace` late was missed, and `catch_up` says what
    the missed ones come to: "skip" (none; wait for the next), "latest" (the newest one,
    once), "all" (each in order, a batch per sweep).
    """

    cron: str
    timezone: str = "UTC"
    catch_up: CatchUp | str = CatchUp.LATEST
    grace: timedelta = timedelta(minutes=1)

    def __post_init__(self) -> None:
        # A string names the member ("all"); a wrong one is refused by `check`, naming the saga.
        if self.catch_up in CATCH_UP:
            object.__setattr__(self, "catch_up", CatchUp(self.catch_up))

    @property
    def spec(self) -> str:
        """What the times follow; a stored schedule whose spec changed starts over from now."""
        return f"{self.cron.strip()} {self.timezone}"

    def check(self, saga: Any) -> None:
        """Raise DefinitionError naming `saga` (a Saga or a name) if this cannot fire."""
        name = getattr(saga, "name", saga)

        def fail(why: str) -> NoReturn:
            raise DefinitionError(f"saga {name!r}: schedule {why}")

        if len(self.cron.split()) != 5 and not self.cron.strip().startswith("@"):
            fail(f"cron {self.cron!r} must have five fields (minute hour day month weekday) "
                 "or be @hourly, @daily, @weekly, @monthly or @yearly")
        if not croniter.is_valid(self.cron.strip()):
            fail(f"cron {self.cron!r} is not a valid cron expression")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            fail(f"timezone {self.timezone!r} is not a known IANA time zone (e.g. Europe/Paris)")
        if self.catch_up not in CATCH_UP:
            fail(f"catch_up must be one of {', '.join(CATCH_UP)}, not {self.catch_up!r}")
        if self.grace < timedelta(0):
            fail("grace must not be negative")
        try:
            example = self.next_after(datetime(2000, 1, 1, tzinfo=UTC))
        except CroniterError:
            fail(f"cron {self.cron!r} never fires")
        _check_input(saga, {"logical_time": iso(example)}, fail)

    # -- logical times --------------------------------------------------------------

    def times(self, start: datetime, end: datetime | None = None) -> Iterator[datetime]:
        """The logical times t with start <= t (<= end), ascending, as UTC datetimes."""
        start, end = _utc(start), _utc(end) if end is not None else None
        zone = ZoneInfo(self.timezone)
        cron = croniter(self.cron.strip(), _wall(start, zone) - SHIFT_BOUND)
        every_hour = cron.expanded[1] == ["*"]
        pending: list[datetime] = []
        last: datetime | None = None
        while True:
            instants = _instants(cron.get_next(datetime), zone, every_hour)
            # Later wall times map to instants after `settled`: the ones before are final.
            settled = min(instants) - SHIFT_BOUND
            while pending and (pending[0] <= settled or (end is not None and settled > end)):
                t = heapq.heappop(pending)
                if t != last and t >= start and (end is None or t <= end):
                    last = t
                    yield t
            if end is not None and settled > end:
                return
            for t in instants:
                heapq.heappush(pending, t)

    def next_after(self, t: datetime) -> datetime:
        """The first logical time strictly after `t`."""
        return next(self.times(_utc(t) + timedelta(microseconds=1)))

    def latest(self, start: datetime, end: datetime) -> datetime | None:
        """The newest logical time in [start, end], or None."""
        start, end = _utc(start), _utc(end)
        window = timedelta(hours=1)
        while True:  # widen the window until it holds a firing or reaches `start`
            low = max(start, end - window)
            newest = deque(self.times(low, end), maxlen=1)
            if newest or low == start:
                return newest[0] if newest else None
            window *= 4

    def plan(self, due: datetime, now: datetime, batch: int) -> Plan:
        """What to fire for a schedule whose next firing is `due`, seen at `now`."""
        due, now = _utc(due), _utc(now)
        if due > now:
            return Plan((), due)
        if self.catch_up == CatchUp.ALL:
            fire = tuple(islice(self.times(due, now), batch))
            return Plan(fire, self.next_after(fire[-1] if fire else now))
        if self.catch_up == CatchUp.LATEST:
            newest = self.latest(due, now)
            return Plan((newest,) if newest else (), self.next_after(now))
        on_time = self.times(max(due, now - self.grace), now)
        return Plan(tuple(islice(on_time, batch)), self.next_after(now))


@dataclass(frozen=True)
class Plan:
    """The logical times to start now, and the schedule's next firing after them."""

    fire: tuple[datetime, ...]
    next_fire_at: datetime


def iso(t: datetime) -> str:
    """A logical time as the runs carry it: UTC, ISO 8601, whole seconds."""
    return _utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def schedule_key(t: datetime) -> str:
    """The idempotency key of the run of logical time `t` (schedule and backfill alike)."""
    return f"schedule:{iso(t)}"


def _instants(wall: datetime, zone: ZoneInfo, every_hour: bool) -> tuple[datetime, ...]:
    """The instants a wall-clock time names in `zone`: one, or two in a repeated hour."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first >= second:
        # An ordinary time, or one the clocks skip: fold 0 reads it with the offset
        # from before the jump, which moves it forward by the gap.
        return (first,)
    return (first, second) if every_hour else (first,)


def _wall(t: datetime, zone: ZoneInfo) -> datetime:
    return t.astimezone(zone).replace(tzinfo=None)


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"{t!r} has no time zone; logical times are instants")
    return t.astimezone(UTC)


def _check_input(saga: Any, example: dict[str, str], fail: Callable[[str], NoReturn]) -> None:
    """A scheduled run's input is {"logical_time": ...}; the saga's schema must take it."""
    schema = getattr(saga, "input", None)
    if schema is None:
        return
    errors = (schema() if isinstance(schema, type) else schema).validate(example)
    if errors:
        fail(f"starts runs with input {example}, which the saga's input schema refuses: {errors}")
