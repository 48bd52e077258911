"""One run's transaction: the run loaded under its lock, the database time, and one save.

    with store.transaction(run_id) as tx:        # the run row locked FOR UPDATE
        new, commands = state.advance(saga, tx.run, event, tx.now)
        tx.save(new)                             # changed step rows, run row, event rows

Every write is guarded: a step row changes only `WHERE status = <as loaded> AND fence =
<as loaded>`, so a change that lost a race is abandoned (`StoreConflict`), never merged.
The statements themselves, and how they are sent, are in `run_sql`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from saga.errors import IdempotencyConflict
from saga.events import Change, history
from saga.run import PendingSignal, Run, StepState, StepStatus
from saga.store.run_sql import (
    ADD_SIGNAL,
    CONSUME_SIGNAL,
    FIND_IDEMPOTENT,
    FIND_SIGNAL,
    INSERT_EVENT,
    INSERT_RUN,
    INSERT_STEP,
    STEP_WRITE_COLUMNS,
    UPDATE_RUN,
    CoreSql,
    PipelinedSql,
    Writes,
    insert_run_once,
    update_step,
)

_INSERT_RUN_ONCE = {is_sqlite: insert_run_once(is_sqlite) for is_sqlite in (False, True)}


class RunTransaction:
    """A run locked for update (`run`, None while starting one) and the time `now`."""

    def __init__(self, conn: sa.Connection, now: datetime, run: Run | None,
                 redispatch: timedelta, sql: CoreSql | PipelinedSql, is_sqlite: bool) -> None:
        self.conn, self.now, self._run = conn, now, run
        self.changes: list[Change] = []  # what this transaction wrote, for observers
        self._redispatch = redispatch
        self._sql = sql
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
                   created_at=self.now, updated_at=self.now, deadline_at=run.deadline_at,
                   cancel_requested=False)
        writes = Writes()
        if idempotency_key is None:
            writes.add(INSERT_RUN, row)  # sent with the steps and events, in one batch
        else:
            inserted = self.conn.execute(_INSERT_RUN_ONCE[self._is_sqlite], row).first()
            if inserted is None:
                existing = self.conn.execute(FIND_IDEMPOTENT, {
                    "saga": run.saga, "idempotency_key": idempotency_key}).one()
                if existing.request_hash != request_hash:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {idempotency_key!r} was used for run "
                        f"{existing.id} with a different request body")
                return str(existing.id)
        self._write(None, run, worker=None, extra=(), actor=actor, writes=writes)
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
        found = self.conn.execute(FIND_SIGNAL, {"run_id": self.run.id, "name": name,
                                                "idempotency_key": idempotency_key}).scalar()
        return None if found is None else int(found)

    def add_signal(self, name: str, payload: Any, idempotency_key: str | None,
                   actor: str | None = None) -> int:
        """Record a signal for the locked run, pending until a wait consumes it; its id."""
        signal_id = self.conn.execute(ADD_SIGNAL, {
            "run_id": self.run.id, "name": name, "payload": payload,
            "idempotency_key": idempotency_key, "received_at": self.now}).scalar_one()
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
        self.conn.execute(INSERT_EVENT, dict(run_id=self.run.id, at=self.now, worker=worker,
                                             **entry))
        self.changes.append(Change(self.run, self.run, [entry], worker, None, self.now))

    def _write(self, old: Run | None, new: Run, worker: str | None,
               extra: Sequence[dict[str, Any]], actor: str | None,
               writes: Writes | None = None) -> None:
        writes = writes or Writes()
        for key, step in new.steps.items():
            before = old.steps.get(key) if old else None
            if before is step or before == step:
                continue
            if before is None:
                values = {c: getattr(step, c) for c in STEP_WRITE_COLUMNS}
                values.update(run_id=new.id, name=step.name, role=str(step.role), dispatches=1,
                              redispatch_at=self._redispatch_at(step))
                writes.add(INSERT_STEP, _step_params(values))
                continue
            # Only the columns that changed: a lease a heartbeat extended since is kept. The
            # output by identity: 1 == True == 1.0, but their JSON differs.
            values = {}
            for column in STEP_WRITE_COLUMNS:
                value, loaded = getattr(step, column), getattr(before, column)
                if value is not loaded and (column == "output" or value != loaded):
                    values[column] = value
            if step.status is StepStatus.QUEUED and before.status is not StepStatus.QUEUED:
                values["redispatch_at"] = self._redispatch_at(step)
            elif step.status is not StepStatus.QUEUED:
                values["redispatch_at"] = None
            if not values:  # equal columns, unequal values (never, but then nothing to write)
                continue
            values.update(k_run_id=new.id, k_name=step.name, k_role=str(step.role),
                          k_status=str(before.status), k_fence=before.fence)
            writes.add(update_step(tuple(c for c in values if not c.startswith("k_"))),
                       _step_params(values),
                       guard=f"step {step.name} of run {new.id} changed under the lock")
        if old is not None and (old.status, old.error, old.finished_at, old.cancel_requested,
                                old.parked, old.deadline_at) != (
                new.status, new.error, new.finished_at, new.cancel_requested, new.parked,
                new.deadline_at):
            writes.add(UPDATE_RUN, dict(
                k_id=new.id, status=str(new.status), error=new.error,
                finished_at=new.finished_at, cancel_requested=new.cancel_requested,
                parked=new.parked, deadline_at=new.deadline_at, updated_at=self.now))
        before_signals = {s.id: s for s in old.signals} if old else {}
        for signal in new.signals:
            if signal.consumed_by and before_signals.get(signal.id) != signal:
                writes.add(CONSUME_SIGNAL, dict(k_id=signal.id, k_run_id=new.id,
                                                consumed_by=signal.consumed_by,
                                                consumed_at=self.now))
        entries = [*extra, *history(old, new)]
        if actor:  # who asked for this change (an API token's name), on each entry it made
            entries = [{**e, "data": {**(e.get("data") or {}), "by": actor}} for e in entries]
        self.changes.append(Change(old, new, entries, worker, actor, self.now))
        writes.events = [
            dict(run_id=new.id, at=self.now, worker=worker, step=e.get("step"),
                 role=e.get("role"), attempt=e.get("attempt"), type=e["type"],
                 data=e.get("data") or {})
            for e in entries]
        self._sql.write(self.conn, writes)

    def _redispatch_at(self, step: StepState) -> datetime | None:
        """A step newly queued is published again if unclaimed by then; others never are."""
        if step.status is StepStatus.QUEUED:
            return self.now + self._redispatch
        return None


def _step_params(values: dict[str, Any]) -> dict[str, Any]:
    """The enums as their text, as the columns hold them."""
    for name in ("status", "checked", "role"):
        value = values.get(name)
        if value is not None:
            values[name] = str(value)
    return values
