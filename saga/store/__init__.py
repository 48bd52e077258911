"""The saga log's writes: start, claim, heartbeat, advance under a lock, and due work.

`saga.store` is the only package in `saga` that speaks SQL (tables in `tables`, reads in
`reads`, row conversion in `rows`).

Every state change is one transaction with its event rows. PostgreSQL locks the run row
(`FOR UPDATE` to advance, `FOR SHARE` to claim) and its clock times leases; SQLite, the
embedded default, takes its single write lock up front (`BEGIN IMMEDIATE`) instead, so
the lock clauses and `SKIP LOCKED` fall away there. Rows become plain values here; no
ORM object leaves this module.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from saga.errors import IdempotencyConflict, RunNotFound
from saga.state import Kind, PendingSignal, Run, RunStatus, StepStatus, transitions
from saga.store.reads import Reads
from saga.store.rows import aware, to_run, to_step
from saga.store.schedules import ScheduleStore
from saga.store.tables import events, metadata, runs, signals, steps

__all__ = ["Store", "RunTransaction", "Claim", "Due", "Conflict", "ShapeChanged", "metadata",
           "runs", "steps", "events", "signals"]


class Conflict(Exception):
    """A row changed under a transaction that read it locked; the change is abandoned."""


class ShapeChanged(Exception):
    """The run was started on a definition of another shape under the same version."""

    def __init__(self, stored: str, loaded: str) -> None:
        super().__init__(f"the definition changed under this version (started as shape "
                         f"{stored}, loaded is {loaded}): give the new shape a new version")


@dataclass(frozen=True)
class Claim:
    """What a worker holds after claiming a step: its attempt, fence and inputs."""

    run_id: str
    step: str
    kind: Kind
    attempt: int
    fence: int
    saga: str
    version: int
    input: Any
    outputs: dict[str, Any]
    lease_expires_at: datetime


@dataclass(frozen=True)
class Due:
    """One piece of work a sweep found due."""

    run_id: str
    saga: str
    version: int
    step: str
    kind: Kind
    fence: int


class Store(Reads, ScheduleStore):
    """Reads and writes the saga log. Safe to share between threads; re-opened after fork."""

    def __init__(self, url: str, redispatch_s: float = 10.0, echo: bool = False,
                 clock_offset_file: str = "") -> None:
        self.url = url
        self.redispatch = timedelta(seconds=redispatch_s)
        self.clock_offset_file = clock_offset_file
        self._echo = echo
        self._engine: sa.Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def engine(self) -> sa.Engine:
        # A forked worker child must not share its parent's connections.
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    self._engine = _make_engine(self.url, self._echo)
                    self._pid = os.getpid()
        return self._engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- writes ---------------------------------------------------------------------

    def now(self, conn: sa.Connection | None = None) -> datetime:
        """The database's clock (SQLite: this machine's), which times every lease and wait."""
        if self.is_sqlite:
            return self._shifted(datetime.now(UTC))
        if conn is None:
            with self.engine.connect() as own:
                return self.now(own)
        return self._shifted(conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one())

    def _clock_column(self) -> sa.ColumnElement:
        """The clock as a column, to read it in a query the caller makes anyway."""
        if self.is_sqlite:
            return sa.literal(None).label("db_now")
        return sa.func.clock_timestamp().label("db_now")

    def _shifted(self, db_now: datetime | None) -> datetime:
        now = aware(db_now) if db_now is not None else datetime.now(UTC)
        return now + self._offset() if self.clock_offset_file else now

    def _offset(self) -> timedelta:
        # The injectable clock of the tests: every process reads the same file of seconds.
        try:
            with open(self.clock_offset_file) as f:
                return timedelta(seconds=float(f.read().strip() or 0))
        except FileNotFoundError:
            return timedelta(0)

    def create_run(self, build: Callable[[datetime], tuple[Run, Any]], shape: str,
                   idempotency_key: str | None,
                   request_hash: str | None, actor: str | None = None) -> tuple[str, bool, Any]:
        """Insert the run `build(now)` makes, with its first steps: (run id, created, extra).

        `build` returns the run and anything to hand back (the commands to publish). With
        an idempotency key already used for this saga, the existing run's id comes back
        (created False), or `IdempotencyConflict` if its request differed.
        """
        with self.engine.begin() as conn:
            now = self.now(conn)
            run, extra = build(now)
            row = dict(id=run.id, saga=run.saga, version=run.version, shape=shape,
                       status=str(run.status), input=run.input, error=None,
                       idempotency_key=idempotency_key, request_hash=request_hash,
                       created_at=now, updated_at=now, deadline_at=run.deadline_at)
            if idempotency_key is None:
                conn.execute(runs.insert().values(row))
            else:
                insert = (postgresql.insert if not self.is_sqlite else sqlite.insert)(runs)
                inserted = conn.execute(insert.values(row).on_conflict_do_nothing(
                    index_elements=["saga", "idempotency_key"]).returning(runs.c.id)).first()
                if inserted is None:
                    existing = conn.execute(sa.select(runs.c.id, runs.c.request_hash).where(
                        runs.c.saga == run.saga, runs.c.idempotency_key == idempotency_key)).one()
                    if existing.request_hash != request_hash:
                        raise IdempotencyConflict(
                            f"Idempotency-Key {idempotency_key!r} was used for run "
                            f"{existing.id} with a different request body")
                    return existing.id, False, extra
            self._write_changes(conn, None, run, now, worker=None, extra=(), actor=actor)
            return run.id, True, extra

    def claim(self, run_id: str, step: str, kind: Kind, owner: str, lease_s: float,
              max_attempts: int, shape: str | None = None) -> Claim | None:
        """Take a queued step under a new fence.

        None means a duplicate or stale message, the run has moved on, or the attempts
        are used up: the caller acknowledges and drops it. `ShapeChanged` means the run
        was started on another definition under the same version.
        """
        wanted = RunStatus.RUNNING if kind is Kind.FORWARD else RunStatus.COMPENSATING
        with self._begin() as conn:
            run = conn.execute(
                sa.select(runs.c.status, runs.c.saga, runs.c.version, runs.c.input,
                          runs.c.shape, runs.c.parked, self._clock_column())
                .where(runs.c.id == run_id).with_for_update(read=True, of=runs)).first()
            if run is None or run.status != wanted:
                return None
            if shape is not None and run.shape != shape:
                raise ShapeChanged(run.shape, shape)
            now = self._shifted(run.db_now)
            expires = now + timedelta(seconds=lease_s)
            row = conn.execute(
                steps.update()
                .where(steps.c.run_id == run_id, steps.c.name == step, steps.c.kind == str(kind),
                       steps.c.attempt < max_attempts,
                       # Only queued: an expired lease is a failed attempt, handled by the
                       # sweeper (retry policy, on_timeout, alert), never silently taken over.
                       steps.c.status == StepStatus.QUEUED)
                .values(status=StepStatus.RUNNING, attempt=steps.c.attempt + 1,
                        fence=steps.c.fence + 1, lease_owner=owner, lease_expires_at=expires,
                        started_at=now, redispatch_at=None, next_attempt_at=None, start_by=None)
                .returning(steps.c.attempt, steps.c.fence)).first()
            if row is None:
                return None
            prefix = "step" if kind is Kind.FORWARD else "compensation"
            conn.execute(events.insert().values(
                run_id=run_id, at=now, type=f"{prefix}.running", step=step, kind=str(kind),
                attempt=row.attempt, worker=owner, data={"fence": row.fence}))
            if run.parked and not conn.execute(sa.select(steps.c.name).where(
                    steps.c.run_id == run_id, steps.c.status == StepStatus.PARKED)).first():
                # Parked for its version, which is loaded again (a parked step waits for
                # a person instead, and keeps the flag).
                conn.execute(runs.update().where(runs.c.id == run_id).values(parked=None))
                self.record_event(conn, run_id, now, "run.unparked", worker=owner)
            outputs = dict(conn.execute(
                sa.select(steps.c.name, steps.c.output).where(
                    steps.c.run_id == run_id, steps.c.kind == str(Kind.FORWARD),
                    steps.c.status == StepStatus.SUCCEEDED)).all())
        return Claim(run_id, step, kind, row.attempt, row.fence, run.saga, run.version,
                     run.input, outputs, expires)

    def park(self, run_id: str, reason: str) -> None:
        """Flag a run no worker here can go on with; kept as it is until that changes."""
        with self._begin() as conn:
            changed = conn.execute(runs.update().where(
                runs.c.id == run_id, sa.or_(runs.c.parked.is_(None), runs.c.parked != reason))
                .values(parked=reason)).rowcount
            if changed:
                self.record_event(conn, run_id, self.now(conn), "run.parked",
                                  data={"reason": reason})

    def heartbeat(self, run_id: str, step: str, kind: Kind, fence: int, lease_s: float) -> bool:
        """Extend a lease; False means the fence is stale and the worker must stop."""
        with self._begin() as conn:
            now = self.now(conn)
            result = conn.execute(
                steps.update()
                .where(steps.c.run_id == run_id, steps.c.name == step, steps.c.kind == str(kind),
                       steps.c.fence == fence, steps.c.status == StepStatus.RUNNING)
                .values(lease_expires_at=now + timedelta(seconds=lease_s)))
            return result.rowcount == 1

    @contextmanager
    def locked_run(self, run_id: str, skip_locked: bool = False,
                   signals: bool = True) -> Iterator[RunTransaction | None]:
        """Lock one run for an advance; yields None when `skip_locked` and it is busy.

        `signals=False` skips reading pending signals (for a saga that declares none).
        """
        with self._begin() as conn:
            query = sa.select(runs, self._clock_column()).where(runs.c.id == run_id)
            row = conn.execute(query.with_for_update(skip_locked=skip_locked, of=runs)
                               ).mappings().first()
            if row is None:
                if skip_locked:
                    yield None
                    return
                raise RunNotFound(f"no run has id {run_id!r}")
            step_rows = conn.execute(sa.select(steps).where(steps.c.run_id == run_id)).mappings()
            pending = self._pending_signals(conn, run_id) if signals else ()
            run = to_run(row, [to_step(s) for s in step_rows], pending)
            yield RunTransaction(self, conn, run, self._shifted(row["db_now"]))

    def _pending_signals(self, conn: sa.Connection, run_id: str) -> tuple[PendingSignal, ...]:
        rows = conn.execute(sa.select(signals.c.id, signals.c.name, signals.c.payload).where(
            signals.c.run_id == run_id, signals.c.consumed_at.is_(None)).order_by(signals.c.id))
        return tuple(PendingSignal(r.id, r.name, r.payload) for r in rows)

    def add_signal(self, tx: RunTransaction, name: str, payload: Any,
                   idempotency_key: str | None, actor: str | None = None) -> tuple[int, bool]:
        """Record a signal for the locked run: (its id, whether it is new).

        The same idempotency key for the same signal returns the first one's id.
        """
        conn = tx.conn
        if idempotency_key is not None:
            existing = conn.execute(sa.select(signals.c.id).where(
                signals.c.run_id == tx.run.id, signals.c.name == name,
                signals.c.idempotency_key == idempotency_key)).scalar()
            if existing is not None:  # the run row is locked, so no one inserts it meanwhile
                return existing, False
        signal_id = conn.execute(signals.insert().values(
            run_id=tx.run.id, name=name, payload=payload, idempotency_key=idempotency_key,
            received_at=tx.now).returning(signals.c.id)).scalar_one()
        tx.run = replace(tx.run, signals=(*tx.run.signals, PendingSignal(signal_id, name, payload)))
        data: dict[str, Any] = {"signal": name, "signal_id": signal_id}
        if actor:
            data["by"] = actor
        self.record_event(conn, tx.run.id, tx.now, "signal.received", data=data)
        return signal_id, True

    def record_event(self, conn: sa.Connection, run_id: str, at: datetime, type: str,
                     step: str | None = None, kind: Kind | None = None, attempt: int | None = None,
                     worker: str | None = None, data: dict[str, Any] | None = None) -> None:
        conn.execute(events.insert().values(run_id=run_id, at=at, type=type, step=step,
                                            kind=str(kind) if kind else None, attempt=attempt,
                                            worker=worker, data=data or {}))

    def _write_changes(self, conn: sa.Connection, old: Run | None, new: Run, now: datetime,
                       worker: str | None, extra: Sequence[dict[str, Any]],
                       actor: str | None = None) -> None:
        for key, step in new.steps.items():
            before = old.steps.get(key) if old else None
            if before == step:
                continue
            values = dict(status=str(step.status), output=step.output, error=step.error,
                          attempt=step.attempt, fence=step.fence, lease_owner=step.lease_owner,
                          queued_at=step.queued_at,
                          finished_at=step.finished_at, next_attempt_at=step.next_attempt_at,
                          lease_expires_at=step.lease_expires_at, start_by=step.start_by,
                          wake_at=step.wake_at, started_at=step.started_at)
            if step.status is StepStatus.QUEUED and (before is None or before.status is not step.status):
                values["redispatch_at"] = now + self.redispatch
            elif step.status is not StepStatus.QUEUED:
                values["redispatch_at"] = None
            if before is None:
                conn.execute(steps.insert().values(run_id=new.id, name=step.name,
                                                   kind=str(step.kind), dispatches=1, **values))
                continue
            done = conn.execute(steps.update().where(
                steps.c.run_id == new.id, steps.c.name == step.name,
                steps.c.kind == str(step.kind), steps.c.status == str(before.status),
                steps.c.fence == before.fence).values(**values))
            if done.rowcount != 1:
                raise Conflict(f"step {step.name} of run {new.id} changed under the lock")
        if old is not None and (old.status, old.error, old.finished_at, old.cancel_requested,
                                old.parked) != (new.status, new.error, new.finished_at,
                                                new.cancel_requested, new.parked):
            conn.execute(runs.update().where(runs.c.id == new.id).values(
                status=str(new.status), error=new.error, finished_at=new.finished_at,
                cancel_requested=new.cancel_requested, parked=new.parked, updated_at=now))
        before = {s.id: s for s in old.signals} if old else {}
        for signal in new.signals:
            if signal.consumed_by and before.get(signal.id) != signal:
                conn.execute(signals.update().where(signals.c.id == signal.id).values(
                    consumed_by=signal.consumed_by, consumed_at=now))
        history = [*extra, *transitions(old, new)]
        if actor:  # who asked for this change (an API token's name), on each entry it made
            history = [{**h, "data": {**(h.get("data") or {}), "by": actor}} for h in history]
        if history:
            conn.execute(events.insert(), [
                dict(run_id=new.id, at=now, worker=worker, step=h.get("step"), kind=h.get("kind"),
                     attempt=h.get("attempt"), type=h["type"], data=h.get("data") or {})
                for h in history])

    # -- sweeps -----------------------------------------------------------------------

    def redispatch_due(self, limit: int) -> list[Due]:
        """Queued steps not claimed in time: push their next check back and return them."""
        with self._begin() as conn:
            now = self.now(conn)
            due = conn.execute(
                sa.select(steps.c.run_id, steps.c.name, steps.c.kind, steps.c.fence,
                          steps.c.dispatches, runs.c.saga, runs.c.version)
                .join(runs, runs.c.id == steps.c.run_id)
                .where(steps.c.status == StepStatus.QUEUED, steps.c.redispatch_at <= now)
                .order_by(steps.c.redispatch_at).limit(limit)
                .with_for_update(of=steps, skip_locked=True)).all()
            found = []
            for row in due:
                # Back off, so a long broker backlog is not doubled by our own republishing.
                wait = self.redispatch * min(2 ** row.dispatches, 32)
                conn.execute(steps.update().where(
                    steps.c.run_id == row.run_id, steps.c.name == row.name,
                    steps.c.kind == row.kind).values(
                        redispatch_at=now + wait, dispatches=steps.c.dispatches + 1))
                found.append(Due(row.run_id, row.saga, row.version, row.name, Kind(row.kind),
                                 row.fence))
            return found

    def redispatch_failed(self, due: Due) -> None:
        """The broker refused a republish: try again after the base wait, not a longer one."""
        with self._begin() as conn:
            conn.execute(steps.update().where(
                steps.c.run_id == due.run_id, steps.c.name == due.step,
                steps.c.kind == str(due.kind), steps.c.fence == due.fence,
                steps.c.status == StepStatus.QUEUED).values(
                    redispatch_at=self.now(conn) + self.redispatch,
                    dispatches=sa.case((steps.c.dispatches > 1, steps.c.dispatches - 1),
                                       else_=1)))

    def leases_expired(self, limit: int) -> list[Due]:
        """Running steps whose lease ran out: their worker died or froze."""
        return self._due(steps.c.lease_expires_at, StepStatus.RUNNING, limit, strictly=True)

    def retries_due(self, limit: int) -> list[Due]:
        """Steps whose wait before the next attempt is over."""
        return self._due(steps.c.next_attempt_at, StepStatus.RETRY_WAIT, limit)

    def queue_timeouts_due(self, limit: int) -> list[Due]:
        """Queued steps no worker took before their schedule-to-start limit."""
        return self._due(steps.c.start_by, StepStatus.QUEUED, limit)

    def wakeups_due(self, limit: int) -> list[Due]:
        """Waiting steps whose timer is due or whose signal wait timed out."""
        return self._due(steps.c.wake_at, StepStatus.WAITING, limit)

    def deadlines_due(self, limit: int) -> list[str]:
        """Runs still going forward past their saga's deadline."""
        with self.engine.connect() as conn:
            now = self.now(conn)
            return list(conn.execute(
                sa.select(runs.c.id).where(runs.c.status == RunStatus.RUNNING,
                                           runs.c.deadline_at <= now)
                .order_by(runs.c.deadline_at).limit(limit)).scalars())

    def _due(self, due_at: sa.Column, status: StepStatus, limit: int,
             strictly: bool = False) -> list[Due]:
        with self.engine.connect() as conn:
            now = self.now(conn)
            rows = conn.execute(
                sa.select(steps.c.run_id, steps.c.name, steps.c.kind, steps.c.fence,
                          runs.c.saga, runs.c.version)
                .join(runs, runs.c.id == steps.c.run_id)
                .where(steps.c.status == status, (due_at < now) if strictly else (due_at <= now))
                .order_by(due_at).limit(limit)).all()
        return [Due(r.run_id, r.saga, r.version, r.name, Kind(r.kind), r.fence) for r in rows]

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn


class RunTransaction:
    """A run locked for update: read `run` and `now`, then `save` the advanced run once."""

    def __init__(self, store: Store, conn: sa.Connection, run: Run, now: datetime) -> None:
        self.store, self.conn, self.run, self.now = store, conn, run, now

    def save(self, new: Run, worker: str | None = None,
             extra: Sequence[dict[str, Any]] = (), actor: str | None = None) -> None:
        self.store._write_changes(self.conn, self.run, new, self.now, worker, extra, actor)
        self.run = new

    def record(self, type: str, **fields: Any) -> None:
        self.store.record_event(self.conn, self.run.id, self.now, type, **fields)


def _make_engine(url: str, echo: bool) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, echo=echo, connect_args={"check_same_thread": False,
                                                               "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            # SQLite has no row locks: take the one write lock before reading.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # Pre-ping costs a round trip per checkout, but without it a database restart fails
    # every in-flight commit on a dead pooled connection, and each step waits out its lease.
    return sa.create_engine(url, echo=echo, pool_pre_ping=True, pool_recycle=1800,
                            pool_size=5, max_overflow=10)


