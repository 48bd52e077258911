"""The saga log: the only package in `saga` that speaks SQL.

`tables` holds every table; `transaction` one run's locked transaction (start, advance,
claim, signal, park), whose statements `run_sql` builds once and sends; `sweeps` what the sweeper finds due; `reads` what the API and CLI
read; `schedules` cron firings and backfills; `rows` turns rows into plain values, so no
ORM object leaves this package.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import sqlalchemy as sa

from saga.clock import Clock
from saga.errors import RunBusy, RunNotFound
from saga.run import PendingSignal, Role, StepStatus
from saga.store.database import DatabaseError, Outage, unreachable
from saga.store.insights import Insights
from saga.store.reads import Reads
from saga.store.rows import run_of, step_of
from saga.store.run_sql import HEARTBEAT, RUN_EXISTS, CoreSql, PipelinedSql, sender
from saga.store.schedules import ScheduleStore
from saga.store.search import RunSearch
from saga.store.sweeps import Due, Sweeps
from saga.store.tables import metadata
from saga.store.transaction import RunTransaction

__all__ = ["Store", "RunTransaction", "Due", "metadata", "DatabaseError", "Outage", "unreachable"]


class Store(Sweeps, Reads, ScheduleStore, RunSearch, Insights):
    """Reads and writes the saga log. Safe to share between threads; re-opened after fork."""

    def __init__(self, url: str, clock: Clock | None = None, redispatch_s: float = 10.0,
                 echo: bool = False) -> None:
        super().__init__(url, clock, echo)
        self.redispatch = timedelta(seconds=redispatch_s)
        self._sql: CoreSql | PipelinedSql | None = None

    @property
    def run_sql(self) -> CoreSql | PipelinedSql:
        """How a run's transaction sends its statements (pipelined where the driver can)."""
        if self._sql is None:
            # With echo on, every statement goes through SQLAlchemy, which logs it.
            dialect = self.engine.dialect
            self._sql = CoreSql(self.is_sqlite) if self._echo else sender(dialect)
        return self._sql

    def now(self, conn: sa.Connection | None = None) -> datetime:
        """The database's clock (Database.now), read through the run statements' sender:
        on psycopg, one round trip with the transaction's BEGIN."""
        if conn is None:
            return super().now()
        return self.clock.read(self.run_sql.clock(conn))

    @contextmanager
    def transaction(self, run_id: str | None = None, *, skip_locked: bool = False,
                    signals: bool = True) -> Iterator[RunTransaction]:
        """One commit: with `run_id`, that run locked for update; without, a run to insert.

        `RunNotFound` for an unknown run; `RunBusy` if `skip_locked` and another holds it.
        `signals=False` skips reading pending signals (for a saga that declares none).
        """
        sql = self.run_sql
        with self.begin() as conn:
            if run_id is None:
                yield RunTransaction(conn, self.now(conn), None, self.redispatch, sql,
                                     self.is_sqlite)
                return
            loaded = sql.load(conn, run_id, skip_locked, signals)
            if loaded is None:
                if skip_locked and self._exists(conn, run_id):
                    raise RunBusy(f"run {run_id} is locked by another transaction")
                raise RunNotFound(f"no run has id {run_id!r}")
            pending = tuple(PendingSignal(s[0], s[1], s[2]) for s in loaded.signals)
            run = run_of(loaded.run, [step_of(s) for s in loaded.steps], pending)
            yield RunTransaction(conn, self.clock.read(loaded.run[-1]), run, self.redispatch,
                                 sql, self.is_sqlite)

    def heartbeat(self, run_id: str, step: str, role: Role, fence: int, lease_s: float) -> bool:
        """Extend a lease; False means the fence is stale and the worker must stop."""
        with self.begin() as conn:
            now = self.now(conn)
            result = conn.execute(HEARTBEAT, {
                "k_run_id": run_id, "k_name": step, "k_role": str(role), "k_fence": fence,
                "k_status": str(StepStatus.RUNNING),
                "lease_expires_at": now + timedelta(seconds=lease_s)})
            return result.rowcount == 1

    def _exists(self, conn: sa.Connection, run_id: str) -> bool:
        return conn.execute(RUN_EXISTS, {"run_id": run_id}).first() is not None
