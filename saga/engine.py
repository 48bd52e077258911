"""The glue: start runs, run one step under its lease, and advance a run after each event.

Every advance is: lock the run → `state.advance` → save rows and events in one commit →
publish the commands after the commit. If the process dies between the commit and the
publish, the queued rows remain and the sweeper publishes them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from saga import state
from saga.alerts import Alerts
from saga.context import Heartbeat, LeaseLost, StepContext
from saga.definitions import RemoteTask, Saga, resolve_action
from saga.errors import (
    InvalidInput,
    NonRetryable,
    RunParked,
    RunStateConflict,
    UnknownSaga,
    UnknownSignal,
)
from saga.registry import Registry
from saga.settings import Settings
from saga.state import (
    Alert,
    CancelRequested,
    Command,
    Event,
    Kind,
    RetryRequested,
    SignalReceived,
    StepFailed,
    StepSucceeded,
)
from saga.store import Claim, Conflict, RunTransaction, ShapeChanged, Store
from saga.testing.faults import crash_point

log = logging.getLogger("saga.engine")
# Celery's soft limit and a RemoteTask's wait, matched by name to keep Celery at the edge.
TIMEOUT_ERRORS = frozenset({"SoftTimeLimitExceeded", "TimeoutError"})


class Dispatcher(Protocol):
    """Carries "run step S of run R" hints to workers; the broker holds nothing else."""

    def send(self, run_id: str, saga: str, version: int, commands: list[Command],
             timeouts: dict[str, float | None]) -> None: ...

    def call_remote(self, task: RemoteTask, payload: dict[str, Any], timeout: float | None) -> Any: ...

    def ping(self) -> None: ...


@dataclass(frozen=True)
class StepResult:
    """What one delivery of a step message came to (for logs and tests)."""

    outcome: str  # "dropped", "succeeded", "failed", "superseded"
    attempt: int = 0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Engine:
    def __init__(self, settings: Settings, registry: Registry, store: Store,
                 dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.dispatcher = dispatcher
        self.alerts = Alerts(settings.alert_webhook, settings.alert_hook)

    # -- starting -------------------------------------------------------------------

    def start(self, saga_name: str, input: Any, idempotency_key: str | None = None,
              version: int | None = None, actor: str | None = None) -> tuple[str, bool]:
        """Start a run (or find the one this idempotency key started): (run id, created).

        Validates before any write: `UnknownSaga`, `InvalidInput`, `IdempotencyConflict`.
        """
        saga = self.registry.get(saga_name, version)
        validate_input(saga, input)
        request_hash = hashlib.sha256(json.dumps(
            {"input": input, "version": version}, sort_keys=True).encode()).hexdigest()
        run_id, created, commands = self.store.create_run(
            lambda now: state.start(saga, str(uuid.uuid4()), input, now), saga.shape_hash,
            idempotency_key, request_hash, actor)
        crash_point("after_start_commit", saga.name)
        if created:
            self.publish(saga, run_id, commands)
        return run_id, created

    # -- advancing --------------------------------------------------------------------

    def handle(self, run_id: str, event: Event, worker: str | None = None,
               skip_locked: bool = False,
               prepare: Callable[[RunTransaction, Saga], None] | None = None,
               actor: str | None = None) -> bool:
        """Apply one event to a run under its lock; False if it changed nothing.

        `prepare` runs first in the same transaction (to check the run and write what the
        event needs, such as a received signal); its writes commit even if the event then
        changes nothing. A run no loaded definition fits is parked: `RunParked`.
        """
        changed, _ = self._advance(run_id, event, worker, skip_locked, prepare, actor=actor)
        return changed

    def _advance(self, run_id: str, event: Event, worker: str | None = None,
                 skip_locked: bool = False,
                 prepare: Callable[[RunTransaction, Saga], None] | None = None,
                 take_next: bool = False, known: Saga | None = None,
                 actor: str | None = None) -> tuple[bool, Claim | None]:
        """`handle`, and with `take_next` also claim one step it queued, to run it here.

        Taking the next step in the commit that queued it saves its message, its claim
        and a broker round trip; if this worker dies, the step's lease expires like any.
        `known`: the run's definition when the caller has it (then a saga without signal
        waits skips reading signals).
        """
        parked = None
        taken: Claim | None = None
        try:
            signals = known is None or known.has_signals
            with self.store.locked_run(run_id, skip_locked=skip_locked, signals=signals) as tx:
                if tx is None:
                    return False, None
                saga, parked = self._definition(tx.run)
                if saga is None:
                    return False, None  # parked below, once this lock is let go
                if prepare is not None:
                    prepare(tx, saga)
                new, commands = state.advance(saga, tx.run, event, tx.now)
                if new == tx.run:
                    if prepare is None:
                        _record_stale(tx, event, worker)
                    return False, None
                if take_next and worker:
                    new, commands, taken = self._take_one(saga, new, commands, worker, tx.now)
                alerts = [c for c in commands if isinstance(c, Alert)]
                tx.save(new, worker=worker, extra=[
                    {"type": f"alert.{a.reason}", "step": a.step, "data": {"message": a.message}}
                    for a in alerts], actor=actor)
                crash_point("before_commit", _label(event))
        except Conflict as exc:
            log.warning("advance of run %s abandoned: %s", run_id, exc)
            return False, None
        finally:
            if parked is not None:
                self._park(run_id, parked)
        crash_point("after_commit", _label(event))
        self.publish(saga, run_id, [c for c in commands if not isinstance(c, Alert)])
        for alert in alerts:
            self.alerts.send(run_id, saga.name, alert)
        return True, taken

    def _take_one(self, saga: Saga, run: state.Run, commands: list[Command], worker: str,
                  now: datetime) -> tuple[state.Run, list[Command], Claim | None]:
        """Claim the first dispatched step that may run inline (no Celery time limit)."""
        for command in commands:
            if isinstance(command, Alert) or saga.by_name[command.step].timeout is not None:
                continue
            lease = now + timedelta(seconds=self._lease_s(saga.by_name[command.step]))
            run = state.take(run, command.step, command.kind, worker, now, lease)
            step = run.steps[(command.step, command.kind)]
            claim = Claim(run.id, step.name, step.kind, step.attempt, step.fence, saga.name,
                          saga.version, run.input, run.outputs, lease)
            return run, [c for c in commands if c is not command], claim
        return run, commands, None

    def _lease_s(self, definition: Any) -> float:
        if definition.heartbeat_timeout is not None:
            return definition.heartbeat_timeout.total_seconds()
        return self.settings.lease_s

    def _definition(self, run: state.Run) -> tuple[Saga | None, str | None]:
        """The definition the run started on, or None and why the run must be parked."""
        try:
            saga = self.registry.get(run.saga, run.version)
        except UnknownSaga as exc:
            return None, f"waiting for {run.saga} v{run.version} to be loaded again: {exc}"
        if run.shape and saga.shape_hash != run.shape:
            return None, str(ShapeChanged(run.shape, saga.shape_hash))
        return saga, None

    def _park(self, run_id: str, reason: str) -> None:
        self.store.park(run_id, reason)
        log.error("run %s parked: %s", run_id, reason)
        raise RunParked(f"run {run_id} is parked: {reason}")

    def retry(self, run_id: str, actor: str | None = None) -> bool:
        """Resume a failed run from its given-up compensation or parked step.

        False when the run is not failed or has nothing to resume; `RunNotFound` if unknown.
        """
        return self.handle(run_id, RetryRequested(), actor=actor)

    def cancel(self, run_id: str, actor: str | None = None) -> None:
        """Cancel a running run: running steps settle, then what was done is compensated.

        `RunStateConflict` if it is finished or already compensating; `RunNotFound`.
        """
        def check(tx: RunTransaction, saga: Saga) -> None:
            if tx.run.status is not state.RunStatus.RUNNING:
                raise RunStateConflict(f"run {run_id} is {tx.run.status}; only a running run "
                                       "can be cancelled")

        self.handle(run_id, CancelRequested(), prepare=check, actor=actor)

    def signal(self, run_id: str, name: str, payload: Any,
               idempotency_key: str | None = None, actor: str | None = None) -> tuple[int, bool]:
        """Deliver signal `name` to a run: (signal id, whether it is new).

        A signal sent before the run reaches its wait is kept and consumed there. Raises
        `UnknownSignal` (not declared), `InvalidInput` (payload fails the step's schema),
        `RunStateConflict` (the run is finished), `RunNotFound`.
        """
        run = self.store.load_run(run_id)
        saga, parked = self._definition(run)
        if saga is None:
            self._park(run_id, parked)
        waits = saga.signal_steps(name)
        if not waits:
            raise UnknownSignal(f"saga {run.saga!r} v{run.version} declares no signal {name!r}")
        schema = waits[0].wait.schema
        if schema is not None:
            errors = (schema() if isinstance(schema, type) else schema).validate(payload)
            if errors:
                raise InvalidInput(errors)
        received: dict[str, Any] = {}

        def record(tx: RunTransaction, saga: Saga) -> None:
            if tx.run.status.terminal:
                raise RunStateConflict(f"run {run_id} is {tx.run.status}; it takes no signals")
            received["id"], received["new"] = self.store.add_signal(tx, name, payload,
                                                                    idempotency_key, actor)

        self.handle(run_id, SignalReceived(name), prepare=record, actor=actor)
        return received["id"], received["new"]

    def publish(self, saga: Saga, run_id: str, commands: list[Command]) -> bool:
        """Send the step hints; False if the broker refused (the rows stay queued)."""
        if not commands:
            return True
        timeouts = {c.step: _seconds(saga.by_name[c.step].timeout) for c in commands}
        try:
            self.dispatcher.send(run_id, saga.name, saga.version, commands, timeouts)
        except Exception as exc:  # committed already: the sweeper publishes it again
            log.warning("publish for run %s failed, the sweeper will retry: %s", run_id, exc)
            return False
        return True

    # -- running a step ---------------------------------------------------------------

    def run_step(self, run_id: str, step: str, kind: Kind, saga_name: str, version: int,
                 worker: str | None = None) -> StepResult:
        """Claim the step, run it under a heartbeat, record the outcome with the fence.

        Then, up to `settings.inline_steps` times, run on with a step that outcome queued
        (claimed in the same commit) instead of publishing it: a sequence of steps costs
        one commit each, not a message, a claim and a commit.
        """
        worker = worker or worker_name()
        try:
            saga = self.registry.get(saga_name, version)
        except UnknownSaga as exc:  # the sweeper publishes it again; a worker that has it runs it
            self.store.park(run_id, f"waiting for {saga_name} v{version} to be loaded again: {exc}")
            log.error("run %s parked: %s is not loaded here", run_id, f"{saga_name} v{version}")
            return StepResult("dropped")
        definition = saga.by_name.get(step)
        if definition is None or definition.wait is not None:
            return StepResult("dropped")
        policy = definition.retry if kind is Kind.FORWARD else definition.compensate_retry
        try:
            claim = self.store.claim(run_id, step, kind, worker, self._lease_s(definition),
                                     policy.attempts, shape=saga.shape_hash)
        except ShapeChanged as exc:
            self.store.park(run_id, str(exc))
            return StepResult("dropped")
        if claim is None:
            return StepResult("dropped")
        # Steps taken inline run without Celery's time limits, so only after one without.
        budget = self.settings.inline_steps if definition.timeout is None else 0
        first_attempt, result = claim.attempt, None
        while claim is not None:
            event = self._execute(saga, claim, worker)
            advanced, claim = self._advance(run_id, event, worker, take_next=budget > 0,
                                            known=saga)
            if result is None:  # the first step's outcome is this message's
                outcome = "succeeded" if isinstance(event, StepSucceeded) else "failed"
                result = StepResult(outcome if advanced else "superseded", first_attempt)
            budget -= 1
        return result

    def _execute(self, saga: Saga, claim: Claim, worker: str) -> Event:
        """Run one claimed step (or compensation) under a heartbeat; its outcome as an event."""
        definition = saga.by_name[claim.step]
        forward = claim.kind is Kind.FORWARD
        policy = definition.retry if forward else definition.compensate_retry
        action = definition.action if forward else definition.compensate
        lease_s = self._lease_s(definition)
        beat = Heartbeat(lambda: self.store.heartbeat(claim.run_id, claim.step, claim.kind,
                                                      claim.fence, lease_s), lease_s)
        ctx = StepContext(run_id=claim.run_id, step=claim.step, kind=str(claim.kind),
                          attempt=claim.attempt, fence=claim.fence, input=claim.input,
                          outputs=claim.outputs, saga=saga.name, version=saga.version,
                          _beat=beat.beat)
        with beat:
            event = self._call(action, ctx, policy, _seconds(definition.timeout))
            lost = beat.lost.is_set()
        if lost:  # the commit would be refused by the fence anyway; say why
            return StepFailed(claim.step, claim.kind, claim.fence, "lease lost during the attempt")
        return event

    def _call(self, action: Any, ctx: StepContext, policy: Any, timeout: float | None) -> Event:
        kind = Kind(ctx.kind)
        try:
            target = resolve_action(action)
            crash_point("before_effect", _label(ctx))
            if isinstance(target, RemoteTask):
                output = self.dispatcher.call_remote(target, _payload(ctx), timeout)
            else:
                output = target(ctx)
            crash_point("after_effect", _label(ctx))
        except LeaseLost as exc:
            return StepFailed(ctx.step, kind, ctx.fence, str(exc))
        except NonRetryable as exc:
            return StepFailed(ctx.step, kind, ctx.fence, _describe(exc), retryable=False)
        except Exception as exc:
            if type(exc).__name__ in TIMEOUT_ERRORS:
                return StepFailed(ctx.step, kind, ctx.fence, f"exceeded its {timeout}s time limit",
                                  timed_out=True, spread=random.random())
            log.info("step %s of run %s attempt %s failed: %s", ctx.step, ctx.run_id,
                     ctx.attempt, _describe(exc))
            return StepFailed(ctx.step, kind, ctx.fence, _describe(exc),
                              retryable=policy.retries(exc), spread=random.random())
        try:
            json.dumps(output)
        except (TypeError, ValueError) as exc:
            return StepFailed(ctx.step, kind, ctx.fence, f"output is not JSON: {exc}",
                              retryable=False)
        return StepSucceeded(ctx.step, kind, ctx.fence, output)


def validate_input(saga: Saga, input: Any) -> None:
    """Raise InvalidInput naming each field that fails the saga's schema."""
    schema = saga.input
    if schema is None:
        return
    schema = schema() if isinstance(schema, type) else schema
    errors = schema.validate(input if isinstance(input, dict) else {"_schema": input})
    if not isinstance(input, dict):
        errors = {"input": ["must be a JSON object"]}
    if errors:
        raise InvalidInput(errors)


def _record_stale(tx: Any, event: Event, worker: str | None) -> None:
    """A result from a fenced-off attempt: keep a trace of it, change nothing else."""
    if not isinstance(event, (StepSucceeded, StepFailed)):
        return
    current = tx.run.step(event.step, event.kind)
    tx.record("step.superseded" if event.kind is Kind.FORWARD else "compensation.superseded",
              step=event.step, kind=event.kind, worker=worker,
              data={"fence": event.fence, "current_fence": current.fence if current else None,
                    "outcome": "succeeded" if isinstance(event, StepSucceeded) else "failed"})


def _label(item: Any) -> str | None:
    """How crash points name a step: `charge_card`, or `charge_card.compensate`."""
    step, kind = getattr(item, "step", None), getattr(item, "kind", None)
    return f"{step}.compensate" if kind in (Kind.COMPENSATE, "compensate") else step


def _payload(ctx: StepContext) -> dict[str, Any]:
    return {"run_id": ctx.run_id, "step": ctx.step, "kind": ctx.kind, "attempt": ctx.attempt,
            "fence": ctx.fence, "idempotency_key": ctx.idempotency_key, "input": ctx.input,
            "outputs": ctx.outputs}


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _seconds(value: Any) -> float | None:
    return value.total_seconds() if value is not None else None


def _utcnow() -> datetime:
    return datetime.now(UTC)

