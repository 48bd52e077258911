"""Read queries of the saga log (one run, filtered pages of runs, a run's history), and retention.

Every query here is served by an index or by a scan bounded by what it looks for, so it
stays fast with millions of events: a run's events by `events_run` (run_id; its few rows sorted by id); pages of
runs by the (…, created_at, id) indexes, newest first; the step filter by the steps key or
`steps_name_status`; the error filter only reads rows that have an error
(`runs_errored`, `steps_errored`); finished-time ranges and pruning by `runs_finished`.

`gauges` counts what a metrics scrape shows (runs by status, waiting steps, the earliest
due time of each sweep) by the status indexes and the sweeps' partial ones.

`prune_finished` is the one write: it lives here because it is the history's retention,
and reads the same indexes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from saga.clock import aware
from saga.errors import RunNotFound
from saga.run import Role, Run, RunStatus, StepStatus
from saga.store.database import Database
from saga.store.rows import (
    decode_cursor,
    encode_cursor,
    event_view,
    run_view,
    step_view,
    to_run,
    to_step,
)
from saga.store.tables import events, runs, steps

# An error search first tests this many of the newest candidate runs per row it returns.
ERROR_WINDOW_PER_ROW = 20
# Runs the gauges count by status: the unfinished, and the failed (they wait for a person).
GAUGED_STATUSES = (RunStatus.RUNNING, RunStatus.COMPENSATING, RunStatus.FAILED)
# Each kind of the sweeper's work: its due time, in the terms of the partial index it reads.
SWEPT: dict[str, tuple[sa.Column, tuple[sa.ColumnElement[bool], ...]]] = {
    "redispatch": (steps.c.redispatch_at, (steps.c.status == StepStatus.QUEUED,)),
    "lease": (steps.c.lease_expires_at, (steps.c.status == StepStatus.RUNNING,)),
    "retry": (steps.c.next_attempt_at, (steps.c.status == StepStatus.RETRY_WAIT,)),
    "wakeup": (steps.c.wake_at, (steps.c.status == StepStatus.WAITING,
                                 steps.c.wake_at.is_not(None))),
    "schedule_to_start": (steps.c.start_by, (steps.c.status == StepStatus.QUEUED,
                                             steps.c.start_by.is_not(None))),
    "deadline": (runs.c.deadline_at, (runs.c.status == RunStatus.RUNNING,
                                      runs.c.deadline_at.is_not(None))),
}


@dataclass(frozen=True)
class Gauges:
    """What the log holds at `at`, for metrics (saga.observe.metrics reads it per scrape)."""

    at: datetime
    runs: dict[tuple[str, int, str], int]  # (saga, version, status) -> runs, GAUGED_STATUSES
    parked: dict[tuple[str, int], int]  # (saga, version) -> runs waiting for a person or version
    waiting: dict[tuple[str, int, str], int]  # (saga, version, step) -> running runs waiting there
    due: dict[str, datetime | None]  # each kind of sweep work -> its earliest due time, if any


class Reads(Database):
    """Mixed into Store: everything the API and CLI read."""

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run with its steps and compensations, as plain data."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
            if row is None:
                raise RunNotFound(f"no run has id {run_id!r}")
            step_rows = conn.execute(sa.select(steps).where(steps.c.run_id == run_id).order_by(
                steps.c.queued_at, steps.c.name)).mappings().all()
        view = run_view(row)
        view["steps"] = [step_view(s) for s in step_rows if s["role"] == Role.FORWARD]
        view["compensations"] = [step_view(s) for s in step_rows if s["role"] == Role.COMPENSATE]
        return view

    def load_run(self, run_id: str) -> Run:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
            if row is None:
                raise RunNotFound(f"no run has id {run_id!r}")
            step_rows = conn.execute(sa.select(steps).where(steps.c.run_id == run_id)).mappings()
            return to_run(row, [to_step(s) for s in step_rows])

    def list_runs(self, saga: str | None = None, status: str | None = None, limit: int = 50,
                  cursor: str | None = None, *, version: int | None = None,
                  started_after: datetime | None = None, started_before: datetime | None = None,
                  finished_after: datetime | None = None,
                  finished_before: datetime | None = None, step: str | None = None,
                  step_status: str | None = None,
                  error: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Runs newest first, one page; the second value is the next page's cursor.

        The filters combine (AND). Time ranges are half-open: `started_after <= created_at
        < started_before`, and the same for `finished_*` on `finished_at` (a run still
        going matches no finished range). `step` keeps runs with a forward step of that
        name (in `step_status`, if given); `error` keeps runs whose error, or any of whose
        steps' or compensations' errors, contains the text, ignoring case. Raises
        ValueError for a cursor this store did not make.

            page, cursor = store.list_runs("charge", "failed", error="declined",
                                           started_after=datetime(2025, 5, 1, 3, tzinfo=UTC))
        """
        query = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1)
        if saga:
            query = query.where(runs.c.saga == saga)
        if version is not None:
            query = query.where(runs.c.version == version)
        if status:
            query = query.where(runs.c.status == status)
        if started_after is not None:
            query = query.where(runs.c.created_at >= aware(started_after))
        if started_before is not None:
            query = query.where(runs.c.created_at < aware(started_before))
        if finished_after is not None:
            query = query.where(runs.c.finished_at >= aware(finished_after))
        if finished_before is not None:
            query = query.where(runs.c.finished_at < aware(finished_before))
        if step:
            # Probed by the steps key per run, or (for a rare step) found by steps_name_status.
            has_step = sa.exists().where(steps.c.run_id == runs.c.id, steps.c.name == step,
                                         steps.c.role == str(Role.FORWARD))
            if step_status:
                has_step = has_step.where(steps.c.status == step_status)
            query = query.where(has_step)
        if cursor:
            at, run_id = decode_cursor(cursor)
            # A row comparison is one index condition; the OR of two comparisons is not.
            query = query.where(sa.tuple_(runs.c.created_at, runs.c.id) < (aware(at), run_id))
        rows: Sequence[sa.RowMapping]
        with self.engine.connect() as conn:
            if error:
                rows = _search_errors(conn, query, error, limit)
            else:
                rows = conn.execute(query).mappings().all()
        page = [run_view(r) for r in rows[:limit]]
        more = len(rows) > limit
        return page, encode_cursor(rows[limit - 1]) if more and page else None

    def events(self, run_id: str, step: str | None = None,
               type: str | None = None) -> list[dict[str, Any]]:
        """The run's history, oldest first; `step` and `type` narrow it.

        `type` is an event type (`step.failed`) or a family of them: `compensation` or
        `compensation.` both give every `compensation.*` event.
        """
        query = sa.select(events).where(events.c.run_id == run_id).order_by(events.c.id)
        if step:
            query = query.where(events.c.step == step)
        if type:
            family = type if type.endswith(".") else f"{type}."
            query = query.where(sa.or_(events.c.type == type,
                                       events.c.type.startswith(family, autoescape=True)))
        with self.engine.connect() as conn:
            if conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() is None:
                raise RunNotFound(f"no run has id {run_id!r}")
            rows = conn.execute(query).mappings().all()
        return [event_view(r) for r in rows]

    def active_versions(self) -> dict[tuple[str, int], int]:
        """How many unfinished runs each (saga, version) has."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs.c.saga, runs.c.version, sa.func.count())
                                .where(runs.c.status.in_([RunStatus.RUNNING, RunStatus.COMPENSATING]))
                                .group_by(runs.c.saga, runs.c.version)).all()
        return {(r[0], r[1]): r[2] for r in rows}

    def gauges(self) -> Gauges:
        """What a metrics scrape shows of the log now, each count read by an index on status
        (bounded by the unfinished and failed runs) and each due time by its sweep's partial
        index: cheap enough for every scrape."""
        parked = runs.c.parked.is_not(None).label("parked")
        by_status = (sa.select(runs.c.saga, runs.c.version, runs.c.status, parked, sa.func.count())
                     .where(runs.c.status.in_(GAUGED_STATUSES))
                     .group_by(runs.c.saga, runs.c.version, runs.c.status, parked))
        waiting = (sa.select(runs.c.saga, runs.c.version, steps.c.name, sa.func.count())
                   .join(steps, steps.c.run_id == runs.c.id)
                   .where(runs.c.status == RunStatus.RUNNING, steps.c.status == StepStatus.WAITING)
                   .group_by(runs.c.saga, runs.c.version, steps.c.name))
        earliest = sa.select(*(sa.select(sa.func.min(column)).where(*where).scalar_subquery()
                               .label(work) for work, (column, where) in SWEPT.items()))
        with self.engine.connect() as conn:
            now = self.now(conn)
            counted = conn.execute(by_status).all()
            waits = conn.execute(waiting).all()
            due = conn.execute(earliest).mappings().one()
        found = Gauges(now, {}, {}, {(r[0], r[1], r[2]): r[3] for r in waits},
                       {work: aware(due[work]) for work in SWEPT})
        for saga, version, status, is_parked, count in counted:
            key = (saga, version, status)
            found.runs[key] = found.runs.get(key, 0) + count
            if is_parked:
                found.parked[(saga, version)] = found.parked.get((saga, version), 0) + count
        return found

    # -- retention ----------------------------------------------------------------------

    def prune_finished(self, older_than: datetime, batch: int = 500,
                       include_failed: bool = False) -> int:
        """Delete up to `batch` finished runs that ended before `older_than`; return how many.

        Their steps and events go with them (ON DELETE CASCADE). A `failed` run waits for a
        person to retry it, so it stays unless `include_failed`. Call it again while it
        returns `batch`; runs locked by a transaction right now are skipped, not waited for.
        Pruning a run also frees its idempotency key.

            while store.prune_finished(now - timedelta(days=30), batch=500) == 500:
                pass
        """
        statuses = [str(s) for s in RunStatus
                    if s.terminal and (include_failed or s is not RunStatus.FAILED)]
        old = runs.alias("old")
        doomed = (sa.select(old.c.id)
                  .where(old.c.status.in_(statuses), old.c.finished_at < aware(older_than))
                  .order_by(old.c.finished_at).limit(batch))
        with self.engine.begin() as conn:
            if conn.dialect.name != "sqlite":  # SQLite's one writer needs no row locks
                doomed = doomed.with_for_update(skip_locked=True)
            return conn.execute(runs.delete().where(runs.c.id.in_(doomed))).rowcount


def _search_errors(conn: sa.Connection, query: sa.Select, text: str,
                   limit: int) -> Sequence[sa.RowMapping]:
    """The page of `query` (newest first, `limit` + 1 rows) whose runs match `text`.

    A common text matches among the newest runs: test those one by one, a bounded window
    of them. Only when the window holds too few matches, gather every run with a
    matching error instead; that reads only rows that have an error (partial indexes), so
    its cost follows how many things failed, never how many runs there are.
    """
    newest = query.limit(ERROR_WINDOW_PER_ROW * (limit + 1)).subquery("newest")
    steps_match = sa.exists().where(steps.c.run_id == newest.c.id, steps.c.error.is_not(None),
                                    steps.c.error.icontains(text, autoescape=True))
    first = (sa.select(newest)
             .where(sa.or_(newest.c.error.icontains(text, autoescape=True), steps_match))
             .order_by(newest.c.created_at.desc(), newest.c.id.desc()).limit(limit + 1))
    rows = conn.execute(first).mappings().all()
    if len(rows) > limit:
        return rows
    return conn.execute(query.where(runs.c.id.in_(_errored(text)))).mappings().all()


def _errored(text: str) -> sa.CompoundSelect:
    """Ids of runs whose own error, or one of whose steps' errors, holds `text` (any case)."""
    errored = runs.alias("errored")
    return sa.union(
        sa.select(errored.c.id).where(errored.c.error.is_not(None),
                                      errored.c.error.icontains(text, autoescape=True)),
        sa.select(steps.c.run_id).where(steps.c.error.is_not(None),
                                        steps.c.error.icontains(text, autoescape=True)))
