"""The timeline rebuilt from events alone: attempts, the state at a moment, and its text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import count

import pytest

from saga.cli.history import parse_when
from saga.timeline import (
    Attempt,
    attempts,
    duration,
    render,
    render_events,
    render_state,
    state_at,
)

T0 = datetime(2025, 5, 1, 3, 0, tzinfo=UTC)
_ids = count(1)


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def ev(ms: int, type: str, step: str | None = None, attempt: int | None = None,
       worker: str | None = None, **data) -> dict:
    """An event as `Store.events` returns it; the role follows the type's family."""
    family = type.split(".")[0]
    role = {"step": "forward", "compensation": "compensate"}.get(family) if step else None
    return {"id": next(_ids), "at": at(ms), "type": type, "step": step, "role": role,
            "attempt": attempt, "worker": worker, "data": data}


RUN = {"id": "r-1", "saga": "charge", "version": 2, "status": "compensated",
       "error": "step 'charge' failed: declined", "created_at": T0, "finished_at": at(900)}

# A run whose charge fails once (retry after a wait), then for good, and is compensated.
HISTORY = [
    ev(0, "run.started"),
    ev(0, "step.queued", "reserve", 0),
    ev(10, "step.running", "reserve", 1, "w1", fence=1),
    ev(80, "step.succeeded", "reserve", 1),
    ev(80, "step.queued", "charge", 0),
    ev(100, "step.running", "charge", 1, "w2", fence=1),
    ev(150, "step.retry_wait", "charge", 1, error="Timeout: bank",
       next_attempt_at=at(350).isoformat()),
    ev(350, "step.queued", "charge", 1, error="Timeout: bank"),
    ev(400, "step.running", "charge", 2, "w1", fence=2),
    ev(450, "run.compensating", error="step 'charge' failed: declined"),
    ev(450, "step.failed", "charge", 2, error="declined"),
    ev(450, "compensation.queued", "reserve", 0),
    ev(600, "compensation.running", "reserve", 1, "w2", fence=1),
    ev(900, "run.compensated", error="step 'charge' failed: declined"),
    ev(900, "compensation.succeeded", "reserve", 1),
]


# -- attempts -------------------------------------------------------------------------

def test_each_claim_is_an_attempt_closed_by_the_next_outcome_of_its_step():
    """Given a retried step and a compensation, Then one attempt per claim, in start order."""
    found = attempts(HISTORY)
    assert [(a.step, a.role, a.attempt, a.outcome) for a in found] == [
        ("reserve", "forward", 1, "succeeded"),
        ("charge", "forward", 1, "failed, will retry"),
        ("charge", "forward", 2, "failed"),
        ("reserve", "compensate", 1, "succeeded"),
    ]
    reserve, first, second, undo = found
    assert (reserve.started_at, reserve.ended_at, reserve.duration) == (at(10), at(80),
                                                                        timedelta(milliseconds=70))
    assert (reserve.worker, reserve.fence, reserve.error) == ("w1", 1, None)
    assert (first.error, first.retry_at) == ("Timeout: bank", at(350).isoformat())
    assert (second.worker, second.error) == ("w1", "declined")
    assert undo.worker == "w2" and undo.duration == timedelta(milliseconds=300)


@pytest.mark.parametrize("closing, outcome", [
    ("succeeded", "succeeded"), ("failed", "failed"), ("retry_wait", "failed, will retry"),
    ("queued", "failed, requeued"), ("parked", "parked"), ("cancelled", "cancelled"),
])
def test_the_closing_event_names_the_outcome(closing, outcome):
    """Given a claim and then `closing`, Then the attempt ended then with that outcome."""
    [only] = attempts([ev(0, "step.running", "s", 1, "w", fence=1),
                       ev(5, f"step.{closing}", "s", 1, error="boom")])
    assert (only.outcome, only.ended_at) == (outcome, at(5))
    assert only.error == (None if closing == "succeeded" else "boom")


def test_an_attempt_still_running_has_no_end():
    """Given a claim and nothing after it, Then the attempt is running, without a duration."""
    [only] = attempts([ev(0, "step.running", "s", 1, "w", fence=1)])
    assert (only.outcome, only.ended_at, only.duration) == ("running", None, None)


def test_a_claim_over_an_expired_lease_closes_the_attempt_it_took_over():
    """Given w1's lease ran out and w2 claimed the step, Then w1's attempt ended then."""
    first, second = attempts([ev(0, "step.running", "s", 1, "w1", fence=1),
                              ev(30, "step.running", "s", 2, "w2", fence=2),
                              ev(40, "step.succeeded", "s", 2)])
    assert (first.outcome, first.ended_at) == ("lease expired", at(30))
    assert (second.worker, second.outcome) == ("w2", "succeeded")


def test_a_late_result_is_noted_on_its_own_attempt_and_closes_no_other():
    """Given w1's result arrives after w2 took over, Then w2's attempt stays open."""
    first, second = attempts([ev(0, "step.running", "s", 1, "w1", fence=1),
                              ev(30, "step.running", "s", 2, "w2", fence=2),
                              ev(35, "step.superseded", "s", None, "w1", fence=1,
                                 outcome="succeeded", current_fence=2)])
    assert first.note == "its late result (succeeded) was discarded"
    assert (second.outcome, second.ended_at, second.note) == ("running", None, None)


def test_a_superseded_result_of_the_open_attempt_closes_it():
    """Given the open attempt's own fence is superseded, Then that attempt ends superseded."""
    [only] = attempts([ev(0, "step.running", "s", 1, "w1", fence=3),
                       ev(9, "step.superseded", "s", None, "w1", fence=3, outcome="failed")])
    assert (only.outcome, only.ended_at) == ("superseded", at(9))


def test_steps_and_compensations_of_one_name_are_apart_and_alerts_are_not_outcomes():
    """Given a compensation open while an alert names its step, Then only the
    compensation's own outcome closes it."""
    found = attempts([ev(0, "compensation.running", "s", 1, "w", fence=1),
                      {**ev(1, "alert.timeout", "s", message="slow"), "role": None},
                      ev(2, "step.failed", "s", 1, error="x"),
                      ev(3, "compensation.succeeded", "s", 1)])
    assert [(a.role, a.outcome, a.ended_at) for a in found] == [("compensate", "succeeded", at(3))]


def test_a_wait_is_a_span_from_waiting_to_how_it_ended():
    """Given a signal wait that a signal ended, Then one wait span, no worker, succeeded."""
    [wait] = attempts([ev(0, "step.queued", "label", 0),
                       ev(5, "step.waiting", "label", 0, wake_at=at(9_000).isoformat()),
                       {**ev(700, "signal.received", signal="label"), "step": None},
                       ev(700, "step.succeeded", "label", 0)])
    assert (wait.wait, wait.worker, wait.outcome, wait.duration) == (
        True, None, "succeeded", timedelta(milliseconds=695))
    text = render({**RUN, "status": "running", "error": None, "finished_at": None},
                  [ev(0, "run.started"), ev(5, "step.waiting", "label", 0)], tz=UTC)
    assert "step         label  wait  03:00:00.005 → …          -  -  waiting" in text


# -- the state at a moment ------------------------------------------------------------

@pytest.mark.parametrize("ms, run, steps", [
    (-1, None, {}),
    (0, "running", {("reserve", "forward"): ("queued", 0)}),
    (10, "running", {("reserve", "forward"): ("running", 1)}),
    (99, "running", {("reserve", "forward"): ("succeeded", 1), ("charge", "forward"): ("queued", 0)}),
    (200, "running", {("reserve", "forward"): ("succeeded", 1),
                      ("charge", "forward"): ("retry_wait", 1)}),
    (449, "running", {("reserve", "forward"): ("succeeded", 1), ("charge", "forward"): ("running", 2)}),
    (450, "compensating", {("reserve", "forward"): ("succeeded", 1),
                           ("charge", "forward"): ("failed", 2),
                           ("reserve", "compensate"): ("queued", 0)}),
    (10_000, "compensated", {("reserve", "forward"): ("succeeded", 1),
                             ("charge", "forward"): ("failed", 2),
                             ("reserve", "compensate"): ("succeeded", 1)}),
])
def test_state_at_applies_every_event_up_to_the_moment(ms, run, steps):
    """Given the history, When read as of `ms`, Then the run and steps as they then were."""
    state = state_at(HISTORY, at(ms))
    assert state.status == run and state.at == at(ms)
    assert {key: (s.status, s.attempt) for key, s in state.steps.items()} == steps


def test_a_claim_keeps_the_last_error_and_success_clears_it():
    """Given a failed attempt, Then its error stays while retried, and goes on success."""
    history = [ev(0, "step.running", "s", 1, "w1", fence=1),
               ev(1, "step.queued", "s", 1, error="boom"),
               ev(2, "step.running", "s", 2, "w2", fence=2),
               ev(3, "step.succeeded", "s", 2)]
    running = state_at(history, at(2)).steps[("s", "forward")]
    assert (running.status, running.error, running.worker) == ("running", "boom", "w2")
    done = state_at(history, at(3)).steps[("s", "forward")]
    assert (done.error, done.worker) == (None, "w2")


def test_the_run_error_comes_with_its_status_and_a_resumed_run_drops_it():
    """Given a parked run that a person resumed, Then its error is gone with the new status."""
    history = [ev(0, "run.started"), ev(5, "run.failed", error="parked"), ev(9, "run.running")]
    assert (state_at(history, at(5)).status, state_at(history, at(5)).error) == ("failed", "parked")
    assert (state_at(history, at(9)).status, state_at(history, at(9)).error) == ("running", None)


def test_parking_flags_the_run_without_changing_its_status():
    """Given a run parked (its version not loaded) and later unparked, Then the flag comes
    and goes while the status stays; a cancelled run ends `cancelled`."""
    history = [ev(0, "run.started"), ev(5, "run.parked", reason="pay v3 is not loaded"),
               ev(9, "run.unparked"), ev(12, "run.compensating", error="cancelled on request"),
               ev(20, "run.cancelled", error="cancelled on request")]
    parked = state_at(history, at(5))
    assert (parked.status, parked.parked) == ("running", "pay v3 is not loaded")
    assert "parked   pay v3 is not loaded" in render_state(RUN, parked, tz=UTC)
    assert (state_at(history, at(9)).status, state_at(history, at(9)).parked) == ("running", None)
    assert state_at(history, at(20)).status == "cancelled"


def test_superseded_results_and_alerts_change_no_status():
    history = [ev(0, "step.running", "s", 1, "w", fence=1),
               ev(1, "step.superseded", "s", None, "w0", fence=0),
               {**ev(2, "alert.timeout", "s", message="slow"), "role": None}]
    assert state_at(history, at(2)).steps[("s", "forward")].status == "running"


def test_events_after_the_moment_are_left_out_wherever_they_sit():
    """Given events out of time order (concurrent claims), Then only their times count."""
    history = [ev(0, "step.queued", "a", 0), ev(20, "step.running", "a", 1, "w", fence=1),
               ev(10, "step.running", "b", 1, "w", fence=1)]
    state = state_at(history, at(15))
    assert {k[0]: s.status for k, s in state.steps.items()} == {"a": "queued", "b": "running"}


# -- as text ---------------------------------------------------------------------------

def test_render_shows_the_header_and_each_attempt_with_times_worker_outcome_and_error():
    text = render(RUN, HISTORY, tz=UTC)
    lines = text.splitlines()
    assert lines[0] == "run r-1  charge v2  COMPENSATED"
    assert lines[1] == ("  started  2025-05-01 03:00:00.000 UTC  "
                        "finished 2025-05-01 03:00:00.900 UTC  (900 ms)")
    assert lines[2] == "  error    step 'charge' failed: declined"
    assert "step         reserve  #1    03:00:00.010 → 03:00:00.080      70 ms  w1  succeeded" in text
    assert ("#1    03:00:00.100 → 03:00:00.150      50 ms  w2  failed, will retry at "
            "03:00:00.350  error: Timeout: bank") in text
    assert "#2    03:00:00.400 → 03:00:00.450      50 ms  w1  failed  error: declined" in text
    assert "compensation reserve  #1    03:00:00.600 → 03:00:00.900     300 ms  w2  succeeded" in text


def test_render_lists_a_step_that_never_ran_and_dates_another_day():
    run = {**RUN, "status": "running", "error": None, "finished_at": None}
    history = [ev(0, "run.started"), ev(0, "step.queued", "a", 0),
               ev(86_400_000, "step.running", "a", 1, "w", fence=1),
               ev(86_400_000, "step.cancelled", "b", 0)]
    text = render(run, history, tz=UTC)
    assert "#1    2025-05-02 03:00:00.000 → …          -  w  running" in text
    assert "step         b  -     no attempt (cancelled)" in text


def test_render_state_lists_the_run_and_each_step_then():
    text = render_state(RUN, state_at(HISTORY, at(200)), tz=UTC)
    assert text.splitlines() == [
        "run r-1  charge v2  as of 2025-05-01 03:00:00.200 UTC",
        "  status   RUNNING",
        "  step         reserve  succeeded   attempt 1",
        "  step         charge   retry_wait  attempt 1  error: Timeout: bank",
    ]
    assert "not started yet" in render_state(RUN, state_at(HISTORY, at(-5)), tz=UTC)


def test_render_events_lists_every_event_since_the_start():
    lines = render_events(RUN, HISTORY).splitlines()
    assert len(lines) == len(HISTORY)
    assert "+     150.0 ms  step.retry_wait" in lines[6] and "error: Timeout: bank" in lines[6]


@pytest.mark.parametrize("span, text", [
    (timedelta(milliseconds=70), "70 ms"), (timedelta(seconds=4.25), "4.2 s"),
    (timedelta(minutes=3, seconds=5), "3 min 05 s"), (timedelta(hours=2, minutes=10), "2 h 10 min"),
    (timedelta(days=3, hours=4, minutes=59), "3 d 4 h"),
])
def test_duration_reads_like_people_write_it(span, text):
    assert duration(span) == text


def test_an_attempt_duration_is_its_end_minus_its_start():
    a = Attempt("s", "forward", 1, "w", 1, at(0), at(250), "succeeded")
    assert a.duration == timedelta(milliseconds=250)


# -- the CLI's times -------------------------------------------------------------------

PLUS2 = timezone(timedelta(hours=2))
NOW = datetime(2025, 5, 1, 14, 30, tzinfo=PLUS2)


@pytest.mark.parametrize("text, moment", [
    ("03:00", datetime(2025, 5, 1, 3, 0, tzinfo=PLUS2)),
    ("3:05:09", datetime(2025, 5, 1, 3, 5, 9, tzinfo=PLUS2)),
    ("2025-04-30T23:59", datetime(2025, 4, 30, 23, 59, tzinfo=PLUS2)),
    ("2025-04-30 23:59:30", datetime(2025, 4, 30, 23, 59, 30, tzinfo=PLUS2)),
    ("2025-04-30T21:00:00Z", datetime(2025, 4, 30, 21, 0, tzinfo=UTC)),
    ("2025-04-30T21:00:00+05:00", datetime(2025, 4, 30, 16, 0, tzinfo=UTC)),
])
def test_times_are_today_in_local_time_or_iso_8601(text, moment):
    assert parse_when(text, NOW) == moment


@pytest.mark.parametrize("text", ["25:00", "03:60", "3pm", "yesterday", "2025-13-01", ""])
def test_anything_else_is_not_a_time(text):
    with pytest.raises(ValueError):
        parse_when(text, NOW)
