"""Transition tables for the pure run state machine (saga.state) and compensation plan."""

from __future__ import annotations

from datetime import timedelta

import pytest
from state_script import (
    BACKOFF,
    COMP,
    FWD,
    NO_WAIT,
    ONCE,
    T0,
    claim,
    cmds,
    dispatch,
    play,
    step,
    view,
)

from saga import compensation, events, state
from saga.definitions import Parallel, Retry, Saga
from saga.events import LeaseExpired, RetryDue, StepFailed, StepSucceeded, history
from saga.run import Role, RunStatus, StepState, StepStatus

SEQ = Saga("seq", steps=[step("a"), step("b"), step("c")])
FORK = Saga("fork", steps=[step("a"), Parallel(step("b"), step("c")), step("d")])


# -- start and the success path -----------------------------------------------------------

def test_start_queues_the_first_step_and_nothing_else():
    run, commands = state.start(SEQ, "run-1", {"order": 7}, T0)
    assert (run.id, run.saga, run.version, run.status) == ("run-1", "seq", 1, RunStatus.RUNNING)
    assert run.input == {"order": 7} and run.created_at == T0
    assert view(run) == {"a": "queued"}
    assert run.step("a") == StepState("a", FWD, StepStatus.QUEUED, queued_at=T0)
    assert dispatch(commands) == cmds("a")


def test_start_queues_every_member_of_a_leading_parallel_group():
    saga = Saga("p", steps=[Parallel(step("x"), [step("y1"), step("y2")]), step("z")])
    run, commands = state.start(saga, "r", None, T0)
    assert view(run) == {"x": "queued", "y1": "queued"}
    assert dispatch(commands) == cmds("x", "y1")


@pytest.mark.parametrize(("script", "expected", "commands", "status"), [
    ("", {"a": "queued"}, cmds("a"), "running"),
    ("a claim", {"a": "running"}, cmds("a"), "running"),
    ("a ok", {"a": "succeeded", "b": "queued"}, cmds("b"), "running"),
    ("a ok; b ok", {"a": "succeeded", "b": "succeeded", "c": "queued"}, cmds("c"), "running"),
    ("a ok; b ok; c ok", {"a": "succeeded", "b": "succeeded", "c": "succeeded"}, [],
     "succeeded"),
])
def test_a_sequence_runs_one_step_after_another(script, expected, commands, status):
    run, last = play(SEQ, script)
    assert view(run) == expected
    assert dispatch(last) == commands
    assert run.status == status


def test_a_succeeded_run_records_outputs_and_finish_time():
    run, _ = play(SEQ, "a ok; b ok; +5s; c ok")
    assert run.status is RunStatus.SUCCEEDED
    assert run.finished_at == T0 + timedelta(seconds=5)
    assert run.outputs == {"a": "a-out", "b": "b-out", "c": "c-out"}
    assert run.error is None
    assert run.step("b").attempt == 1 and run.step("b").lease_expires_at is None


def test_success_clears_the_error_of_an_earlier_attempt():
    saga = Saga("s", steps=[step("a", retry=NO_WAIT)])
    run, _ = play(saga, "a fail; a ok")
    assert run.step("a").error is None and run.step("a").attempt == 2


@pytest.mark.parametrize("first, second", [("b", "c"), ("c", "b")])
def test_parallel_group_joins_only_when_both_members_succeed(first, second):
    """Given a fork a -> (b | c) -> d, when b and c succeed in either order, d is queued
    exactly once, after the second."""
    run, commands = play(FORK, "a ok")
    assert dispatch(commands) == cmds("b", "c")
    run, commands = play(FORK, f"{first} ok", run)
    assert dispatch(commands) == [] and "d" not in view(run)
    run, commands = play(FORK, f"{second} ok", run)
    assert dispatch(commands) == cmds("d")
    assert view(run) == {"a": "succeeded", "b": "succeeded", "c": "succeeded", "d": "queued"}


def test_parallel_member_waits_for_its_own_sequence_only():
    saga = Saga("p", steps=[Parallel([step("a1"), step("a2")], step("b")), step("z")])
    run, commands = play(saga, "a1 ok")
    assert dispatch(commands) == cmds("a2")
    run, commands = play(saga, "b ok; a2 ok", run)
    assert dispatch(commands) == cmds("z")


def test_after_makes_a_parallel_member_wait_for_its_sibling():
    saga = Saga("p", steps=[step("a"), Parallel(step("b"), step("c", after=("b",)))])
    run, commands = play(saga, "a ok")
    assert dispatch(commands) == cmds("b")
    run, commands = play(saga, "b ok", run)
    assert dispatch(commands) == cmds("c")


# -- retryable failures ---------------------------------------------------------------------

@pytest.mark.parametrize(("retry", "before", "ending", "wait"), [
    pytest.param(BACKOFF, "", "fail", 10, id="first-failure-waits-first-delay"),
    pytest.param(BACKOFF, "b fail; b due", "fail", 20, id="second-failure-waits-double"),
    pytest.param(Retry(attempts=2, first_delay=timedelta(seconds=10), jitter=0.5), "", "fail",
                 5, id="spread-zero-waits-the-low-end-of-the-jitter"),
    pytest.param(BACKOFF, "", "expire", 10, id="expired-lease-counts-as-failure"),
])
def test_retryable_failure_with_attempts_left_waits_before_the_next_attempt(
        retry, before, ending, wait):
    """Given b may be retried, when an attempt fails, then b waits in RETRY_WAIT with
    next_attempt_at = now + the policy's delay, and nothing is dispatched yet."""
    saga = Saga("s", steps=[step("a"), step("b", retry=retry), step("c")])
    run, _ = play(saga, "a ok; " + before)
    now = T0 + timedelta(minutes=10)
    run = claim(run, "b", now)
    if ending == "fail":
        event = StepFailed("b", FWD, run.step("b").fence, "card gateway down", spread=0.0)
    else:
        now = run.step("b").lease_expires_at
        event = LeaseExpired("b", FWD, run.step("b").fence)
    run, commands = state.advance(saga, run, event, now)
    b = run.step("b")
    assert b.status is StepStatus.RETRY_WAIT
    assert b.next_attempt_at == now + timedelta(seconds=wait)
    assert b.lease_expires_at is None and b.error
    assert dispatch(commands) == [] and run.status is RunStatus.RUNNING
    assert "c" not in view(run)


def test_failure_with_zero_delay_requeues_at_once_with_a_run_step():
    saga = Saga("s", steps=[step("a"), step("b", retry=NO_WAIT)])
    run, commands = play(saga, "a ok; b fail")
    b = run.step("b")
    assert (b.status, b.attempt, b.next_attempt_at, b.error) == (
        StepStatus.QUEUED, 1, None, "b broke")
    assert dispatch(commands) == cmds("b")
    run, commands = play(saga, "b fail", run)
    assert (run.step("b").status, run.step("b").attempt, commands) == (
        StepStatus.QUEUED, 2, cmds("b"))


@pytest.mark.parametrize(("delay", "status", "commands"), [
    (timedelta(seconds=-1), StepStatus.RETRY_WAIT, []),
    (timedelta(0), StepStatus.QUEUED, cmds("b")),
    (timedelta(seconds=1), StepStatus.QUEUED, cmds("b")),
    (timedelta(minutes=5), StepStatus.QUEUED, cmds("b")),
])
def test_retry_due_fires_only_once_the_wait_is_over(delay, status, commands):
    """Given b waits until T, when RetryDue arrives at T + delay, then b is queued and
    dispatched only if T + delay >= T."""
    saga = Saga("s", steps=[step("a"), step("b", retry=BACKOFF)])
    run, _ = play(saga, "a ok; b fail")
    due = run.step("b").next_attempt_at
    new, out = state.advance(saga, run, RetryDue("b", FWD), due + delay)
    assert new.step("b").status is status
    assert dispatch(out) == commands
    if status is StepStatus.RETRY_WAIT:
        assert new == run
    else:
        assert new.step("b").next_attempt_at is None
        assert new.step("b").queued_at == due + delay


def test_retry_due_for_a_step_that_is_not_waiting_changes_nothing():
    run, _ = play(FORK, "a ok")
    for event in (RetryDue("a", FWD), RetryDue("b", FWD), RetryDue("d", FWD),
                  RetryDue("a", COMP)):
        assert state.advance(FORK, run, event, T0 + timedelta(days=1)) == (run, [])


# -- giving up: compensation ------------------------------------------------------------------

@pytest.mark.parametrize("script", [
    pytest.param("b fail!", id="non-retryable"),
    pytest.param("b fail; b due; b fail", id="attempts-exhausted"),
    pytest.param("b claim; b expire; b due; b claim; b expire", id="leases-exhausted"),
])
def test_a_step_that_gives_up_turns_the_run_to_compensation(script):
    saga = Saga("s", steps=[step("a"), step("b", retry=Retry(attempts=2, jitter=0)), step("c")])
    run, commands = play(saga, "a ok; " + script)
    assert run.status is RunStatus.COMPENSATING
    assert run.step("b").status is StepStatus.FAILED
    assert "'b'" in run.error
    assert view(run) == {"a": "succeeded", "b": "failed", "~b": "queued"}
    assert dispatch(commands) == cmds("~b")


WIDE = Saga("wide", steps=[
    step("a"),
    Parallel(step("p"), step("q"), step("r", retry=BACKOFF), step("s"), step("t", comp=False)),
    step("z"),
])


def test_giving_up_cancels_queued_and_waiting_steps_and_lets_running_ones_settle():
    """Given p queued, q running, r waiting to retry and t succeeded, when s fails for good,
    then p and r are cancelled, q keeps running, and only steps that started are undone."""
    run, _ = play(WIDE, "a ok; q claim; r fail; t ok")
    assert view(run)["r"] == "retry_wait"
    run, commands = play(WIDE, "s fail!", run, now=T0 + timedelta(seconds=3))
    assert run.status is RunStatus.COMPENSATING
    assert run.error == "step 's' failed: s broke"
    assert view(run) == {
        "a": "succeeded", "p": "cancelled", "q": "running", "r": "cancelled", "s": "failed",
        "t": "succeeded", "~r": "queued", "~s": "queued",
    }
    assert run.step("p").finished_at == T0 + timedelta(seconds=3)
    assert run.step("r").next_attempt_at is None
    # p never started (attempt 0): nothing to undo. r and s started, so both are undone;
    # t has no compensation; a waits for q to settle.
    assert dispatch(commands) == cmds("~s", "~r")


@pytest.mark.parametrize(("outcome", "q_status"), [
    ("q ok", "succeeded"),
    ("q fail", "failed"),  # attempts left, but a compensating run does not retry forward
    ("q fail!", "failed"),
    ("q expire", "failed"),
])
def test_a_sibling_still_running_settles_first_and_is_then_compensated(outcome, q_status):
    saga = Saga("s", steps=[step("a"), Parallel(step("q", retry=NO_WAIT), step("s")),
                            step("z")])
    run, _ = play(saga, "a ok; q claim; s fail!")
    assert view(run) == {"a": "succeeded", "q": "running", "s": "failed", "~s": "queued"}
    run, commands = play(saga, outcome, run)
    assert view(run)["q"] == q_status
    assert "z" not in view(run)  # a late success never moves the run forward again
    assert dispatch(commands) == cmds("~q")
    run, commands = play(saga, "~s ok", run)
    assert dispatch(commands) == []  # a still waits for q's compensation
    run, commands = play(saga, "~q ok", run)
    assert dispatch(commands) == cmds("~a")


def test_giving_up_with_nothing_to_undo_ends_the_run_compensated():
    saga = Saga("s", steps=[step("a", comp=False), step("b", comp=False)])
    run, commands = play(saga, "a ok; +1s; b fail!")
    assert run.status is RunStatus.COMPENSATED
    assert run.finished_at == T0 + timedelta(seconds=1)
    assert run.error == "step 'b' failed: b broke"
    assert dispatch(commands) == []


@pytest.mark.parametrize(("saga", "steps"), [
    pytest.param(SEQ, ["~c", "~b", "~a"], id="every-step-has-a-compensation"),
    pytest.param(Saga("s", steps=[step("a"), step("b"), step("c", comp=False)]),
                 ["~b", "~a"], id="failed-step-without-compensation"),
    pytest.param(Saga("s", steps=[step("a"), step("b", comp=False), step("c")]),
                 ["~c", "~a"], id="middle-step-without-compensation"),
    pytest.param(Saga("s", steps=[step("a", comp=False), step("b", comp=False), step("c")]),
                 ["~c"], id="only-the-failed-step-to-undo"),
])
def test_compensations_run_in_reverse_order(saga, steps):
    """Given a -> b -> c failing at c after it started, then c (if it has a compensation),
    then b, then a are compensated, one at a time, and the run ends COMPENSATED."""
    run, commands = play(saga, "a ok; b ok; c fail!")
    seen = []
    while commands:
        assert len(commands) == 1
        seen.append("~" + commands[0].step)
        run, commands = play(saga, f"{seen[-1]} ok", run)
    assert seen == steps
    assert run.status is RunStatus.COMPENSATED
    assert all(view(run)[undo] == "succeeded" for undo in steps)


def test_a_step_that_never_started_is_not_compensated():
    run, commands = play(SEQ, "a ok; b fail!")
    assert dispatch(commands) == cmds("~b")
    run, commands = play(SEQ, "~b ok", run)
    run, commands = play(SEQ, "~a ok", run)
    assert run.status is RunStatus.COMPENSATED
    assert "c" not in view(run) and "~c" not in view(run)


def test_members_of_a_parallel_group_are_compensated_in_parallel():
    run, commands = play(FORK, "a ok; b ok; c ok; d fail!")
    assert dispatch(commands) == cmds("~d")
    run, commands = play(FORK, "~d ok", run)
    assert dispatch(commands) == cmds("~c", "~b")
    run, commands = play(FORK, "~b ok", run)
    assert dispatch(commands) == []
    run, commands = play(FORK, "~c ok", run)
    assert dispatch(commands) == cmds("~a")
    run, commands = play(FORK, "~a ok", run)
    assert (run.status, commands) == (RunStatus.COMPENSATED, [])


def test_a_compensation_with_attempts_left_retries_after_its_delay():
    run, _ = play(SEQ, "a ok; b fail!; ~b ok")
    run, commands = play(SEQ, "~a fail", run)
    undo = run.step("a", COMP)
    assert (undo.status, undo.next_attempt_at, commands) == (
        StepStatus.RETRY_WAIT, T0 + timedelta(seconds=5), [])
    assert run.status is RunStatus.COMPENSATING
    run, commands = play(SEQ, "~a due", run)
    assert (run.step("a", COMP).status, commands) == (StepStatus.QUEUED, cmds("~a"))
    run, _ = play(SEQ, "~a ok", run)
    assert run.status is RunStatus.COMPENSATED
    assert run.step("a", COMP).attempt == 2


def test_a_compensation_with_zero_delay_is_requeued_at_once():
    saga = Saga("s", steps=[step("a", comp_retry=NO_WAIT), step("b", comp=False)])
    run, commands = play(saga, "a ok; b fail!; ~a fail")
    assert (run.step("a", COMP).status, commands) == (StepStatus.QUEUED, cmds("~a"))


@pytest.mark.parametrize("script", [
    pytest.param("~a fail; ~a due; ~a fail; ~a due; ~a fail", id="attempts-exhausted"),
    pytest.param("~a fail!", id="non-retryable"),
    pytest.param("~a claim; ~a expire; ~a due; ~a claim; ~a expire; ~a due; ~a claim; "
                 "~a expire", id="leases-exhausted"),
])
def test_a_compensation_that_gives_up_fails_the_run_naming_the_step(script):
    run, _ = play(SEQ, "a ok; b fail!; ~b ok")
    run, commands = play(SEQ, script, run)
    assert run.status is RunStatus.FAILED
    assert run.finished_at is not None
    assert "step 'b' failed: b broke" in run.error
    assert "compensation of 'a' failed" in run.error
    assert dispatch(commands) == []
    assert run.step("a", COMP).status is StepStatus.FAILED


def test_a_running_sibling_compensation_still_settles_when_another_gives_up():
    saga = Saga("s", steps=[Parallel(step("b"), step("c", comp_retry=ONCE)),
                            step("d", comp=False)])
    run, commands = play(saga, "b ok; c ok; d fail!")
    assert dispatch(commands) == cmds("~c", "~b")
    run, _ = play(saga, "~b claim; ~c fail", run)
    run, commands = play(saga, "~b ok", run)
    assert dispatch(commands) == []
    assert run.status is RunStatus.FAILED
    assert view(run)["~b"] == "succeeded"
    assert "compensation of 'c' failed" in run.error


@pytest.mark.parametrize("sibling", ["", "~b claim; ~b fail"], ids=["queued", "retry-waiting"])
def test_a_failed_run_strands_no_sibling_compensation(sibling):
    """Given b's and c's compensations both in flight, when c's gives up, then b's either
    still runs to its end before the run turns FAILED, or the FAILED run holds no step
    that can never run (the sweeper would find a stranded RETRY_WAIT due on every pass)."""
    saga = Saga("s", steps=[Parallel(step("b"), step("c", comp_retry=ONCE)),
                            step("d", comp=False)])
    run, _ = play(saga, "b ok; c ok; d fail!; " + sibling)
    run, _ = play(saga, "~c fail", run)
    if run.status.terminal:
        assert [n for n, s in view(run).items() if s in ("queued", "retry_wait")] == []
    else:
        assert run.status is RunStatus.COMPENSATING
        run, _ = play(saga, "~b due" if view(run)["~b"] == "retry_wait" else "", run)
        run, _ = play(saga, "~b ok", run)
        assert run.status is RunStatus.FAILED and view(run)["~b"] == "succeeded"


def test_a_forward_step_settling_after_a_compensation_gave_up_ends_the_run_failed():
    """Given x still running when c1's compensation gives up, the run waits for x to settle
    (starting nothing new), then ends FAILED with x recorded and nothing more dispatched."""
    saga = Saga("s", steps=[Parallel(step("x"), [step("c1", comp_retry=ONCE),
                                                 step("c2", comp=False)])])
    run, commands = play(saga, "x claim; c1 ok; c2 fail!")
    assert dispatch(commands) == cmds("~c1")
    run, commands = play(saga, "~c1 fail", run)
    assert run.status is RunStatus.COMPENSATING and view(run)["x"] == "running"
    assert dispatch(commands) == []
    run, commands = play(saga, "x ok", run)
    assert dispatch(commands) == [] and run.status is RunStatus.FAILED
    assert view(run)["x"] == "succeeded" and "~x" not in view(run)


# -- leases, fences, stale and duplicate events --------------------------------------------------

@pytest.mark.parametrize(("offset", "expires"), [
    (timedelta(seconds=-1), False),
    (timedelta(microseconds=-1), False),
    (timedelta(0), True),
    (timedelta(hours=1), True),
])
def test_lease_expired_fails_the_attempt_only_once_the_lease_ran_out(offset, expires):
    saga = Saga("s", steps=[step("a", retry=BACKOFF)])
    run, _ = play(saga, "a claim")
    lease = run.step("a").lease_expires_at
    new, commands = state.advance(saga, run, LeaseExpired("a", FWD, 1), lease + offset)
    if expires:
        assert new.step("a").status is StepStatus.RETRY_WAIT
        assert "lease" in new.step("a").error and "attempt 1" in new.step("a").error
        assert [c for c in commands if isinstance(c, events.Alert)] == [
            events.Alert("timeout", f"forward 'a' attempt 1 timed out: {new.step('a').error}",
                        "a")]
    else:
        assert (new, commands) == (run, [])


@pytest.mark.parametrize("make_event", [
    pytest.param(lambda: StepSucceeded("a", FWD, fence=1), id="success-from-old-fence"),
    pytest.param(lambda: StepFailed("a", FWD, fence=1, error="x"), id="failure-from-old-fence"),
    pytest.param(lambda: LeaseExpired("a", FWD, fence=1), id="lease-expired-for-old-fence"),
    pytest.param(lambda: StepSucceeded("a", FWD, fence=3), id="success-from-future-fence"),
    pytest.param(lambda: StepSucceeded("nope", FWD, fence=2), id="unknown-step"),
    pytest.param(lambda: StepSucceeded("a", COMP, fence=2), id="compensation-not-recorded"),
    pytest.param(lambda: RetryDue("a", FWD), id="retry-due-while-running"),
    pytest.param(lambda: StepFailed("b", FWD, fence=0, error="x"), id="step-never-claimed"),
])
def test_stale_events_change_nothing(make_event):
    """Given a's first lease expired and a second worker claimed it (fence 2), events from
    the first worker or about steps that are not running leave the run as it is."""
    saga = Saga("s", steps=[Parallel(step("a", retry=NO_WAIT), step("b"))])
    run, _ = play(saga, "a claim; a expire; a claim")
    assert run.step("a").fence == 2
    assert state.advance(saga, run, make_event(), T0 + timedelta(hours=1)) == (run, [])


@pytest.mark.parametrize("script, event", [
    pytest.param("a ok", StepSucceeded("a", FWD, 1), id="success-twice"),
    pytest.param("a ok", StepFailed("a", FWD, 1, "late"), id="failure-after-success"),
    pytest.param("a ok", LeaseExpired("a", FWD, 1), id="lease-expired-after-success"),
    pytest.param("a fail!", StepFailed("a", FWD, 1, "again", retryable=False),
                 id="failure-twice"),
    pytest.param("a fail!", StepSucceeded("a", FWD, 1), id="success-after-failure"),
    pytest.param("a fail", StepFailed("a", FWD, 1, "again"), id="failure-twice-while-waiting"),
    pytest.param("a fail; a due", RetryDue("a", FWD), id="retry-due-twice"),
    pytest.param("a fail!; ~a ok", StepSucceeded("a", COMP, 1), id="compensation-twice"),
    pytest.param("a ok; b ok; c ok", StepSucceeded("c", FWD, 1), id="after-the-run-ended"),
])
def test_duplicate_events_change_nothing(script, event):
    saga = Saga("s", steps=[step("a", retry=BACKOFF), step("b"), step("c")])
    run, _ = play(saga, script)
    assert state.advance(saga, run, event, T0 + timedelta(hours=1)) == (run, [])


def test_a_retry_does_not_accept_the_previous_attempts_result():
    saga = Saga("s", steps=[step("a", retry=NO_WAIT), step("b")])
    run, _ = play(saga, "a fail; a claim")
    assert run.step("a").fence == 2
    assert state.advance(saga, run, StepSucceeded("a", FWD, 1), T0) == (run, [])
    run, commands = state.advance(saga, run, StepSucceeded("a", FWD, 2), T0)
    assert dispatch(commands) == cmds("b")


# -- the compensation plan, directly ----------------------------------------------------------

def forward(name: str, status: StepStatus, attempt: int) -> tuple[tuple[str, Role], StepState]:
    """A recorded forward step; `attempt` claims so far (each claim records started_at)."""
    return (name, FWD), StepState(name, FWD, status, attempt=attempt, fence=attempt,
                                  started_at=T0 if attempt else None)


@pytest.mark.parametrize(("recorded", "has_compensation", "needed"), [
    (None, True, False),
    ((StepStatus.SUCCEEDED, 1), False, False),
    ((StepStatus.CANCELLED, 0), True, False),
    ((StepStatus.QUEUED, 0), True, False),
    ((StepStatus.RUNNING, 1), True, False),
    ((StepStatus.RETRY_WAIT, 1), True, False),
    ((StepStatus.SUCCEEDED, 1), True, True),
    ((StepStatus.FAILED, 2), True, True),
    ((StepStatus.CANCELLED, 1), True, True),
])
def test_needs_compensation_only_for_settled_steps_that_started(recorded, has_compensation,
                                                                needed):
    saga = Saga("s", steps=[step("a", comp=has_compensation)])
    steps = dict([forward("a", *recorded)]) if recorded else {}
    assert compensation.needs_compensation(saga, steps, "a") is needed


def test_ready_lists_latest_first_and_finished_waits_for_every_compensation():
    steps = dict([forward("a", StepStatus.SUCCEEDED, 1), forward("b", StepStatus.SUCCEEDED, 1),
                  forward("c", StepStatus.SUCCEEDED, 1), forward("d", StepStatus.FAILED, 1)])
    assert compensation.ready(FORK, steps) == ["d"]
    assert not compensation.finished(FORK, steps)
    steps[("d", COMP)] = StepState("d", COMP, StepStatus.SUCCEEDED, attempt=1)
    assert compensation.ready(FORK, steps) == ["c", "b"]
    steps[("c", COMP)] = StepState("c", COMP, StepStatus.RUNNING, attempt=1)
    steps[("b", COMP)] = StepState("b", COMP, StepStatus.SUCCEEDED, attempt=1)
    assert compensation.ready(FORK, steps) == []
    steps[("c", COMP)] = StepState("c", COMP, StepStatus.SUCCEEDED, attempt=1)
    assert compensation.ready(FORK, steps) == ["a"]
    steps[("a", COMP)] = StepState("a", COMP, StepStatus.SUCCEEDED, attempt=1)
    assert compensation.ready(FORK, steps) == [] and compensation.finished(FORK, steps)


def test_nothing_is_finished_while_a_forward_step_may_still_run():
    steps = dict([forward("a", StepStatus.SUCCEEDED, 1), forward("b", StepStatus.RUNNING, 1),
                  forward("c", StepStatus.FAILED, 1)])
    steps[("c", COMP)] = StepState("c", COMP, StepStatus.SUCCEEDED, attempt=1)
    assert compensation.ready(FORK, steps) == []
    assert not compensation.finished(FORK, steps)


# -- transitions(): the event log entries --------------------------------------------------------

def test_transitions_of_a_new_run_start_with_run_started():
    run, _ = state.start(FORK, "r", None, T0)
    assert history(None, run) == [
        {"type": "run.started", "step": None, "role": None, "attempt": None, "data": {}},
        {"type": "step.queued", "step": "a", "role": "forward", "attempt": 0, "data": {}},
    ]


def test_transitions_list_each_changed_step_then_the_run_status():
    before, _ = play(SEQ, "a ok; b ok; c claim")
    after, _ = play(SEQ, "c ok", before)
    assert history(before, after) == [
        {"type": "step.succeeded", "step": "c", "role": "forward", "attempt": 1, "data": {}},
        {"type": "run.succeeded", "step": None, "role": None, "attempt": None, "data": {}},
    ]


def test_transitions_of_turning_to_compensation_carry_the_errors():
    before, _ = play(WIDE, "a ok; q claim; r fail; s claim")
    after, _ = play(WIDE, "s fail!", before)
    entries = history(before, after)
    assert entries[-1] == {"type": "run.compensating", "step": None, "role": None,
                           "attempt": None, "data": {"error": "step 's' failed: s broke"}}
    by_step = {(e["type"], e["step"]): e for e in entries[:-1]}
    assert set(by_step) == {("step.failed", "s"), ("step.cancelled", "p"),
                            ("step.cancelled", "r"), ("step.cancelled", "t"),
                            ("compensation.queued", "s"),
                            ("compensation.queued", "r")}
    assert by_step[("step.failed", "s")]["data"] == {"error": "s broke"}
    assert by_step[("compensation.queued", "s")]["role"] == "compensate"


def test_transitions_of_a_retry_wait_carry_error_and_next_attempt_time():
    saga = Saga("s", steps=[step("a", retry=BACKOFF)])
    before, _ = play(saga, "a claim")
    after, _ = play(saga, "a fail", before)
    assert history(before, after) == [
        {"type": "step.retry_wait", "step": "a", "role": "forward", "attempt": 1,
         "data": {"error": "a broke",
                  "next_attempt_at": (T0 + timedelta(seconds=10)).isoformat()}},
    ]


def test_transitions_of_an_unchanged_run_are_empty():
    run, _ = play(FORK, "a ok; b claim")
    assert history(run, run) == []
