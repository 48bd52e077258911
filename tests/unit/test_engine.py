"""The engine and the worker on an embedded SQLite log with a recording dispatcher: no broker.

Each test drives the parts by hand (start, run a delivered step, deliver a signal) and
checks what was committed and what would have been published.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga import NonRetryable, Parallel, Retry, Saga, Step, WaitForSignal
from saga.engine import Engine
from saga.errors import RunParked, RunStateConflict, UnknownSignal
from saga.events import CompensateStep, RunStep
from saga.registry import Registry
from saga.run import Role
from saga.store import Store
from saga.testing.dispatch import RecordingDispatcher
from saga.worker.runner import Worker

CALLS: list[str] = []


def ok(ctx):
    CALLS.append(f"{ctx.step}:{ctx.role}")
    return {"step": ctx.step}


def declined(ctx):
    CALLS.append(f"{ctx.step}:{ctx.role}")
    raise NonRetryable("card declined")


ORDER = Saga("order", steps=[
    Step("reserve", ok, compensate=ok),
    Step("charge", ok, compensate=ok, retry=Retry(attempts=1)),
    Step("ship", ok),
])
DECLINED = Saga("declined", steps=[
    Step("reserve", ok, compensate=ok),
    Step("charge", declined, compensate=ok),
])
LABEL = Saga("label", steps=[
    Step("reserve", ok, compensate=ok),
    WaitForSignal("label"),
    Step("email", ok),
])
FORK = Saga("fork", steps=[Parallel(Step("a", ok), Step("b", ok)), Step("join", ok)])


class Parts:
    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self.dispatcher = RecordingDispatcher()
        self.engine = Engine(registry, store, self.dispatcher, lease_s=30)
        self.worker = Worker(self.engine, registry, self.dispatcher, inline_steps=50)

    def deliver(self) -> list[str]:
        """Run every step hint published so far, as a worker receiving them would."""
        outcomes = []
        while sent := self.dispatcher.take():
            for hint in sent:
                result = self.worker.run_step(hint.run_id, hint.command.step, hint.command.role,
                                              hint.saga, hint.version, worker="w")
                outcomes.append(result.outcome)
        return outcomes

    def status(self, run_id: str) -> str:
        return self.store.get_run(run_id)["status"]

    def events(self, run_id: str) -> list[str]:
        return [e["type"] for e in self.store.events(run_id)]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty saga log, migrated once; each test copies it."""
    from saga import migrations

    path = tmp_path_factory.mktemp("log") / "saga.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def parts(migrated: Path, tmp_path: Path) -> Iterator[Parts]:
    shutil.copy(migrated, tmp_path / "saga.db")
    store = Store(f"sqlite:///{tmp_path / 'saga.db'}")
    CALLS.clear()
    yield Parts(store, Registry([ORDER, DECLINED, LABEL, FORK]))
    store.close()


def test_a_start_commits_the_run_then_publishes_its_first_step(parts):
    run_id, created = parts.engine.start("order", {"id": 1})
    assert created and parts.status(run_id) == "running"
    assert [s.command for s in parts.dispatcher.sent] == [RunStep("reserve")]


def test_the_same_idempotency_key_returns_the_first_run_and_publishes_nothing(parts):
    first, _ = parts.engine.start("order", {"id": 1}, idempotency_key="k")
    parts.dispatcher.take()
    again, created = parts.engine.start("order", {"id": 1}, idempotency_key="k")
    assert (again, created) == (first, False)
    assert parts.dispatcher.sent == []


def test_one_message_runs_a_sequence_inline_with_one_commit_per_step(parts):
    """Given a three-step sequence, When its first hint is delivered, Then the worker runs on
    through every step without another message."""
    run_id, _ = parts.engine.start("order", {})
    assert parts.deliver() == ["succeeded"]
    assert CALLS == ["reserve:forward", "charge:forward", "ship:forward"]
    assert parts.status(run_id) == "succeeded"


def test_parallel_steps_are_published_and_joined(parts):
    run_id, _ = parts.engine.start("fork", {})
    assert sorted(s.command.step for s in parts.dispatcher.sent) == ["a", "b"]
    parts.deliver()
    assert parts.status(run_id) == "succeeded"
    assert CALLS[-1] == "join:forward"


def test_a_declined_step_compensates_what_was_done_latest_first(parts):
    """A step that started may have had its effect even if it failed, so it is undone too."""
    run_id, _ = parts.engine.start("declined", {})
    parts.deliver()
    assert CALLS == ["reserve:forward", "charge:forward", "charge:compensate",
                     "reserve:compensate"]
    assert parts.status(run_id) == "compensated"


def test_a_duplicate_delivery_is_dropped_and_runs_nothing(parts):
    run_id, _ = parts.engine.start("order", {})
    [hint] = parts.dispatcher.sent
    parts.deliver()
    result = parts.worker.run_step(run_id, "reserve", Role.FORWARD, "order", 1, worker="w2")
    assert result.outcome == "dropped"
    assert CALLS.count("reserve:forward") == 1


def test_a_result_under_a_stale_fence_changes_nothing_and_is_recorded(parts):
    from saga.events import StepSucceeded

    run_id, _ = parts.engine.start("order", {})
    claim = parts.engine.claim(run_id, ORDER, "reserve", Role.FORWARD, "w")
    assert claim is not None
    outcome = parts.engine.advance(run_id, StepSucceeded("reserve", Role.FORWARD,
                                                         claim.fence - 1, {}), worker="old")
    assert not outcome.changed
    assert "step.superseded" in parts.events(run_id)


def test_cancel_is_refused_once_the_run_finished(parts):
    run_id, _ = parts.engine.start("order", {})
    parts.deliver()
    with pytest.raises(RunStateConflict, match="only a running run can be cancelled"):
        parts.engine.cancel(run_id, actor="ops")


def test_cancel_compensates_and_names_who_asked(parts):
    run_id, _ = parts.engine.start("label", {})
    parts.deliver()  # reserve, then the wait for the label
    parts.engine.cancel(run_id, actor="ops")
    parts.deliver()
    assert parts.status(run_id) == "cancelled"
    by = {e["type"]: e["data"].get("by") for e in parts.store.events(run_id)}
    assert by["run.compensating"] == "ops"
    assert [s for s in CALLS if s.endswith("compensate")] == ["reserve:compensate"]


def test_retry_of_a_run_that_did_not_fail_says_why(parts):
    run_id, _ = parts.engine.start("order", {})
    with pytest.raises(RunStateConflict) as refused:
        parts.engine.retry(run_id)
    assert refused.value.kind == "run-not-failed"


def test_a_signal_completes_the_wait_and_the_run_goes_on(parts):
    run_id, _ = parts.engine.start("label", {})
    parts.deliver()
    signal_id, new = parts.engine.signal(run_id, "label", {"url": "x"}, idempotency_key="s1",
                                         actor="shipper")
    assert new
    parts.deliver()
    assert parts.status(run_id) == "succeeded"
    assert parts.store.get_run(run_id)["steps"][1]["output"] == {"url": "x"}


def test_the_same_signal_key_after_the_run_finished_answers_as_the_first_time(parts):
    run_id, _ = parts.engine.start("label", {})
    parts.deliver()
    first, _ = parts.engine.signal(run_id, "label", {}, idempotency_key="s1")
    parts.deliver()
    assert parts.status(run_id) == "succeeded"
    assert parts.engine.signal(run_id, "label", {}, idempotency_key="s1") == (first, False)
    with pytest.raises(RunStateConflict, match="takes no signals"):
        parts.engine.signal(run_id, "label", {}, idempotency_key="s2")


def test_a_signal_to_a_compensating_run_is_refused_saying_why(parts):
    run_id, _ = parts.engine.start("label", {})
    parts.deliver()
    parts.engine.cancel(run_id)  # the compensation is queued, not yet run
    with pytest.raises(RunStateConflict, match="cancelling"):
        parts.engine.signal(run_id, "label", {})


def test_an_undeclared_signal_is_unknown(parts):
    run_id, _ = parts.engine.start("label", {})
    with pytest.raises(UnknownSignal):
        parts.engine.signal(run_id, "nope", {})


def test_a_run_whose_version_is_not_loaded_is_parked_not_lost(parts):
    run_id, _ = parts.engine.start("order", {})
    parts.dispatcher.take()
    without = Registry([DECLINED])
    elsewhere = Engine(without, parts.store, parts.dispatcher)
    worker = Worker(elsewhere, without, parts.dispatcher)
    assert worker.run_step(run_id, "reserve", Role.FORWARD, "order", 1).outcome == "dropped"
    assert parts.store.get_run(run_id)["parked"].startswith("waiting for order v1")
    with pytest.raises(RunParked):
        elsewhere.cancel(run_id)
    # Loaded again, the next delivery unparks and runs it.
    parts.worker.run_step(run_id, "reserve", Role.FORWARD, "order", 1, worker="w")
    parts.deliver()
    run = parts.store.get_run(run_id)
    assert (run["status"], run["parked"]) == ("succeeded", None)


def test_a_refused_publish_leaves_the_step_queued_for_the_sweeper(parts):
    parts.dispatcher.refuse = True
    run_id, _ = parts.engine.start("order", {})
    [step] = parts.store.get_run(run_id)["steps"]
    assert step["status"] == "queued"
    parts.dispatcher.refuse = False
    assert parts.engine.publish(ORDER, run_id, [RunStep("reserve")])
    assert [s.command for s in parts.dispatcher.sent] == [RunStep("reserve")]


def test_compensation_hints_carry_their_role(parts):
    parts.engine.start("declined", {})
    hints = []
    while sent := parts.dispatcher.take():
        hints.extend(s.command for s in sent)
        for hint in sent:
            parts.worker.inline_steps = 0  # one step per message, so each hint is seen
            parts.worker.run_step(hint.run_id, hint.command.step, hint.command.role,
                                  hint.saga, hint.version, worker="w")
    assert hints == [RunStep("reserve"), RunStep("charge"), CompensateStep("charge"),
                     CompensateStep("reserve")]
