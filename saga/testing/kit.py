"""The saga test kit: run a saga in this process through the real engine, worker and sweeper.

    kit = SagaKit()                              # a SQLite log in a temporary folder
    result = kit.run(book_trip, {"trip_id": "t-1", "card": "4242"})
    assert result.status == "succeeded"
    result = kit.run(book_trip, trip, faults=[Fault.crash("reserve_car", at="before_commit")])
    print(result.timeline)
    kit.explore(book_trip, trip, invariant)      # every step x fault, the invariant after each

Each step runs through `Worker.run_step`, as the Celery task runs it; the hints the engine
publishes go to a recording dispatcher that the kit delivers from, in order, in this
thread: no broker, no thread, no sleep. Time is a `MovableClock`: `settle` moves it to
whatever is due next (a retry, a timer, the lease a crash left behind) and runs one sweep,
so retries and waits fire at once and a crashed attempt is recovered the sweeper's way.
Not thread-safe: one kit per test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from saga.definitions import RemoteTask, Saga, Signal, Timer
from saga.errors import SagaError
from saga.events import Change
from saga.observe import Observers
from saga.registry import Registry
from saga.run import Role, Run, RunStatus, StepStatus
from saga.settings import Settings
from saga.system import build
from saga.testing import faults as crash_points
from saga.testing.clock import MovableClock
from saga.testing.dispatch import RecordingDispatcher, Sent
from saga.testing.explore import Exploration, InvariantBroken, Scenario, explore, scenarios
from saga.testing.inject import KINDS, POINTS, Crashed, Fault
from saga.timeline import render

__all__ = ["SagaKit", "Result", "Struck", "Fault", "KINDS", "POINTS", "KitError",
           "InvariantBroken", "Exploration", "Scenario", "scenarios"]

MAX_ROUNDS = 1000  # deliver-then-sweep rounds before a run that never settles is reported
NUDGE = timedelta(milliseconds=1)  # past a due time, so `<= now` holds whatever the clock's grain


class KitError(SagaError):
    """The saga test kit cannot do what it was asked."""


@dataclass(frozen=True)
class Struck:
    """A fault that struck: which run, and the attempt it struck."""

    run_id: str
    fault: Fault
    attempt: int | None

    def __str__(self) -> str:
        return self.fault.describe(self.attempt)


@dataclass(frozen=True)
class Result:
    """A run as its saga log holds it once the kit has driven it as far as it goes.

    `status` is a `RunStatus` (compare with "succeeded", "compensated", "failed",
    "cancelled", or "running" for a run waiting for a signal: see `waiting_for`).
    `steps` and `compensations` are the API's views (name, status, attempts, output,
    error); `events` the event log, oldest first; `timeline` renders it.
    """

    id: str
    saga: str
    version: int
    status: RunStatus
    input: Any
    outputs: dict[str, Any]
    error: str | None
    parked: str | None
    steps: list[dict[str, Any]]
    compensations: list[dict[str, Any]]
    events: list[dict[str, Any]]
    waiting_for: tuple[str, ...]  # signals the run waits for now
    struck: tuple[Struck, ...]  # the kit's faults that struck this run, in order
    view: dict[str, Any]

    @property
    def timeline(self) -> str:
        """Each attempt of each step and compensation, as `saga show` prints it (UTC)."""
        return render(self.view, self.events, tz=UTC)

    def step(self, name: str, role: Role | str = Role.FORWARD) -> dict[str, Any]:
        group = self.compensations if Role(role) is Role.COMPENSATE else self.steps
        for step in group:
            if step["name"] == name:
                return step
        raise KeyError(f"run {self.id} has no {Role(role)} record of step {name!r}")

    def attempts(self, name: str, role: Role | str = Role.FORWARD) -> int:
        """How many attempts of the step (or its compensation) were claimed; 0 if none."""
        try:
            return int(self.step(name, role)["attempts"])
        except KeyError:
            return 0

    def event_types(self) -> list[str]:
        return [e["type"] for e in self.events]


class _Dispatcher(RecordingDispatcher):
    def call_remote(self, task: RemoteTask, payload: dict[str, Any], timeout: float | None) -> Any:
        if task.name not in self.remote:
            raise LookupError(f"RemoteTask {task.name!r} has no stand-in in the test kit: pass "
                              f"SagaKit(remote={{{task.name!r}: function_of_the_payload}})")
        return super().call_remote(task, payload, timeout)


class _Attempts:
    """An observer: the attempt each step holds now, per run, from what was committed."""

    def __init__(self) -> None:
        self.current: dict[tuple[str, str, Role], int] = {}

    def committed(self, changes: Sequence[Change]) -> None:
        for change in changes:
            for (name, role), step in change.after.steps.items():
                if step.status is StepStatus.RUNNING:
                    self.current[(change.after.id, name, role)] = step.attempt


class SagaKit:
    """Runs sagas in this process on SQLite (default: a temporary file) or PostgreSQL.

    The database is migrated first (a no-op when it is already); `template`, an empty
    migrated SQLite file, is copied instead for the default one. `remote` stands in for
    RemoteTask steps: task name → a function of the payload. `lease` is every step's lease
    unless it sets `heartbeat_timeout`: how long a crashed attempt holds its step before
    the sweeper counts it failed (the clock jumps over it).
    """

    def __init__(self, database_url: str | None = None, sagas: Iterable[Saga] = (), *,
                 lease: timedelta = timedelta(seconds=30), inline_steps: int = 50,
                 remote: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
                 template: str | os.PathLike[str] | None = None) -> None:
        self._folder: str | None = None
        migrate = True
        if database_url is None:
            self._folder = _scratch_folder()
            database_url = f"sqlite:///{self._folder}/saga.db"
            if template is not None:  # an empty migrated log: copying it is quicker
                shutil.copy(template, f"{self._folder}/saga.db")
                migrate = False
        self.settings = Settings(database_url=database_url, broker_url="memory://",
                                 lease_s=lease.total_seconds(), inline_steps=inline_steps)
        if migrate:
            import saga.migrations as migrations

            migrations.upgrade(self.settings.database_url)
        self.clock = MovableClock()
        # The parts production builds, with the broker's dispatcher swapped for one the kit
        # delivers from, and one more observer: the attempt each step holds.
        system = build(self.settings, Registry(sagas), self.clock)
        self.registry, self.store = system.registry, system.store
        self.engine, self.worker, self.sweeper = system.engine, system.worker, system.sweeper
        self.dispatcher = _Dispatcher(remote=dict(remote or {}))
        self.engine.dispatcher = self.worker.dispatcher = self.dispatcher
        self._attempts = _Attempts()
        self.engine.observer = Observers(*filter(None, [self.engine.observer, self._attempts]))
        self._faults: dict[str, tuple[Fault, ...]] = {}
        self._fired: set[tuple[str, Fault, int | None]] = set()
        self._struck: list[Struck] = []
        self._delivering: str | None = None  # the run whose hint the worker is running
        self._process = 1  # a crash ends the kit's "worker process"; the next gets a new name

    # -- running ----------------------------------------------------------------------

    def run(self, saga: Saga | str, input: Any, *, faults: Iterable[Fault] = (),
            signals: Mapping[str, Any] | None = None, idempotency_key: str | None = None,
            fast_forward: bool = True) -> Result:
        """Start a run and `settle` it: the final run, or the run waiting for a signal.

        `faults` strike this run only. `signals` (name → payload) are sent when the run
        waits for them. `fast_forward=False` stops at the first wait instead of moving
        the clock (move it yourself with `advance`).
        """
        run_id = self.start(saga, input, faults=faults, idempotency_key=idempotency_key)
        return self.settle(run_id, signals=signals, fast_forward=fast_forward)

    def start(self, saga: Saga | str, input: Any, *, faults: Iterable[Fault] = (),
              idempotency_key: str | None = None) -> str:
        """Start a run and run nothing yet (`settle`, `cancel` or `advance` runs it)."""
        definition = self.add(saga) if isinstance(saga, Saga) else self.registry.get(saga)
        chosen = tuple(faults)
        for fault in chosen:
            _check_fault(definition, fault)
        run_id, _ = self.engine.start(definition.name, input, idempotency_key=idempotency_key,
                                      version=definition.version)
        self._faults[run_id] = self._faults.get(run_id, ()) + chosen
        return run_id

    def add(self, saga: Saga) -> Saga:
        """Load a definition (run() loads the one it is given)."""
        self.registry.add(saga)
        return saga

    def settle(self, run_id: str, *, signals: Mapping[str, Any] | None = None,
               fast_forward: bool = True) -> Result:
        """Run what is queued; then, until the run finishes, move the clock to what is due
        next and sweep. Stops early at a wait only the outside world ends (a signal not in
        `signals`), a parked run, or (without `fast_forward`) anything not due now."""
        pending = dict(signals or {})
        for _ in range(MAX_ROUNDS):
            self._deliver()
            run = self.store.load_run(run_id)
            if run.status.terminal:
                break
            saga = self.registry.get(run.saga, run.version)
            ready = [name for name in _waiting_for(saga, run) if name in pending]
            if ready:
                for name in ready:
                    self.engine.signal(run_id, name, pending.pop(name))
                continue
            due = _next_due(saga, run, self.store.now(), self.settings.redispatch_s)
            if due is None or not fast_forward:
                break
            self._move_to(due)
            self.sweeper.sweep_once()
        else:
            raise KitError(f"run {run_id} did not settle in {MAX_ROUNDS} rounds of "
                           f"deliver-and-sweep:\n{self.result(run_id).timeline}")
        return self.result(run_id)

    def signal(self, run_id: str, name: str, payload: Any = None, *,
               idempotency_key: str | None = None, fast_forward: bool = True) -> Result:
        """Send signal `name` to the run, then settle it."""
        self.engine.signal(run_id, name, payload, idempotency_key=idempotency_key)
        return self.settle(run_id, fast_forward=fast_forward)

    def cancel(self, run_id: str) -> Result:
        """Cancel the run, then settle it (what it did is compensated)."""
        self.engine.cancel(run_id)
        return self.settle(run_id)

    def retry(self, run_id: str) -> Result:
        """Resume a failed or parked run, as `saga retry` does, then settle it."""
        self.engine.retry(run_id)
        return self.settle(run_id)

    def advance(self, by: timedelta) -> None:
        """Move the clock forward by `by`, then sweep and run what fell due, until quiet."""
        self.clock.advance(by)
        for _ in range(MAX_ROUNDS):
            self._deliver()
            if self.sweeper.sweep_once().total == 0 and not self.dispatcher.sent:
                return
        raise KitError(f"work kept falling due after advancing the clock by {by}")

    @property
    def now(self) -> datetime:
        """The time the saga log sees (the real time plus how far the kit moved it)."""
        return self.store.now()

    def result(self, run_id: str) -> Result:
        """The run as the saga log holds it now."""
        run = self.store.load_run(run_id)
        view = self.store.get_run(run_id)
        saga = self.registry.get(run.saga, run.version)
        return Result(id=run.id, saga=run.saga, version=run.version, status=run.status,
                      input=run.input, outputs=run.outputs, error=run.error, parked=run.parked,
                      steps=view["steps"], compensations=view["compensations"],
                      events=self.store.events(run_id), waiting_for=_waiting_for(saga, run),
                      struck=tuple(s for s in self._struck if s.run_id == run_id), view=view)

    def explore(self, saga: Saga, input: Any, invariant: Callable[[Result], Any],
                **options: Any) -> Exploration:
        """Run `saga` once per step x fault and check `invariant` after each; raises
        `InvariantBroken` at the first run that breaks it (see `saga.testing.explore`)."""
        return explore(self, saga, input, invariant, **options)

    def close(self) -> None:
        self.store.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> SagaKit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- delivering -------------------------------------------------------------------

    @property
    def worker_name(self) -> str:
        return f"saga-kit/{self._process}"

    def _deliver(self) -> None:
        """Run every published hint, oldest first, as a worker receiving them would."""
        while sent := self.dispatcher.take():
            for hint in sent:
                self._run_hint(hint)

    def _run_hint(self, hint: Sent) -> None:
        self._delivering = hint.run_id
        try:
            with crash_points.injected(self._at_point):
                self.worker.run_step(hint.run_id, hint.command.step, hint.command.role,
                                     hint.saga, hint.version, worker=self.worker_name)
        except Crashed:
            self._process += 1
            # Celery gives a dead worker's message to another (task_reject_on_worker_lost);
            # its step is still leased to the dead one, so the claim drops it.
            self.dispatcher.sent.append(hint)
        finally:
            self._delivering = None

    def _at_point(self, point: str, label: str | None) -> None:
        """The crash-point hook: strike the first matching fault of the run being delivered."""
        run_id = self._delivering
        if run_id is None or label is None or point not in POINTS:
            return
        step, _, compensating = label.partition(".")
        role = Role.COMPENSATE if compensating else Role.FORWARD
        attempt = self._attempts.current.get((run_id, step, role))
        for fault in self._faults.get(run_id, ()):
            key = (run_id, fault, attempt)
            if key not in self._fired and fault.matches(step, role, attempt, point):
                self._fired.add(key)
                self._struck.append(Struck(run_id, fault, attempt))
                fault.strike(attempt)

    def _move_to(self, due: datetime) -> None:
        ahead = due - self.store.now()
        if ahead > timedelta(0):
            self.clock.advance(ahead + NUDGE)


def _scratch_folder() -> str:
    """A temporary folder, in memory where the machine has one: a SQLite commit there
    costs no flush to disk, which is most of what a kit run costs on a busy disk."""
    shm = "/dev/shm"
    usable = os.path.isdir(shm) and os.access(shm, os.W_OK)
    return tempfile.mkdtemp(prefix="saga-kit-", dir=shm if usable else None)


def _waiting_for(saga: Saga, run: Run) -> tuple[str, ...]:
    """The signals the run's waiting steps wait for."""
    if run.status is not RunStatus.RUNNING:
        return ()
    waits = (saga.by_name[s.name].wait for s in run.steps.values()
             if s.status is StepStatus.WAITING and s.name in saga.by_name)
    return tuple(w.name for w in waits if isinstance(w, Signal))


def _next_due(saga: Saga, run: Run, now: datetime, redispatch_s: float) -> datetime | None:
    """When the sweeper next has something to do for this run; None if only the outside
    world (a signal, a person) can move it."""
    times: list[datetime | None] = []
    for step in run.steps.values():
        if step.status is StepStatus.RETRY_WAIT:
            times.append(step.next_attempt_at)
        elif step.status is StepStatus.RUNNING:  # nothing runs between deliveries: a crash
            times.append(step.lease_expires_at)
        elif step.status is StepStatus.QUEUED:  # its hint was lost: republished, or timed out
            times += [step.start_by, now + timedelta(seconds=redispatch_s)]
        elif step.status is StepStatus.WAITING and isinstance(saga.by_name[step.name].wait, Timer):
            times.append(step.wake_at)
    due = [t for t in times if t is not None]
    if due and run.status is RunStatus.RUNNING and run.deadline_at is not None:
        due.append(run.deadline_at)  # passed on the way to the rest, it comes first
    return min(due) if due else None


def _check_fault(saga: Saga, fault: Fault) -> None:
    step = saga.by_name.get(fault.step)
    if step is None or step.wait is not None:
        raise KitError(f"saga {saga.name!r} has no step {fault.step!r} with an action to "
                       f"inject {fault.kind} into (steps: {', '.join(saga.order)})")
    if fault.role is Role.COMPENSATE and step.compensate is None:
        raise KitError(f"step {fault.step!r} of saga {saga.name!r} has no compensation")
    if fault.kind == "timeout" and step.timeout is None:
        raise KitError(f"step {fault.step!r} has no timeout to run over; give it one "
                       "(a worker that dies or hangs instead is Fault.crash: its lease runs out)")
