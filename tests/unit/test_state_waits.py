"""The state machine's waits, signals, cancellation, repair and deadlines, as tables."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from saga import events, state
from saga.definitions import Retry, Saga, Step, Wait, WaitForSignal
from saga.events import (
    CancelRequested,
    DeadlinePassed,
    RetryRequested,
    SignalReceived,
    StepFailed,
    StepSucceeded,
    WakeUpDue,
)
from saga.run import PendingSignal, Role, Run, RunStatus, StepStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def noop(ctx):
    return None


def _claim(run: Run, name: str, role: Role = Role.FORWARD) -> tuple[Run, int]:
    step = run.steps[(name, role)]
    assert step.status is StepStatus.QUEUED, step
    claimed = replace(step, status=StepStatus.RUNNING, attempt=step.attempt + 1,
                      fence=step.fence + 1, lease_expires_at=T0 + timedelta(days=999),
                      started_at=T0)
    return replace(run, steps={**run.steps, (name, role): claimed}), claimed.fence


def _succeed(saga: Saga, run: Run, name: str, role: Role = Role.FORWARD,
             at: datetime = T0) -> tuple[Run, list]:
    run, fence = _claim(run, name, role)
    return state.advance(saga, run, StepSucceeded(name, role, fence, {"done": name}), at)


def _status(run: Run, name: str, role: Role = Role.FORWARD) -> StepStatus | None:
    step = run.step(name, role)
    return step.status if step else None


TIMED = Saga("timed", steps=[Step("a", noop, compensate=noop),
                             Wait("nap", duration=timedelta(hours=1)), Step("b", noop)])
LABELLED = Saga("labelled", steps=[
    Step("a", noop, compensate=noop),
    WaitForSignal("label", timeout=timedelta(days=2)),
    Step("b", noop)])
PATIENT = Saga("patient", steps=[
    Step("a", noop, compensate=noop),
    WaitForSignal("label", timeout=timedelta(days=2), on_timeout="continue"),
    Step("b", noop)])


def test_a_timer_waits_without_a_command_and_fires_when_due() -> None:
    """Given a run reaching an hour's timer, no message is sent; at the hour it succeeds."""
    run, _ = state.start(TIMED, "r", {}, T0)
    run, commands = _succeed(TIMED, run, "a")
    nap = run.step("nap")
    assert (nap.status, nap.wake_at, commands) == (StepStatus.WAITING, T0 + timedelta(hours=1), [])
    early, nothing = state.advance(TIMED, run, WakeUpDue("nap"), T0 + timedelta(minutes=59))
    assert (early, nothing) == (run, [])
    run, commands = state.advance(TIMED, run, WakeUpDue("nap"), T0 + timedelta(hours=1))
    assert _status(run, "nap") is StepStatus.SUCCEEDED
    assert commands == [events.RunStep("b")]


def test_a_timer_until_a_time_from_the_input() -> None:
    """Given `until` computed from the input, the wake-up time is that value."""
    trial = Saga("trial", steps=[Wait("trial_over", until=lambda i, o: datetime.fromisoformat(
        i["ends"])), Step("charge", noop)])
    run, _ = state.start(trial, "r", {"ends": "2026-01-05T00:00:00+00:00"}, T0)
    assert run.step("trial_over").wake_at == datetime(2026, 1, 5, tzinfo=UTC)


def test_a_timer_already_past_does_not_wait() -> None:
    trial = Saga("trial", steps=[Wait("trial_over", until=lambda i, o: T0 - timedelta(days=1)),
                                 Step("charge", noop)])
    run, commands = state.start(trial, "r", {}, T0)
    assert _status(run, "trial_over") is StepStatus.SUCCEEDED
    assert commands == [events.RunStep("charge")]


def test_a_failing_until_fails_the_step_and_compensates() -> None:
    broken = Saga("broken", steps=[Step("a", noop, compensate=noop),
                                   Wait("w", until=lambda i, o: i["missing"])])
    run, _ = state.start(broken, "r", {}, T0)
    run, commands = _succeed(broken, run, "a")
    assert run.status is RunStatus.COMPENSATING
    assert "KeyError" in run.step("w").error
    assert commands == [events.CompensateStep("a")]


def test_a_signal_before_the_wait_is_kept_then_consumed() -> None:
    """Given a signal received while `a` still runs, the wait takes it as soon as it starts."""
    run, _ = state.start(LABELLED, "r", {}, T0)
    run = replace(run, signals=(PendingSignal(1, "label", {"tracking": "T"}),))
    unchanged, _ = state.advance(LABELLED, run, SignalReceived("label"), T0)
    assert unchanged.signals[0].consumed_by is None
    run, commands = _succeed(LABELLED, unchanged, "a")
    assert run.step("label").output == {"tracking": "T"}
    assert run.signals[0].consumed_by == "label"
    assert commands == [events.RunStep("b")]


def test_a_signal_while_waiting_completes_the_wait_with_its_payload() -> None:
    run, _ = state.start(LABELLED, "r", {}, T0)
    run, _ = _succeed(LABELLED, run, "a")
    assert _status(run, "label") is StepStatus.WAITING
    run = replace(run, signals=(PendingSignal(7, "label", {"tracking": "X"}),))
    run, commands = state.advance(LABELLED, run, SignalReceived("label"), T0)
    assert run.step("label").output == {"tracking": "X"}
    assert commands == [events.RunStep("b")]


def test_a_second_signal_of_the_same_name_stays_pending() -> None:
    run, _ = state.start(LABELLED, "r", {}, T0)
    run = replace(run, signals=(PendingSignal(1, "label", {"n": 1}),
                                PendingSignal(2, "label", {"n": 2})))
    run, _ = _succeed(LABELLED, run, "a")
    assert run.step("label").output == {"n": 1}
    assert [s.consumed_by for s in run.signals] == ["label", None]


@pytest.mark.parametrize(("saga", "status", "output"), [
    (LABELLED, RunStatus.COMPENSATING, None),
    (PATIENT, RunStatus.RUNNING, {"timed_out": True}),
])
def test_signal_timeout_takes_the_declared_path(saga, status, output) -> None:
    run, _ = state.start(saga, "r", {}, T0)
    run, _ = _succeed(saga, run, "a")
    run, commands = state.advance(saga, run, WakeUpDue("label"), T0 + timedelta(days=2))
    assert run.status is status
    assert run.step("label").output == output
    assert any(isinstance(c, events.Alert) for c in commands) is (saga is LABELLED)


@pytest.mark.parametrize("where", ["queued", "running", "waiting"])
def test_cancel_in_each_running_state_ends_cancelled_after_compensation(where) -> None:
    """Given a run with `a` done and its next step in some state, cancel compensates `a`."""
    run, _ = state.start(LABELLED if where == "waiting" else TIMED, "r", {}, T0)
    saga = LABELLED if where == "waiting" else TIMED
    run, fence = _claim(run, "a")
    if where != "running":
        run, _ = state.advance(saga, run, StepSucceeded("a", Role.FORWARD, fence), T0)
    run, commands = state.advance(saga, run, CancelRequested(), T0)
    assert run.status is RunStatus.COMPENSATING and run.cancel_requested
    if where == "running":  # `a` settles first, then is undone
        assert commands == []
        run, commands = state.advance(saga, run, StepSucceeded("a", Role.FORWARD, fence), T0)
    assert commands == [events.CompensateStep("a")]
    run, _ = _succeed(saga, run, "a", Role.COMPENSATE)
    assert run.status is RunStatus.CANCELLED


@pytest.mark.parametrize("status", [RunStatus.COMPENSATING, RunStatus.SUCCEEDED,
                                    RunStatus.CANCELLED, RunStatus.FAILED])
def test_cancel_changes_nothing_unless_running(status) -> None:
    run, _ = state.start(TIMED, "r", {}, T0)
    run = replace(run, status=status)
    assert state.advance(TIMED, run, CancelRequested(), T0) == (run, [])


def test_retry_requested_resumes_a_given_up_compensation_with_a_fresh_budget() -> None:
    stubborn = Saga("s", steps=[
        Step("a", noop, compensate=noop, compensate_retry=Retry(attempts=1)),
        Step("b", noop)])
    run, _ = state.start(stubborn, "r", {}, T0)
    run, _ = _succeed(stubborn, run, "a")
    run, fence = _claim(run, "b")
    run, _ = state.advance(stubborn, run, StepFailed("b", Role.FORWARD, fence, "no", False), T0)
    run, fence = _claim(run, "a", Role.COMPENSATE)
    run, commands = state.advance(stubborn, run, StepFailed("a", Role.COMPENSATE, fence, "down"), T0)
    assert run.status is RunStatus.FAILED and "compensation of 'a' failed" in run.error
    run, commands = state.advance(stubborn, run, RetryRequested(), T0)
    assert run.status is RunStatus.COMPENSATING
    assert run.step("a", Role.COMPENSATE).attempt == 0
    assert run.step("a", Role.COMPENSATE).fence == fence  # fences never go back
    assert commands == [events.CompensateStep("a")]
    run, _ = _succeed(stubborn, run, "a", Role.COMPENSATE)
    assert run.status is RunStatus.COMPENSATED


def test_retry_requested_changes_nothing_unless_failed() -> None:
    run, _ = state.start(TIMED, "r", {}, T0)
    assert state.advance(TIMED, run, RetryRequested(), T0) == (run, [])


def test_a_parked_step_resumes_on_retry() -> None:
    """Given on_timeout="park", a timed-out step waits for a person, the run flagged; retry
    resumes it."""
    careful = Saga("c", steps=[Step("a", noop, on_timeout="park")])
    run, _ = state.start(careful, "r", {}, T0)
    run, fence = _claim(run, "a")
    run, commands = state.advance(careful, run, StepFailed("a", Role.FORWARD, fence, "slow",
                                                           timed_out=True), T0)
    assert (run.status, _status(run, "a")) == (RunStatus.RUNNING, StepStatus.PARKED)
    assert "parked" in run.parked
    assert [c.reason for c in commands] == ["timeout", "parked"]
    run, commands = state.advance(careful, run, RetryRequested(), T0)
    assert (run.status, run.parked, commands) == (RunStatus.RUNNING, None, [events.RunStep("a")])


@pytest.mark.parametrize(("on_timeout", "status"), [
    ("retry", StepStatus.RETRY_WAIT), ("compensate", StepStatus.FAILED)])
def test_timeout_policy(on_timeout, status) -> None:
    saga = Saga("t", steps=[Step("a", noop, on_timeout=on_timeout, retry=Retry(attempts=3))])
    run, _ = state.start(saga, "r", {}, T0)
    run, fence = _claim(run, "a")
    run, _ = state.advance(saga, run, StepFailed("a", Role.FORWARD, fence, "slow",
                                                 timed_out=True), T0)
    assert _status(run, "a") is status


def test_deadline_compensates_a_running_run_only_when_due() -> None:
    saga = Saga("d", timeout=timedelta(hours=1), steps=[Step("a", noop, compensate=noop),
                                                          Step("b", noop)])
    run, _ = state.start(saga, "r", {}, T0)
    run, _ = _succeed(saga, run, "a")
    assert state.advance(saga, run, DeadlinePassed(), T0 + timedelta(minutes=59)) == (run, [])
    run, commands = state.advance(saga, run, DeadlinePassed(), T0 + timedelta(hours=1))
    assert run.status is RunStatus.COMPENSATING and "deadline" in run.error
    assert _status(run, "b") is StepStatus.CANCELLED
    assert events.CompensateStep("a") in commands


def test_queue_timeout_counts_as_an_attempt() -> None:
    saga = Saga("q", steps=[Step("a", noop, schedule_to_start=timedelta(seconds=5),
                                 retry=Retry(attempts=2, first_delay=timedelta(0)))])
    run, _ = state.start(saga, "r", {}, T0)
    assert run.step("a").start_by == T0 + timedelta(seconds=5)
    run, commands = state.advance(saga, run, events.QueueTimedOut("a", Role.FORWARD),
                                  T0 + timedelta(seconds=5))
    assert (run.step("a").attempt, run.step("a").status) == (1, StepStatus.QUEUED)
    run, _ = state.advance(saga, run, events.QueueTimedOut("a", Role.FORWARD),
                           T0 + timedelta(seconds=10))
    assert (run.status, run.step("a").status) == (RunStatus.COMPENSATED, StepStatus.FAILED)
