"""One run's transaction: the run loaded under its lock, the database time, and one save.

    with store.transaction(run_id) as tx:        # the run row locked FOR UPDATE
        new, commands = state.advance(saga, tx.run, event, tx.now)
        tx.save(new)                             # changed step rows, run row, event rows

Every write is guarded: a step row changes only `WHERE status = <as loaded> AND fence =
<as loaded>`, so a change that lost a race is abandoned (`StoreConflict`), never merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from saga.errors import IdempotencyConflict, StoreConflict
from saga.events import Change, history
from saga.run import PendingSignal, Run, StepStatus
from saga.store.tables import events, runs, signals, steps


class RunTransaction:
    """A run locked for update (`run`, None while starting one) and the time `now`."""

    def __init__(self, conn: sa.Connection, now: datetime, run: Run | None,
                 redispatch: timedelta, is_sqlite: bool) -> None:
        self.conn, self.now, self._run = conn, now, run
        self.changes: list[Change] = []  # what this transaction wrote, for observers
        self._redispatch = redispatch
        self._is_sqlite = is_sqlite

    @property
    def run(self) -> Run:
        assert self._run is not None, "a transaction that starts a run has no run yet"
        return self._run

    def insert(self, run: Run, idempotency_key: str | None, request_hash: str | None,
               actor: str | None = None) -> str | None:
        """Insert a new run and its first steps; None, or the run this key already started.

        `IdempotencyConflict` if that run was started by a different request.
        """
        row = dict(id=run.id, saga=run.saga, version=run.version, shape=run.shape,
                   status=str(run.status), input=run.input, error=None,
                   idempotency_key=idempotency_key, request_hash=request_hash,
                   created_at=self.now, updated_at=self.now, deadline_at=run.deadline_at)
        if idempotency_key is None:
            self.conn.execute(runs.insert().values(row))
        else:
            insert = (sqlite.insert if self._is_sqlite else postgresql.insert)(runs)
            inserted = self.conn.execute(insert.values(row).on_conflict_do_nothing(
                index_elements=["saga", "idempotency_key"]).returning(runs.c.id)).first()
            if inserted is None:
                existing = self.conn.execute(sa.select(runs.c.id, runs.c.request_hash).where(
                    runs.c.saga == run.saga, runs.c.idempotency_key == idempotency_key)).one()
                if existing.request_hash != request_hash:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {idempotency_key!r} was used for run "
                        f"{existing.id} with a different request body")
                return str(existing.id)
        self._write(None, run, worker=None, extra=(), actor=actor)
        self._run = run
        return None

    def save(self, new: Run, worker: str | None = None,
             extra: Sequence[dict[str, Any]] = (), actor: str | None = None) -> None:
        """Write what changed from the loaded run to `new`, with its history, in this commit."""
        self._write(self.run, new, worker, extra, actor)
        self._run = new

    def find_signal(self, name: str, idempotency_key: str) -> int | None:
        """The id of the signal this key already delivered to the locked run, if any."""
        # The run row is locked, so no one inserts it meanwhile.
        found = self.conn.execute(sa.select(signals.c.id).where(
            signals.c.run_id == self.run.id, signals.c.name == name,
            signals.c.idempotency_key == idempotency_key)).scalar()
        return None if found is None else int(found)

    def add_signal(self, name: str, payload: Any, idempotency_key: str | None,
                   actor: str | None = None) -> int:
        """Record a signal for the locked run, pending until a wait consumes it; its id."""
        signal_id = self.conn.execute(signals.insert().values(
            run_id=self.run.id, name=name, payload=payload, idempotency_key=idempotency_key,
            received_at=self.now).returning(signals.c.id)).scalar_one()
        self._run = replace(self.run, signals=(*self.run.signals,
                                               PendingSignal(signal_id, name, payload)))
        data: dict[str, Any] = {"signal": name, "signal_id": signal_id}
        if actor:
            data["by"] = actor
        self.record("signal.received", data=data)
        return int(signal_id)

    def park(self, reason: str) -> bool:
        """Flag the run for a person (or for its version to be loaded again); False if it was."""
        if self.run.parked == reason:
            return False
        self.save(replace(self.run, parked=reason))
        return True

    def record(self, type: str, step: str | None = None, role: str | None = None,
               attempt: int | None = None, worker: str | None = None,
               data: dict[str, Any] | None = None) -> None:
        """Write one event-log entry that changes nothing else (a stale result, a signal)."""
        entry = dict(type=type, step=step, role=str(role) if role else None, attempt=attempt,
                     data=data or {})
        self.conn.execute(events.insert().values(run_id=self.run.id, at=self.now,
                                                 worker=worker, **entry))
        self.changes.append(Change(self.run, self.run, [entry], worker, None, self.now))

    def _write(self, old: Run | None, new: Run, worker: str | None,
               extra: Sequence[dict[str, Any]], actor: str | None) -> None:
        for key, step in new.steps.items():
            before = old.steps.get(key) if old else None
            if before == step:
                continue
            values = dict(status=str(step.status), output=step.output, error=step.error,
                          attempt=step.attempt, fence=step.fence, lease_owner=step.lease_owner,
                          queued_at=step.queued_at, started_at=step.started_at,
                          finished_at=step.finished_at, next_attempt_at=step.next_attempt_at,
                          lease_expires_at=step.lease_expires_at, start_by=step.start_by,
                          wake_at=step.wake_at, in_doubt=step.in_doubt,
                          checked=str(step.checked) if step.checked else None)
            if step.status is StepStatus.QUEUED and (before is None or before.status is not step.status):
                values["redispatch_at"] = self.now + self._redispatch
            elif step.status is not StepStatus.QUEUED:
                values["redispatch_at"] = None
            if before is None:
                self.conn.execute(steps.insert().values(run_id=new.id, name=step.name,
                                                        role=str(step.role), dispatches=1, **values))
                continue
            done = self.conn.execute(steps.update().where(
                steps.c.run_id == new.id, steps.c.name == step.name,
                steps.c.role == str(step.role), steps.c.status == str(before.status),
                steps.c.fence == before.fence).values(**values))
            if done.rowcount != 1:
                raise StoreConflict(f"step {step.name} of run {new.id} changed under the lock")
        if old is not None and (old.status, old.error, old.finished_at, old.cancel_requested,
                                old.parked, old.deadline_at) != (
                new.status, new.error, new.finished_at, new.cancel_requested, new.parked,
                new.deadline_at):
            self.conn.execute(runs.update().where(runs.c.id == new.id).values(
                status=str(new.status), error=new.error, finished_at=new.finished_at,
                cancel_requested=new.cancel_requested, parked=new.parked,
                deadline_at=new.deadline_at, updated_at=self.now))
        before_signals = {s.id: s for s in old.signals} if old else {}
        for signal in new.signals:
            if signal.consumed_by and before_signals.get(signal.id) != signal:
                self.conn.execute(signals.update().where(signals.c.id == signal.id).values(
                    consumed_by=signal.consumed_by, consumed_at=self.now))
        entries = [*extra, *history(old, new)]
        if actor:  # who asked for this change (an API token's name), on each entry it made
            entries = [{**e, "data": {**(e.get("data") or {}), "by": actor}} for e in entries]
        self.changes.append(Change(old, new, entries, worker, actor, self.now))
        if entries:
            self.conn.execute(events.insert(), [
                dict(run_id=new.id, at=self.now, worker=worker, step=e.get("step"),
                     role=e.get("role"), attempt=e.get("attempt"), type=e["type"],
                     data=e.get("data") or {})
                for e in entries])
