"""State tables for time limits, parking, schedule-to-start, deadlines, repair and cancel."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from state_script import COMP, FWD, ONCE, T0, cmds, dispatch, play, step, view

from saga import state
from saga.definitions import Parallel, Retry, Saga, Wait, WaitForSignal
from saga.events import (
    Alert,
    CancelRequested,
    DeadlinePassed,
    QueueTimedOut,
    RetryRequested,
    SignalReceived,
    history,
)
from saga.run import PendingSignal, Run, RunStatus, StepStatus

THREE = Retry(attempts=3, first_delay=timedelta(seconds=10), jitter=0)


def alerts(commands: list) -> list[tuple[str, str | None]]:
    return [(c.reason, c.step) for c in commands if isinstance(c, Alert)]


# -- a step's time limits and on_timeout --------------------------------------------------------

@pytest.mark.parametrize("timeout", ["expire", "timeout"], ids=["lease-expired", "soft-limit"])
@pytest.mark.parametrize(("on_timeout", "b_status", "run_status"), [
    ("retry", "retry_wait", "running"),
    ("compensate", "failed", "compensating"),
    ("park", "parked", "running"),
])
def test_a_timed_out_attempt_follows_the_steps_on_timeout_policy(timeout, on_timeout, b_status,
                                                                 run_status):
    """Given b has attempts left, when an attempt times out (its lease ran out, or the soft
    limit raised), then on_timeout decides: retry it, compensate now, or park it for a person."""
    saga = Saga("s", steps=[step("a"), step("b", retry=THREE, on_timeout=on_timeout)])
    run, commands = play(saga, f"a ok; b {timeout}")
    assert (view(run)["b"], run.status) == (b_status, run_status)
    expected = [("timeout", "b")] + ([("parked", "b")] if on_timeout == "park" else [])
    assert alerts(commands) == expected


def test_a_parked_step_flags_the_run_with_a_reason_naming_the_step():
    """Given b parks, the run keeps running (siblings go on) but waits for a person, flagged."""
    saga = Saga("s", steps=[step("a"), step("b", on_timeout="park")])
    run, commands = play(saga, "a ok; +3s; b timeout")
    assert run.status is RunStatus.RUNNING and run.finished_at is None
    assert run.parked == "step 'b' parked after a timeout: soft time limit"
    assert dispatch(commands) == [] and "~a" not in view(run)


def test_a_plain_failure_is_no_timeout_whatever_on_timeout_says():
    saga = Saga("s", steps=[step("a", retry=THREE, on_timeout="park")])
    run, commands = play(saga, "a fail")
    assert (view(run)["a"], alerts(commands)) == ("retry_wait", [])


def test_a_compensation_that_times_out_is_retried_and_never_parks():
    saga = Saga("s", steps=[step("a", on_timeout="park"), step("b", comp=False)])
    run, commands = play(saga, "a ok; b fail!; ~a expire")
    assert run.status is RunStatus.COMPENSATING
    assert view(run)["~a"] == "retry_wait"
    assert alerts(commands) == [("timeout", "a")]


def test_a_sibling_timing_out_while_compensating_settles_as_failed_not_parked():
    saga = Saga("s", steps=[Parallel(step("p", retry=THREE, on_timeout="park"),
                                     step("q", comp=False))])
    run, _ = play(saga, "p claim; q fail!")
    run, commands = play(saga, "p expire", run)
    assert view(run)["p"] == "failed"
    assert dispatch(commands) == cmds("~p")


# -- schedule-to-start ------------------------------------------------------------------------------

QUEUE_LIMIT = timedelta(seconds=10)


def test_a_queued_step_carries_its_schedule_to_start_deadline():
    saga = Saga("s", steps=[step("a", schedule_to_start=QUEUE_LIMIT, retry=THREE)])
    run, _ = play(saga, "")
    assert run.step("a").start_by == T0 + QUEUE_LIMIT
    run, _ = play(saga, "a fail; a due", run)
    assert run.step("a").start_by == T0 + timedelta(seconds=10) + QUEUE_LIMIT


@pytest.mark.parametrize(("script", "at"), [
    pytest.param("", T0 + QUEUE_LIMIT - timedelta(microseconds=1), id="not-yet"),
    pytest.param("a claim", T0 + QUEUE_LIMIT, id="already-claimed"),
    pytest.param("a ok", T0 + QUEUE_LIMIT, id="already-done"),
])
def test_queue_timed_out_changes_nothing_unless_the_step_is_still_queued_past_its_limit(
        script, at):
    saga = Saga("s", steps=[step("a", schedule_to_start=QUEUE_LIMIT, retry=THREE), step("b")])
    run, _ = play(saga, script)
    assert state.advance(saga, run, QueueTimedOut("a", FWD), at) == (run, [])


def test_queue_timed_out_without_a_limit_changes_nothing():
    saga = Saga("s", steps=[step("a")])
    run, _ = play(saga, "")
    assert state.advance(saga, run, QueueTimedOut("a", FWD), T0 + timedelta(days=9)) == (run, [])


@pytest.mark.parametrize(("retry", "on_timeout", "a_status", "run_status"), [
    (THREE, "retry", "retry_wait", "running"),
    (ONCE, "retry", "failed", "compensated"),
    (THREE, "compensate", "failed", "compensated"),
    (THREE, "park", "parked", "running"),
])
def test_a_step_not_started_in_time_counts_an_attempt(retry, on_timeout, a_status, run_status):
    saga = Saga("s", steps=[step("a", comp=False, retry=retry, on_timeout=on_timeout,
                                 schedule_to_start=QUEUE_LIMIT)])
    run, _ = play(saga, "")
    run, commands = state.advance(saga, run, QueueTimedOut("a", FWD), T0 + QUEUE_LIMIT)
    assert (view(run)["a"], run.status, run.step("a").attempt) == (a_status, run_status, 1)
    assert alerts(commands)[0] == ("timeout", "a")


def test_a_step_that_was_never_claimed_is_not_compensated():
    """Given b timed out in the queue (no worker ever ran it), when the run compensates,
    then only a is undone: compensating b would undo something that never happened."""
    saga = Saga("s", steps=[step("a"), step("b", schedule_to_start=QUEUE_LIMIT,
                                             on_timeout="compensate")])
    run, _ = play(saga, "a ok")
    run, commands = state.advance(saga, run, QueueTimedOut("b", FWD), T0 + QUEUE_LIMIT)
    assert run.step("b").started_at is None
    assert dispatch(commands) == cmds("~a")
    assert "~b" not in view(run)


# -- the saga's deadline ----------------------------------------------------------------------------

DEADLINED = Saga("d", timeout=timedelta(hours=1), steps=[
    step("a"), Parallel(step("b"), step("c"), step("e")), step("z")])


def test_start_sets_the_deadline_from_the_saga_timeout():
    assert play(DEADLINED, "")[0].deadline_at == T0 + timedelta(hours=1)
    assert play(Saga("s", steps=[step("a")]), "")[0].deadline_at is None


@pytest.mark.parametrize(("script", "at"), [
    pytest.param("a ok", T0 + timedelta(minutes=59), id="before-the-deadline"),
    pytest.param("a ok; b fail!", T0 + timedelta(hours=2), id="already-compensating"),
    pytest.param("a ok; b ok; c ok; e ok; z ok", T0 + timedelta(hours=2), id="already-done"),
])
def test_deadline_passed_changes_nothing_before_it_or_after_the_run_moved_on(script, at):
    run, _ = play(DEADLINED, script)
    assert state.advance(DEADLINED, run, DeadlinePassed(), at) == (run, [])


def test_deadline_passed_changes_nothing_without_a_deadline():
    saga = Saga("s", steps=[step("a")])
    run, _ = play(saga, "")
    assert state.advance(saga, run, DeadlinePassed(), T0 + timedelta(days=999)) == (run, [])


def test_a_passed_deadline_compensates_the_run_and_alerts():
    """Given b done, c running and e queued at the deadline, then e is cancelled, c left to
    settle, b compensated, and a person is told."""
    run, _ = play(DEADLINED, "a ok; b ok; c claim")
    at = T0 + timedelta(hours=1)
    run, commands = state.advance(DEADLINED, run, DeadlinePassed(), at)
    assert run.status is RunStatus.COMPENSATING
    assert run.error == f"the saga's deadline passed at {at.isoformat()}"
    assert view(run) == {"a": "succeeded", "b": "succeeded", "c": "running", "e": "cancelled",
                         "~b": "queued"}
    assert commands[0] == Alert("timeout", run.error)
    assert dispatch(commands) == cmds("~b")


# -- a person retries a failed run --------------------------------------------------------------------

@pytest.mark.parametrize("script", ["", "a ok; b fail!", "a ok; b ok; c ok"],
                         ids=["running", "compensated", "succeeded"])
def test_retry_requested_changes_nothing_unless_the_run_failed(script):
    saga = Saga("s", steps=[step("a"), step("b", comp=False), step("c")])
    run, _ = play(saga, script)
    assert state.advance(saga, run, RetryRequested(), T0) == (run, [])


def test_retrying_a_failed_run_compensates_a_step_that_settled_after_it_failed():
    saga = Saga("s", steps=[Parallel(step("x"), [step("c1", comp_retry=ONCE),
                                                 step("c2", comp=False)])])
    run, _ = play(saga, "x claim; c1 ok; c2 fail!; ~c1 fail; x ok")
    assert run.status is RunStatus.FAILED and "~x" not in view(run)
    run, commands = state.advance(saga, run, RetryRequested(), T0)
    assert sorted(map(str, dispatch(commands))) == sorted(map(str, cmds("~c1", "~x")))


@pytest.mark.parametrize("while_parked", ["queue-timeout", "retryable-failure"])
def test_retrying_a_parked_run_resumes_it_whatever_its_siblings_did_meanwhile(while_parked):
    saga = Saga("s", steps=[Parallel(step("p", on_timeout="park"),
                                     step("q", retry=THREE, schedule_to_start=QUEUE_LIMIT))])
    if while_parked == "queue-timeout":
        run, _ = play(saga, "p expire")
        run, _ = state.advance(saga, run, QueueTimedOut("q", FWD), T0 + timedelta(minutes=5))
    else:
        run, _ = play(saga, "q claim; p expire; q fail")
    assert run.status is RunStatus.RUNNING and run.parked
    run, commands = state.advance(saga, run, RetryRequested(), T0 + timedelta(hours=1))
    assert run.status is RunStatus.RUNNING, run.error
    assert view(run)["p"] == "queued" and view(run)["q"] in ("queued", "retry_wait")
    assert not [c for c in commands if c.role is COMP]


# -- cancellation --------------------------------------------------------------------------------------

def test_cancel_with_nothing_done_ends_cancelled_at_once():
    saga = Saga("s", steps=[step("a"), step("b")])
    run, _ = play(saga, "")
    run, commands = state.advance(saga, run, CancelRequested(), T0)
    assert (run.status, view(run), commands) == (RunStatus.CANCELLED, {"a": "cancelled"}, [])


def test_a_cancelled_run_whose_compensation_gives_up_is_failed():
    saga = Saga("s", steps=[step("a", comp_retry=ONCE), step("b")])
    run, _ = play(saga, "a ok")
    run, _ = state.advance(saga, run, CancelRequested(), T0)
    run, _ = play(saga, "~a fail", run)
    assert run.status is RunStatus.FAILED


# -- durable timers --------------------------------------------------------------------------------------

def test_a_waiting_timer_is_cancelled_when_the_run_turns_to_compensation():
    saga = Saga("s", steps=[Parallel(Wait("hold", duration=timedelta(days=1)), step("b"))])
    run, _ = play(saga, "b fail!")
    assert view(run)["hold"] == "cancelled" and run.step("hold").wake_at is None


def test_a_timer_until_a_naive_time_fails_the_step():
    saga = Saga("s", steps=[step("a"), Wait("trial", until=lambda i, o: datetime(2030, 1, 1)),
                            step("b")])
    run, commands = play(saga, "a ok")
    assert (view(run)["trial"], run.status) == ("failed", RunStatus.COMPENSATING)
    assert "aware datetime" in run.step("trial").error
    assert dispatch(commands) == cmds("~a")


# -- signals -------------------------------------------------------------------------------------------------

SHIPPING = Saga("ship", steps=[
    step("a"), WaitForSignal("label", timeout=timedelta(days=2)), step("b")])


def signalled(run: Run, name: str, payload, id: int = 1) -> Run:
    """What the store does before SignalReceived: record the signal with the run."""
    return replace(run, signals=(*run.signals, PendingSignal(id, name, payload)))


def test_a_signal_of_another_name_is_not_consumed():
    run, _ = play(SHIPPING, "a ok")
    run = signalled(run, "refund", {})
    new, commands = state.advance(SHIPPING, run, SignalReceived("refund"), T0)
    assert new.step("label").status is StepStatus.WAITING and commands == []
    assert new.signals[0].consumed_by is None


def test_transitions_mark_a_waiting_step_with_its_wake_time():
    before, _ = play(SHIPPING, "a claim")
    after, _ = play(SHIPPING, "a ok", before)
    assert [e for e in history(before, after) if e["step"] == "label"] == [
        {"type": "step.waiting", "step": "label", "role": "forward", "attempt": 0,
         "data": {"wake_at": (T0 + timedelta(days=2)).isoformat()}}]
