"""The engine decides: start a run, apply each event under the run's lock, publish after commit.

Every change is one transaction: lock the run → the pure `state` decides → save the rows
and events → commit → publish the commands. If the process dies between the commit and
the publish, the queued rows remain and the sweeper publishes them again. Each operation
owns its preconditions (what may be cancelled, retried, signalled), so the API and CLI
only translate.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from saga import state
from saga.alerts import Alerts
from saga.definitions import RemoteTask, Saga, Signal, Step
from saga.errors import (
    InvalidInput,
    RunBusy,
    RunParked,
    RunStateConflict,
    StoreConflict,
    UnknownSaga,
    UnknownSignal,
)
from saga.events import (
    Alert,
    CancelRequested,
    Change,
    Command,
    Dispatch,
    Event,
    RetryRequested,
    SignalReceived,
    StepFailed,
    StepSucceeded,
    prefix,
)
from saga.registry import Registry
from saga.run import Role, Run, RunStatus, StepStatus
from saga.store import RunTransaction, Store
from saga.testing.faults import crash_point

log = logging.getLogger("saga.engine")


class Observer(Protocol):
    """Told what each commit did, after it committed: logs, metrics and traces hang here."""

    def committed(self, changes: Sequence[Change]) -> None: ...


class Dispatcher(Protocol):
    """Carries "run step S of run R" hints to workers; the broker holds nothing else."""

    def send(self, run_id: str, saga: str, version: int, commands: list[Dispatch],
             timeouts: dict[str, float | None]) -> None: ...

    def call_remote(self, task: RemoteTask, payload: dict[str, Any], timeout: float | None) -> Any: ...

    def ping(self) -> None: ...


@dataclass(frozen=True)
class Claim:
    """What a worker holds after claiming a step: its attempt, fence, lease and inputs."""

    run_id: str
    step: str
    role: Role
    attempt: int
    fence: int
    input: Any
    outputs: dict[str, Any]
    lease_s: float
    lease_expires_at: datetime
    # A compensation's view of its forward step: its output (None if it never returned)
    # and its last attempt's error (None if it succeeded).
    forward_output: Any = None
    forward_error: str | None = None
    # The forward step's last attempt and fence: a `verify` check asks as that attempt,
    # whichever role asks, so its calls carry the key and fence the forward call used.
    forward_attempt: int = 0
    forward_fence: int = 0
    check_first: bool = False  # ask the step's `verify` before acting (state.must_check)


@dataclass(frozen=True)
class Outcome:
    """What one event came to: whether it changed the run, and a step claimed to run next."""

    changed: bool
    parked: str | None = None  # why no loaded definition fits the run (it is flagged so)
    claim: Claim | None = None
    run: Run | None = None  # the run as committed, when it changed

    def retried(self, step: str, role: Role, attempt: int) -> bool:
        """Whether the committed run gives `step` another attempt after `attempt`."""
        current = self.run.steps.get((step, role)) if self.run is not None else None
        if current is None:
            return False
        return (current.status in (StepStatus.QUEUED, StepStatus.RETRY_WAIT)
                or (current.status is StepStatus.RUNNING and current.attempt > attempt))


class Engine:
    def __init__(self, registry: Registry, store: Store, dispatcher: Dispatcher,
                 alerts: Alerts | None = None, lease_s: float = 30.0,
                 observer: Observer | None = None) -> None:
        self.registry = registry
        self.store = store
        self.dispatcher = dispatcher
        self.alerts = alerts or Alerts()
        self.lease_s = lease_s
        self.observer = observer
        self._publish_failing = False  # the last publish failed: its log line was said

    # -- starting ---------------------------------------------------------------------

    def start(self, saga_name: str, input: Any, idempotency_key: str | None = None,
              version: int | None = None, actor: str | None = None) -> tuple[str, bool]:
        """Start a run (or find the one this idempotency key started): (run id, created).

        Validates before any write: `UnknownSaga`, `InvalidInput`, `IdempotencyConflict`.
        """
        run_id, started = self.start_run(saga_name, input, idempotency_key, version, actor)
        return run_id, started is not None

    def start_run(self, saga_name: str, input: Any, idempotency_key: str | None = None,
                  version: int | None = None, actor: str | None = None,
                  after_commit: Callable[[Callable[[], None]], None] | None = None
                  ) -> tuple[str, Run | None]:
        """As `start`, with the run as committed when this call started it, or None when
        the key found an earlier run (the API answers it without reading it back).

        `after_commit` is handed the publish of the first steps to run where it likes
        (the API: on a thread of its own, after answering); default: now, here. Committed
        already, a publish lost on the way is the sweeper's to send again.
        """
        saga = self.registry.get(saga_name, version)
        validate_input(saga, input)
        request_hash = hashlib.sha256(json.dumps(
            {"input": input, "version": version}, sort_keys=True).encode()).hexdigest()
        with self._transaction() as tx:
            run, commands = state.start(saga, str(uuid.uuid4()), input, tx.now)
            existing = tx.insert(run, idempotency_key, request_hash, actor)
        crash_point("after_start_commit", saga.name)
        if existing is not None:
            return existing, None
        publish = functools.partial(self._after_commit, saga, run.id, commands)
        (after_commit or _now)(publish)
        return run.id, run

    # -- advancing --------------------------------------------------------------------

    def advance(self, run_id: str, event: Event, *, worker: str | None = None,
                actor: str | None = None, skip_locked: bool = False,
                known: Saga | None = None, claim_next_for: str | None = None) -> Outcome:
        """Apply one event to a run under its lock, then publish what it queued.

        `claim_next_for`: a worker that will run one step this event queued itself, claimed
        in the same commit (no message, no second claim). `known`: the run's definition
        when the caller has it (a saga without signal waits then skips reading signals).
        A run no loaded definition fits is flagged parked and left as it is.
        """
        try:
            with self._transaction(run_id, skip_locked=skip_locked,
                                        signals=known is None or known.has_signals) as tx:
                saga = self._definition(tx)
                if saga is None:
                    return Outcome(False, parked=tx.run.parked)
                new, commands = state.advance(saga, tx.run, event, tx.now)
                if new == tx.run:
                    _record_stale(tx, event, worker)
                    return Outcome(False)
                claim = None
                if claim_next_for is not None:
                    new, commands, claim = self._claim_queued(saga, new, commands,
                                                              claim_next_for, tx.now)
                tx.save(new, worker=worker, extra=_alert_entries(commands), actor=actor)
                crash_point("before_commit", _label(event))
        except RunBusy:
            return Outcome(False)
        except StoreConflict as exc:
            log.warning("advance of run %s abandoned: %s", run_id, exc)
            return Outcome(False)
        crash_point("after_commit", _label(event))
        self._after_commit(saga, run_id, commands)
        return Outcome(True, claim=claim, run=new)

    def claim(self, run_id: str, saga: Saga, step: str, role: Role, worker: str) -> Claim | None:
        """Claim a queued step for `worker` under a new fence; None if it is not to be run.

        None: a duplicate or stale message, the run moved on, the attempts are used up, or
        no loaded definition fits the run (then it is flagged parked).
        """
        with self._transaction(run_id, signals=False) as tx:
            if self._definition(tx, saga) is None:
                return None
            lease_s = self.lease_for(saga.by_name[step])
            new = state.claim(saga, tx.run, step, role, worker, tx.now,
                              tx.now + timedelta(seconds=lease_s))
            if new is tx.run:
                return None
            tx.save(new, worker=worker)
        return _claim_of(saga, new, step, role, lease_s)

    def renew(self, claim: Claim) -> bool:
        """Extend a claim's lease; False when its fence is stale (another worker owns it)."""
        return self.store.heartbeat(claim.run_id, claim.step, claim.role, claim.fence,
                                    claim.lease_s)

    def park(self, run_id: str, reason: str) -> None:
        """Flag a run that no worker here can go on with; kept as it is until that changes."""
        with self._transaction(run_id, signals=False) as tx:
            tx.park(reason)  # told once per reason, as saga.runs' run.parked line

    def lease_for(self, step: Step) -> float:
        if step.heartbeat_timeout is not None:
            return step.heartbeat_timeout.total_seconds()
        return self.lease_s

    # -- asked from outside -----------------------------------------------------------

    def retry(self, run_id: str, actor: str | None = None) -> None:
        """Resume a failed run from its given-up compensation, or a parked step.

        `RunStateConflict` when the run is neither failed nor parked or has nothing to
        resume; `RunNotFound` if unknown.
        """
        outcome = self.advance(run_id, RetryRequested(), actor=actor)
        if outcome.changed:
            return
        if outcome.parked:
            raise RunParked(f"run {run_id} is parked: {outcome.parked}")
        run = self.store.get_run(run_id)
        if run["status"] != RunStatus.FAILED and not run["parked"]:
            raise RunStateConflict(f"run {run_id} is {run['status']}; only a failed or parked "
                                   "run can be retried", kind="run-not-failed")
        raise RunStateConflict(f"run {run_id} has no failed compensation or parked step to "
                               "resume", kind="nothing-to-retry")

    def cancel(self, run_id: str, actor: str | None = None) -> None:
        """Cancel a running run: running steps settle, then what was done is compensated.

        `RunStateConflict` if it is finished, already compensating, or past its pivot;
        `RunNotFound`.
        """
        outcome = self.advance(run_id, CancelRequested(), actor=actor)
        if outcome.parked:
            raise RunParked(f"run {run_id} is parked: {outcome.parked}")
        if not outcome.changed:
            run = self.store.load_run(run_id)
            reached = state.pivot_reached(self.registry.get(run.saga, run.version), run)
            if run.status is RunStatus.RUNNING and reached:
                raise RunStateConflict(f"run {run_id} cannot be cancelled: {reached}; past its "
                                       "pivot nothing may be undone, so it goes on to the end",
                                       kind="past-pivot")
            raise RunStateConflict(f"run {run_id} is {run.status}; only a running run can be "
                                   "cancelled")

    def signal(self, run_id: str, name: str, payload: Any, idempotency_key: str | None = None,
               actor: str | None = None) -> tuple[int, bool]:
        """Deliver signal `name` to a run: (signal id, whether it is new).

        A signal sent before the run reaches its wait is kept and consumed there. The same
        idempotency key again answers what the first delivery did, even once the run has
        finished. Raises `UnknownSignal` (not declared), `InvalidInput` (the payload fails
        the wait's schema), `RunStateConflict` (the run is finished, compensating or
        cancelling, so no wait will ever consume it), `RunParked`, `RunNotFound`.
        """
        with self._transaction(run_id) as tx:
            saga = self._definition(tx)
            if saga is None:  # the run is flagged parked: commit that, then refuse
                parked = tx.run.parked
            else:
                signal_id, commands = self._deliver(tx, saga, name, payload, idempotency_key,
                                                    actor)
        if saga is None:
            raise RunParked(f"run {run_id} is parked: {parked}")
        if commands is not None:
            self._after_commit(saga, run_id, commands)
        return signal_id, commands is not None

    def _deliver(self, tx: RunTransaction, saga: Saga, name: str, payload: Any,
                 idempotency_key: str | None, actor: str | None
                 ) -> tuple[int, list[Command] | None]:
        """Record the signal and let a waiting step consume it: (its id, the commands), or
        (the first delivery's id, None) for a key seen before."""
        _check_signal(saga, tx.run, name, payload)
        earlier = tx.find_signal(name, idempotency_key) if idempotency_key else None
        if earlier is not None:
            return earlier, None
        if tx.run.status is not RunStatus.RUNNING:
            raise RunStateConflict(_no_signals(tx.run))
        signal_id = tx.add_signal(name, payload, idempotency_key, actor)
        new, commands = state.advance(saga, tx.run, SignalReceived(name), tx.now)
        tx.save(new, extra=_alert_entries(commands), actor=actor)
        return signal_id, commands

    # -- after the commit -------------------------------------------------------------

    def publish(self, saga: Saga, run_id: str, commands: list[Dispatch]) -> bool:
        """Send the step hints; False if the broker refused (the rows stay queued)."""
        if not commands:
            return True
        timeouts = {c.step: _seconds(saga.by_name[c.step].timeout) for c in commands}
        try:
            self.dispatcher.send(run_id, saga.name, saga.version, commands, timeouts)
        except Exception as exc:  # committed already: the sweeper publishes it again
            # One warning for the outage, not one per message (each is republished).
            level = logging.DEBUG if self._publish_failing else logging.WARNING
            self._publish_failing = True
            log.log(level, "publish for run %s failed, the sweeper will retry (said once until "
                    "a publish succeeds): %s", run_id, exc)
            return False
        if self._publish_failing:
            self._publish_failing = False
            log.warning("publishing works again")
        return True

    def _after_commit(self, saga: Saga, run_id: str, commands: list[Command]) -> None:
        self.publish(saga, run_id, [c for c in commands if not isinstance(c, Alert)])
        for command in commands:
            if isinstance(command, Alert):
                self.alerts.send(run_id, saga.name, command)

    # -- helpers ----------------------------------------------------------------------

    @contextmanager
    def _transaction(self, run_id: str | None = None, **options: Any) -> Iterator[RunTransaction]:
        """The store's transaction; once it has committed, the observer hears what it did."""
        with self.store.transaction(run_id, **options) as tx:
            yield tx
        if self.observer is not None and tx.changes:
            try:
                self.observer.committed(tx.changes)
            except Exception:  # seeing must never break doing: the commit stands
                log.exception("an observer failed on run %s", tx.changes[0].after.id)

    def _definition(self, tx: RunTransaction, known: Saga | None = None) -> Saga | None:
        """The definition the locked run started on; None, with the run parked, if none fits."""
        run = tx.run
        try:
            saga = known or self.registry.get(run.saga, run.version)
        except UnknownSaga as exc:
            reason = f"waiting for {run.saga} v{run.version} to be loaded again: {exc}"
        else:
            if not run.shape or saga.shape_hash == run.shape:
                return saga
            reason = (f"the definition changed under this version (started as shape "
                      f"{run.shape}, loaded is {saga.shape_hash}): give the new shape a new "
                      "version")
        tx.park(reason)  # told once per reason, as saga.runs' run.parked line
        return None

    def _claim_queued(self, saga: Saga, run: Run, commands: list[Command], worker: str,
                      now: datetime) -> tuple[Run, list[Command], Claim | None]:
        """Claim the first step just queued that may run inline (it has no Celery time limit)."""
        for command in commands:
            if isinstance(command, Alert) or saga.by_name[command.step].timeout is not None:
                continue
            lease_s = self.lease_for(saga.by_name[command.step])
            claimed = state.claim(saga, run, command.step, command.role, worker, now,
                                  now + timedelta(seconds=lease_s))
            if claimed is run:
                continue
            rest = [c for c in commands if c is not command]
            return claimed, rest, _claim_of(saga, claimed, command.step, command.role, lease_s)
        return run, commands, None


def _now(publish: Callable[[], None]) -> None:
    publish()


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


def _check_signal(saga: Saga, run: Run, name: str, payload: Any) -> None:
    waits = saga.signal_steps(name)
    if not waits:
        raise UnknownSignal(f"saga {run.saga!r} v{run.version} declares no signal {name!r}")
    wait = waits[0].wait
    schema = wait.schema if isinstance(wait, Signal) else None
    if schema is not None:
        errors = (schema() if isinstance(schema, type) else schema).validate(payload)
        if errors:
            raise InvalidInput(errors)


def _no_signals(run: Run) -> str:
    if run.status is RunStatus.COMPENSATING:
        why = "cancelling" if run.cancel_requested else "compensating"
        return (f"run {run.id} is {why}; no step will wait for a signal again, so it is "
                "not taken")
    return f"run {run.id} is {run.status}; it takes no signals"


def _claim_of(saga: Saga, run: Run, step: str, role: Role, lease_s: float) -> Claim:
    claimed = run.steps[(step, role)]
    assert claimed.lease_expires_at is not None
    forward = run.steps.get((step, Role.FORWARD)) if role is Role.COMPENSATE else None
    return Claim(run.id, step, role, claimed.attempt, claimed.fence, run.input, run.outputs,
                 lease_s, claimed.lease_expires_at,
                 forward_output=forward.output if forward else None,
                 forward_error=forward.error if forward else None,
                 forward_attempt=forward.attempt if forward else claimed.attempt,
                 forward_fence=forward.fence if forward else claimed.fence,
                 check_first=state.must_check(saga, run, step, role, claimed.fence))


def _alert_entries(commands: list[Command]) -> list[dict[str, Any]]:
    return [{"type": f"alert.{c.reason}", "step": c.step, "data": {"message": c.message}}
            for c in commands if isinstance(c, Alert)]


def _record_stale(tx: RunTransaction, event: Event, worker: str | None) -> None:
    """A result from a fenced-off attempt: keep a trace of it, change nothing else."""
    if not isinstance(event, (StepSucceeded, StepFailed)):
        return
    current = tx.run.step(event.step, event.role)
    tx.record(f"{prefix(event.role)}.superseded", step=event.step, role=event.role,
              worker=worker,
              data={"fence": event.fence, "current_fence": current.fence if current else None,
                    "outcome": "succeeded" if isinstance(event, StepSucceeded) else "failed"})


def _seconds(value: timedelta | None) -> float | None:
    return value.total_seconds() if value is not None else None


def _label(item: Any) -> str | None:
    """How crash points name a step: `charge_card`, or `charge_card.compensate`."""
    step, role = getattr(item, "step", None), getattr(item, "role", None)
    return f"{step}.compensate" if role == Role.COMPENSATE else step
