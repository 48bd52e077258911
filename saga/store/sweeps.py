"""What the sweeper finds due: lost dispatches, dead leases, retries, wake-ups, deadlines.

Each query reads a partial index on its due time, so its cost grows with what is due,
never with what is merely waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from saga.run import Role, RunStatus, StepStatus
from saga.store.database import Database
from saga.store.tables import runs, steps


@dataclass(frozen=True)
class Due:
    """One piece of work a sweep found due."""

    run_id: str
    saga: str
    version: int
    step: str
    role: Role
    fence: int


class Sweeps(Database):
    """Mixed into Store: the sweeper's queries."""

    redispatch: timedelta

    def redispatch_due(self, limit: int) -> list[Due]:
        """Queued steps not claimed in time: push their next check back and return them."""
        with self.begin() as conn:
            now = self.now(conn)
            due = conn.execute(
                sa.select(steps.c.run_id, steps.c.name, steps.c.role, steps.c.fence,
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
                    steps.c.role == row.role).values(
                        redispatch_at=now + wait, dispatches=steps.c.dispatches + 1))
                found.append(Due(row.run_id, row.saga, row.version, row.name, Role(row.role),
                                 row.fence))
            return found

    def redispatch_failed(self, due: Due) -> None:
        """The broker refused a republish: try again after the base wait, not a longer one."""
        with self.begin() as conn:
            conn.execute(steps.update().where(
                steps.c.run_id == due.run_id, steps.c.name == due.step,
                steps.c.role == str(due.role), steps.c.fence == due.fence,
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
                sa.select(steps.c.run_id, steps.c.name, steps.c.role, steps.c.fence,
                          runs.c.saga, runs.c.version)
                .join(runs, runs.c.id == steps.c.run_id)
                .where(steps.c.status == status, (due_at < now) if strictly else (due_at <= now))
                .order_by(due_at).limit(limit)).all()
        return [Due(r.run_id, r.saga, r.version, r.name, Role(r.role), r.fence) for r in rows]
