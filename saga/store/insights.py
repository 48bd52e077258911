"""Aggregates the console reads: runs per minute, step and version statistics, stuck runs,
backfill progress.

Each window query reads only the window, through an index on its time column: runs
started by `runs_created`, runs ended by `runs_finished`, steps ended by `steps_finished`,
so its cost follows what happened in the last hour or day, never the whole history. The
stuck counts read the unfinished and failed runs by `runs_status_created` and the steps in
doubt by the partial `steps_in_doubt`. PostgreSQL computes percentiles (`percentile_cont`);
SQLite, the embedded store, returns the window's durations and Python ranks them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from saga.clock import aware
from saga.run import RunStatus, StepStatus
from saga.store.database import Database
from saga.store.schedules import backfill_items, backfills
from saga.store.tables import When, runs, steps

UNFINISHED = (RunStatus.RUNNING, RunStatus.COMPENSATING)
# A step ends one of these ways; `cancelled` never ran, so it has no duration or failure.
STEP_ENDS = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.PARKED)
FAILED_STEP = (StepStatus.FAILED, StepStatus.PARKED)
# A backfill's run that ended without succeeding.
UNSUCCESSFUL = (RunStatus.COMPENSATED, RunStatus.FAILED, RunStatus.CANCELLED)


@dataclass(frozen=True)
class RunsPerMinute:
    """Runs started and ended in each minute of a window, oldest minute first."""

    start: datetime  # the first minute's start
    minutes: int
    started: dict[str, list[int]]  # status now -> runs started in each minute
    finished: dict[str, list[int]]  # terminal status -> runs that ended in each minute


@dataclass(frozen=True)
class StepStats:
    """How one step (or its compensation) of a saga did in a window, by the steps that ended."""

    saga: str
    step: str
    role: str
    ended: int  # succeeded, failed or parked in the window
    failed: int  # of those, failed or parked
    failed_attempts: int  # every attempt that failed, those retried included
    mean_s: float | None  # of the attempts that succeeded, claim to end
    max_s: float | None


@dataclass(frozen=True)
class VersionStats:
    """One saga version: runs unfinished now, and how the runs that ended in a window did."""

    in_flight: int = 0
    finished: int = 0
    succeeded: int = 0
    p50_s: float | None = None  # duration of the runs that succeeded, start to end
    p99_s: float | None = None

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.finished if self.finished else None


@dataclass(frozen=True)
class Stuck:
    """Runs waiting for a person: parked, failed, or with a step in doubt."""

    parked: int
    failed: int
    in_doubt: int


@dataclass(frozen=True)
class BackfillProgress:
    """A backfill and what its runs came to."""

    id: str
    saga: str
    created_at: datetime
    created_by: str | None
    from_at: datetime | None
    to_at: datetime | None
    max_running: int
    existing: int  # asked for, but a run had the key
    total: int
    started: int
    succeeded: int
    failed: int  # ended compensated, failed or cancelled
    refused: int  # could not start
    failed_runs: list[dict[str, Any]] = field(default_factory=list)  # filled by `backfill`

    @property
    def pending(self) -> int:
        return self.total - self.started - self.refused

    @property
    def running(self) -> int:
        return self.started - self.succeeded - self.failed

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def done(self) -> bool:
        return self.pending == 0 and self.running == 0


class Insights(Database):
    """Mixed into Store: the console's aggregates over a recent window."""

    def runs_per_minute(self, minutes: int = 60) -> RunsPerMinute:
        """Runs started in each of the last `minutes` minutes (by their status now), and
        runs ended in each (by how they ended); the current minute is the last."""
        with self.engine.connect() as conn:
            now = self.now(conn)
            start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
            started = conn.execute(self._per_minute(runs.c.created_at, start)).all()
            ended = conn.execute(self._per_minute(runs.c.finished_at, start)
                                 .where(runs.c.finished_at.is_not(None))).all()
        return RunsPerMinute(start, minutes, _spread(started, minutes),
                             _spread(ended, minutes))

    def step_stats(self, window: timedelta) -> list[StepStats]:
        """Each (saga, step, role) with a step that ended in the last `window`."""
        ok = steps.c.status == StepStatus.SUCCEEDED
        took = sa.case((ok, self._seconds(steps.c.finished_at, steps.c.started_at)))
        failed_attempts = steps.c.attempt - sa.case((ok, 1), else_=0)
        with self.engine.connect() as conn:
            since = self.now(conn) - window
            rows = conn.execute(
                sa.select(runs.c.saga, steps.c.name, steps.c.role, sa.func.count(),
                          sa.func.count(sa.case((steps.c.status.in_(FAILED_STEP), 1))),
                          sa.func.coalesce(sa.func.sum(failed_attempts), 0),
                          sa.func.avg(took), sa.func.max(took))
                .select_from(steps.join(runs, runs.c.id == steps.c.run_id))
                .where(steps.c.finished_at >= since, steps.c.status.in_(STEP_ENDS))
                .group_by(runs.c.saga, steps.c.name, steps.c.role)).all()
        return [StepStats(saga, step, role, ended, failed, int(attempts), _float(mean),
                          _float(most))
                for saga, step, role, ended, failed, attempts, mean, most in rows]

    def version_stats(self, window: timedelta, saga: str | None = None,
                      version: int | None = None) -> dict[tuple[str, int], VersionStats]:
        """Each (saga, version) with runs unfinished now or ended in the last `window`;
        `saga` and `version` narrow it to one saga or one version."""
        key = (runs.c.saga, runs.c.version)
        succeeded = runs.c.status == RunStatus.SUCCEEDED
        took = self._seconds(runs.c.finished_at, runs.c.created_at)
        only = [c == v for c, v in zip(key, (saga, version), strict=True) if v is not None]
        with self.engine.connect() as conn:
            since = self.now(conn) - window
            ended = (runs.c.finished_at >= since, *only)
            in_flight = conn.execute(sa.select(*key, sa.func.count())
                                     .where(runs.c.status.in_(UNFINISHED), *only)
                                     .group_by(*key)).all()
            counts = conn.execute(sa.select(*key, sa.func.count(),
                                            sa.func.count(sa.case((succeeded, 1))))
                                  .where(*ended).group_by(*key)).all()
            durations = self._percentiles(conn, key, took, (*ended, succeeded))
        found: dict[tuple[str, int], dict[str, Any]] = defaultdict(dict)
        for name, number, count in in_flight:
            found[name, number]["in_flight"] = count
        for name, number, count, ok in counts:
            found[name, number].update(finished=count, succeeded=ok)
        for version_key, (p50, p99) in durations.items():
            found[version_key].update(p50_s=p50, p99_s=p99)
        return {version_key: VersionStats(**values) for version_key, values in found.items()}

    def stuck(self) -> Stuck:
        """Runs parked, failed, and unfinished with a step in doubt, counted now."""
        unfinished = runs.c.status.in_(UNFINISHED)
        in_doubt = (sa.select(sa.func.count(sa.distinct(steps.c.run_id)))
                    .select_from(steps.join(runs, runs.c.id == steps.c.run_id))
                    .where(steps.c.in_doubt, unfinished))
        with self.engine.connect() as conn:
            parked = conn.execute(sa.select(sa.func.count()).where(
                unfinished, runs.c.parked.is_not(None))).scalar_one()
            failed = conn.execute(sa.select(sa.func.count()).where(
                runs.c.status == RunStatus.FAILED)).scalar_one()
            doubts = conn.execute(in_doubt).scalar_one()
        return Stuck(parked, failed, doubts)

    # -- backfills --------------------------------------------------------------------------

    def backfill_progress(self, limit: int = 20) -> list[BackfillProgress]:
        """The newest `limit` backfills, newest first, each with what its runs came to."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(backfills).order_by(backfills.c.created_at.desc(),
                                                              backfills.c.id)
                                .limit(limit)).mappings().all()
            counted = self._backfill_counts(conn, [r["id"] for r in rows])
        return [_progress(row, counted.get(row["id"], (0, 0, 0, 0, 0))) for row in rows]

    def backfill(self, backfill_id: str, failures: int = 50) -> BackfillProgress | None:
        """One backfill's progress and up to `failures` of its runs that did not succeed."""
        items = backfill_items.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(backfills).where(backfills.c.id == backfill_id)
                               ).mappings().first()
            if row is None:
                return None
            counted = self._backfill_counts(conn, [backfill_id])
            failed = conn.execute(
                sa.select(runs.c.id, runs.c.status, runs.c.error, runs.c.finished_at,
                          items.key)
                .select_from(backfill_items.join(runs, runs.c.id == items.run_id))
                .where(items.backfill_id == backfill_id, runs.c.status.in_(UNSUCCESSFUL))
                .order_by(items.seq).limit(failures)).mappings().all()
        progress = _progress(row, counted.get(backfill_id, (0, 0, 0, 0, 0)))
        progress.failed_runs.extend(
            {"id": r["id"], "status": r["status"], "error": r["error"], "key": r["key"],
             "finished_at": aware(r["finished_at"])} for r in failed)
        return progress

    def _backfill_counts(self, conn: sa.Connection,
                         ids: Sequence[str]) -> dict[str, tuple[int, int, int, int, int]]:
        """(total, started, succeeded, unsuccessful, refused) items of each backfill."""
        if not ids:
            return {}
        items = backfill_items.c
        status = runs.c.status
        rows = conn.execute(
            sa.select(items.backfill_id, sa.func.count(), sa.func.count(items.run_id),
                      sa.func.count(sa.case((status == RunStatus.SUCCEEDED, 1))),
                      sa.func.count(sa.case((status.in_(UNSUCCESSFUL), 1))),
                      sa.func.count(items.error))
            .select_from(backfill_items.outerjoin(runs, runs.c.id == items.run_id))
            .where(items.backfill_id.in_(ids)).group_by(items.backfill_id)).all()
        return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    # -- the dialects' differences ---------------------------------------------------------

    def _seconds(self, later: Any, earlier: Any) -> sa.ColumnElement[float]:
        """Seconds from `earlier` to `later`, as a float column."""
        if self.is_sqlite:
            return (sa.func.julianday(later) - sa.func.julianday(earlier)) * 86400.0
        # date_part is a double; EXTRACT is a numeric on PostgreSQL 14+, slower to sum.
        return sa.func.date_part("epoch", later - earlier, type_=sa.Float)

    def _per_minute(self, column: sa.Column, start: datetime) -> sa.Select:
        """(minute index from `start`, status, runs) of the runs whose `column` is in it."""
        since = sa.literal(start, When)
        offset = self._seconds(column, since) / 60
        # PostgreSQL rounds a cast to integer (59.7 -> 60); SQLite truncates (non-negative here).
        minute = sa.cast(offset, sa.Integer) if self.is_sqlite else sa.func.floor(offset)
        return (sa.select(minute.label("minute"), runs.c.status, sa.func.count())
                .where(column >= since).group_by(minute, runs.c.status))

    def _percentiles(self, conn: sa.Connection, key: Sequence[sa.Column], took: Any,
                     where: Sequence[Any]) -> dict[Any, tuple[float | None, float | None]]:
        """The median and 99th percentile of `took` per `key`, over the rows `where` holds."""
        if not self.is_sqlite:
            rows = conn.execute(sa.select(
                *key, *(sa.func.percentile_cont(p).within_group(took) for p in (0.5, 0.99)))
                .where(*where).group_by(*key)).all()
            return {tuple(r[:-2]): (_float(r[-2]), _float(r[-1])) for r in rows}
        values: dict[Any, list[float]] = defaultdict(list)
        for row in conn.execute(sa.select(*key, took).where(*where)):
            values[tuple(row[:-1])].append(float(row[-1]))
        return {k: (percentile(v, 0.5), percentile(v, 0.99)) for k, v in values.items()}


def percentile(values: list[float], fraction: float) -> float | None:
    """The `fraction` percentile of `values`, interpolated as PostgreSQL's percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    at = fraction * (len(ordered) - 1)
    low, high = math.floor(at), math.ceil(at)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _spread(rows: Sequence[Any], minutes: int) -> dict[str, list[int]]:
    """(minute, status, count) rows as status -> a count per minute."""
    found: dict[str, list[int]] = {}
    for minute, status, count in rows:
        index = int(minute)
        if 0 <= index < minutes:  # a clock a little ahead of the database's: dropped
            found.setdefault(status, [0] * minutes)[index] += count
    return found


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _progress(row: Any, counts: tuple[int, int, int, int, int]) -> BackfillProgress:
    total, started, succeeded, failed, refused = counts
    return BackfillProgress(
        id=row["id"], saga=row["saga"], created_at=aware(row["created_at"]),
        created_by=row["created_by"], from_at=aware(row["from_at"]), to_at=aware(row["to_at"]),
        max_running=row["max_running"], existing=row["existing"], total=total, started=started,
        succeeded=succeeded, failed=failed, refused=refused)
