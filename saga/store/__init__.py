"""The saga log: the only package in `saga` that speaks SQL.

`tables` holds every table; `transaction` one run's locked transaction (start, advance,
claim, signal, park); `sweeps` what the sweeper finds due; `reads` what the API and CLI
read; `schedules` cron firings and backfills; `rows` turns rows into plain values, so no
ORM object leaves this package.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import sqlalchemy as sa

from saga.clock import Clock
from saga.errors import RunBusy, RunNotFound
from saga.run import PendingSignal, Role, StepStatus
from saga.store.database import DatabaseError, Outage, unreachable
from saga.store.insights import Insights
from saga.store.reads import Reads
from saga.store.rows import to_run, to_step
from saga.store.schedules import ScheduleStore
from saga.store.search import RunSearch
from saga.store.sweeps import Due, Sweeps
from saga.store.tables import metadata, runs, signals, steps
from saga.store.transaction import RunTransaction

__all__ = ["Store", "RunTransaction", "Due", "metadata", "DatabaseError", "Outage", "unreachable"]


class Store(Sweeps, Reads, ScheduleStore, RunSearch, Insights):
    """Reads and writes the saga log. Safe to share between threads; re-opened after fork."""

    def __init__(self, url: str, clock: Clock | None = None, redispatch_s: float = 10.0,
                 echo: bool = False) -> None:
        super().__init__(url, clock, echo)
        self.redispatch = timedelta(seconds=redispatch_s)

    @contextmanager
    def transaction(self, run_id: str | None = None, *, skip_locked: bool = False,
                    signals: bool = True) -> Iterator[RunTransaction]:
        """One commit: with `run_id`, that run locked for update; without, a run to insert.

        `RunNotFound` for an unknown run; `RunBusy` if `skip_locked` and another holds it.
        `signals=False` skips reading pending signals (for a saga that declares none).
        """
        with self.begin() as conn:
            if run_id is None:
                yield RunTransaction(conn, self.now(conn), None, self.redispatch, self.is_sqlite)
                return
            row = conn.execute(sa.select(runs, self.clock_column()).where(runs.c.id == run_id)
                               .with_for_update(skip_locked=skip_locked, of=runs)
                               ).mappings().first()
            if row is None:
                if skip_locked and self._exists(conn, run_id):
                    raise RunBusy(f"run {run_id} is locked by another transaction")
                raise RunNotFound(f"no run has id {run_id!r}")
            step_rows = conn.execute(sa.select(steps).where(steps.c.run_id == run_id)).mappings()
            pending = self._pending_signals(conn, run_id) if signals else ()
            run = to_run(row, [to_step(s) for s in step_rows], pending)
            yield RunTransaction(conn, self.clock.read(row["db_now"]), run, self.redispatch,
                                 self.is_sqlite)

    def heartbeat(self, run_id: str, step: str, role: Role, fence: int, lease_s: float) -> bool:
        """Extend a lease; False means the fence is stale and the worker must stop."""
        with self.begin() as conn:
            now = self.now(conn)
            result = conn.execute(
                steps.update()
                .where(steps.c.run_id == run_id, steps.c.name == step, steps.c.role == str(role),
                       steps.c.fence == fence, steps.c.status == StepStatus.RUNNING)
                .values(lease_expires_at=now + timedelta(seconds=lease_s)))
            return result.rowcount == 1

    def _exists(self, conn: sa.Connection, run_id: str) -> bool:
        return conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() is not None

    def _pending_signals(self, conn: sa.Connection, run_id: str) -> tuple[PendingSignal, ...]:
        rows = conn.execute(sa.select(signals.c.id, signals.c.name, signals.c.payload).where(
            signals.c.run_id == run_id, signals.c.consumed_at.is_(None)).order_by(signals.c.id))
        return tuple(PendingSignal(r.id, r.name, r.payload) for r in rows)
