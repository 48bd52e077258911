"""Read queries of the saga log: one run, pages of runs, a run's history, versions in flight."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from saga.errors import RunNotFound
from saga.state import Run, RunStatus
from saga.status import Kind
from saga.store.rows import (
    aware,
    decode_cursor,
    encode_cursor,
    run_view,
    step_view,
    to_run,
    to_step,
)
from saga.store.tables import events, runs, steps


class Reads:
    """Mixed into Store: everything the API and CLI read. Needs `self.engine`."""

    engine: sa.Engine

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run with its steps and compensations, as plain data."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
            if row is None:
                raise RunNotFound(f"no run has id {run_id!r}")
            step_rows = conn.execute(sa.select(steps).where(steps.c.run_id == run_id).order_by(
                steps.c.queued_at, steps.c.name)).mappings().all()
        view = run_view(row)
        view["steps"] = [step_view(s) for s in step_rows if s["kind"] == Kind.FORWARD]
        view["compensations"] = [step_view(s) for s in step_rows if s["kind"] == Kind.COMPENSATE]
        return view

    def load_run(self, run_id: str) -> Run:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
            if row is None:
                raise RunNotFound(f"no run has id {run_id!r}")
            step_rows = conn.execute(sa.select(steps).where(steps.c.run_id == run_id)).mappings()
            return to_run(row, [to_step(s) for s in step_rows])

    def list_runs(self, saga: str | None = None, status: str | None = None, limit: int = 50,
                  cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Runs newest first, one page; the second value is the next page's cursor."""
        query = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1)
        if saga:
            query = query.where(runs.c.saga == saga)
        if status:
            query = query.where(runs.c.status == status)
        if cursor:
            at, run_id = decode_cursor(cursor)
            query = query.where(sa.or_(runs.c.created_at < at,
                                       sa.and_(runs.c.created_at == at, runs.c.id < run_id)))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        page = [run_view(r) for r in rows[:limit]]
        more = len(rows) > limit
        return page, encode_cursor(rows[limit - 1]) if more and page else None

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's history, oldest first."""
        with self.engine.connect() as conn:
            if conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() is None:
                raise RunNotFound(f"no run has id {run_id!r}")
            rows = conn.execute(sa.select(events).where(events.c.run_id == run_id)
                                .order_by(events.c.id)).mappings().all()
        return [{"id": r["id"], "at": aware(r["at"]), "type": r["type"], "step": r["step"],
                 "kind": r["kind"], "attempt": r["attempt"], "worker": r["worker"],
                 "data": r["data"]} for r in rows]

    def active_versions(self) -> dict[tuple[str, int], int]:
        """How many unfinished runs each (saga, version) has."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs.c.saga, runs.c.version, sa.func.count())
                                .where(runs.c.status.in_([RunStatus.RUNNING, RunStatus.COMPENSATING]))
                                .group_by(runs.c.saga, runs.c.version)).all()
        return {(r[0], r[1]): r[2] for r in rows}

