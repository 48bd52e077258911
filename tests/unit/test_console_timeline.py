"""The run timeline laid out for the console: rows, bars, marks and the time axis, from events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from saga.timeline_bars import layout, ticks

T0 = datetime(2025, 5, 1, 3, 0, tzinfo=UTC)
_ids = count(1)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def ev(ms: float, type: str, step: str | None = None, attempt: int | None = None,
       worker: str | None = None, **data) -> dict:
    """An event as `Store.events` returns it; the role follows the type's family."""
    family = type.split(".")[0]
    role = {"step": "forward", "compensation": "compensate"}.get(family) if step else None
    return {"id": next(_ids), "at": at(ms), "type": type, "step": step, "role": role,
            "attempt": attempt, "worker": worker, "data": data}


# reserve succeeds; charge fails once (retried after a wait), then for good: compensation.
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


def shape(drawn):
    return [(drawn.rows[b.row].label, b.kind, b.attempt, b.outcome, b.cause) for b in drawn.bars]


def test_each_attempt_is_a_bar_with_its_queued_part_and_outcome_class():
    """Given a retried step that then fails, Then a bar per attempt: queued, ran, outcome."""
    drawn = layout(HISTORY, finished=True)
    assert [r.label for r in drawn.rows] == ["reserve", "charge", "↶ reserve"]
    assert shape(drawn) == [
        ("reserve", "attempt", 1, "succeeded", False),
        ("charge", "attempt", 1, "retried", False),
        ("charge", "attempt", 2, "failed", True),  # the failure that started compensation
        ("↶ reserve", "attempt", 1, "succeeded", False),
    ]
    reserve, first, second, undo = drawn.bars
    assert (reserve.queued_at, reserve.started_at, reserve.ended_at) == (at(0), at(10), at(80))
    assert (second.queued_at, second.started_at) == (at(350), at(400))  # queued after its wait
    assert undo.role == "compensate" and undo.queued_at == at(450)


def test_the_compensation_start_is_marked_with_its_reason():
    drawn = layout(HISTORY, finished=True)
    assert drawn.compensation is not None
    assert drawn.compensation.at == at(450) and drawn.compensation.row is None
    assert "step 'charge' failed: declined" in drawn.compensation.label


def test_compensation_rows_follow_the_steps_in_the_reverse_order_they_ran():
    """Given a, b, c done and d failing, Then the compensation rows read c, b, a."""
    events = [ev(0, "run.started")]
    for i, name in enumerate("abc"):
        events += [ev(i * 10, "step.running", name, 1, "w", fence=1),
                   ev(i * 10 + 5, "step.succeeded", name, 1)]
    events += [ev(40, "step.running", "d", 1, "w", fence=1),
               ev(45, "run.compensating", error="step 'd' failed: no"),
               ev(45, "step.failed", "d", 1, error="no")]
    for i, name in enumerate("cba"):
        events += [ev(50 + i * 10, "compensation.running", name, 1, "w", fence=1),
                   ev(55 + i * 10, "compensation.succeeded", name, 1)]
    drawn = layout(events, finished=True)
    assert [r.label for r in drawn.rows] == ["a", "b", "c", "d", "↶ c", "↶ b", "↶ a"]
    undo_starts = [b.started_at for b in drawn.bars if b.role == "compensate"]
    assert undo_starts == sorted(undo_starts)


def test_a_failure_and_the_next_claim_in_one_commit_is_a_retried_attempt():
    events = [ev(0, "step.running", "s", 1, "w", fence=1),
              ev(20, "step.running", "s", 2, "w", fence=2, error="boom"),
              ev(30, "step.succeeded", "s", 2)]
    first, second = layout(events, finished=True).bars
    assert (first.outcome, first.error, second.outcome) == ("retried", "boom", "succeeded")
    assert "error: boom" in first.title and "attempt 1" in first.title and "on w" in first.title


def test_a_signal_wait_is_a_span_with_the_signal_marked_on_its_row():
    events = [ev(0, "run.started"), ev(0, "step.queued", "await_label", 0),
              ev(5, "step.waiting", "await_label", 0, wake_at=at(10_000).isoformat()),
              ev(700, "signal.received", signal="label", signal_id=1, by="ops-bot"),
              ev(700, "step.succeeded", "await_label", 0)]
    drawn = layout(events, finished=True, signal_steps={"label": ["await_label"]})
    [wait] = drawn.bars
    assert (wait.kind, wait.outcome, wait.started_at, wait.ended_at) == (
        "wait", "succeeded", at(5), at(700))
    [mark] = [m for m in drawn.marks if m.kind == "signal"]
    assert (drawn.rows[mark.row].step, mark.at) == ("await_label", at(700))
    assert mark.label == "signal 'label' arrived by ops-bot"


def test_a_signal_whose_wait_is_unknown_gets_a_row_of_its_own():
    events = [ev(0, "run.started"), ev(5, "signal.received", signal="early", signal_id=1)]
    drawn = layout(events, finished=True)
    assert [(r.step, r.role) for r in drawn.rows] == [("signals", "signal")]
    assert drawn.marks[0].row == 0


def test_a_step_queued_then_cancelled_unclaimed_still_shows_its_queued_time():
    events = [ev(0, "step.queued", "ship", 0), ev(50, "run.compensating", error="cancelled"),
              ev(50, "step.cancelled", "ship", 0)]
    [bar] = layout(events, finished=True).bars
    assert (bar.kind, bar.outcome, bar.started_at, bar.ended_at) == (
        "unclaimed", "cancelled", at(0), at(50))
    assert not bar.cause


def test_an_unfinished_run_draws_its_open_attempt_up_to_now():
    events = [ev(0, "step.queued", "s", 0), ev(10, "step.running", "s", 1, "w", fence=1)]
    drawn = layout(events, now=at(5000))
    [bar] = drawn.bars
    assert (bar.open, bar.ended_at, bar.outcome, drawn.end) == (True, at(5000), "running", at(5000))
    assert "so far" in bar.title
    assert layout(events, now=at(5000), finished=True).end == at(10)


def test_times_map_to_a_linear_scale():
    """A bar's length is its duration's share of the chart: drawn to scale."""
    drawn = layout(HISTORY, finished=True)  # 900 ms
    reserve = drawn.bars[0]
    assert drawn.x(reserve.started_at, 900) == 10
    assert drawn.x(reserve.ended_at, 900) - drawn.x(reserve.started_at, 900) == 70
    assert drawn.x(drawn.end, 640) == 640


def test_no_events_lay_out_nothing():
    drawn = layout([], now=T0)
    assert (drawn.rows, drawn.bars, drawn.marks) == ([], [], [])


@pytest.mark.parametrize(("span", "labels"), [
    (timedelta(milliseconds=900), ["+0", "+200 ms", "+400 ms", "+600 ms", "+800 ms"]),
    (timedelta(seconds=66), ["+0", "+10 s", "+20 s", "+30 s", "+40 s", "+50 s", "+1 min"]),
    (timedelta(hours=3), ["+0", "+30 min", "+1 h", "+1 h 30 min", "+2 h", "+2 h 30 min",
                          "+3 h"]),
    (timedelta(days=2, hours=1), ["+0", "+12 h", "+1 d", "+1 d 12 h", "+2 d"]),
    (timedelta(0), ["+0"]),
])
def test_ticks_fall_on_round_times_across_the_span(span, labels):
    found = ticks(T0, T0 + span)
    assert [t.label for t in found] == labels
    assert all(T0 <= t.at <= T0 + span for t in found)


def test_ticks_of_a_very_long_span_stay_few():
    found = ticks(T0, T0 + timedelta(days=900))
    assert 2 <= len(found) <= 9
