"""A run's timeline laid out to scale for a picture: rows of bars, marks and a time axis.

Pure, like `saga.timeline` (whose `attempts` it draws, so the console's picture and
`saga show` read the log the same way): events in, oldest first, values out. Each step
and each compensation is a row, forward steps in the order they first appeared, then the
compensations in the order they ran (the reverse of the steps they undo). Each attempt is
a bar: its queued part, its running part and its outcome; a wait (a timer or a signal) is
a span, with a signal's arrival marked on it; the failure that started compensation is
marked across every row. `Timeline.x` maps a time to a position on a linear scale.

    drawn = layout(events, now=store.now(), signal_steps={"label": ["await_label"]})
    for bar in drawn.bars:
        print(drawn.rows[bar.row].label, bar.outcome, drawn.x(bar.started_at, 600))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from saga.run import Role
from saga.timeline import Attempt, Key, attempts, duration

__all__ = ["Row", "Bar", "Mark", "Tick", "Timeline", "layout", "ticks", "OUTCOME_CLASS"]

# The class each of `saga.timeline`'s outcome words is drawn in. A failed attempt whose
# step was tried again is "retried"; one that ended the step is "failed".
OUTCOME_CLASS = {
    "succeeded": "succeeded", "failed": "failed", "failed, will retry": "retried",
    "failed, requeued": "retried", "failed, retried": "retried", "lease expired": "retried",
    "parked": "parked", "cancelled": "cancelled", "superseded": "superseded",
    "running": "running", "waiting": "waiting", "ended": "succeeded",
}
# The statuses that end a queued step that was never claimed.
UNCLAIMED_ENDS = frozenset({"cancelled", "failed", "parked", "succeeded", "retry_wait"})
SIGNALS_ROW = ("signals", "signal")  # signals whose waiting step is not known
TICK_STEPS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30,
                60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
                2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)


@dataclass(frozen=True)
class Row:
    """One step's forward attempts (role "forward"), or its compensation's."""

    step: str
    role: str
    label: str


@dataclass(frozen=True)
class Bar:
    """One attempt, one wait, or a queued time that never became an attempt.

    `kind`: "attempt", "wait" or "unclaimed". `outcome` is the class it is drawn in
    (OUTCOME_CLASS), `said` the timeline's words for it. `open`: still going at the
    chart's end, which `ended_at` is then. `cause`: the failure that started compensation.
    """

    row: int
    step: str
    role: str
    kind: str
    attempt: int | None
    worker: str | None
    queued_at: datetime | None
    started_at: datetime
    ended_at: datetime
    outcome: str
    said: str
    open: bool = False
    error: str | None = None
    note: str | None = None
    cause: bool = False

    @property
    def title(self) -> str:
        """What a hover says: which attempt, where it ran, how long, how it ended, why."""
        undo = "compensation of " if self.role == Role.COMPENSATE else ""
        what = {"wait": "wait", "unclaimed": "queued, never claimed"}.get(
            self.kind, f"attempt {self.attempt if self.attempt is not None else '?'}")
        parts = [f"{undo}{self.step}: {what}"]
        if self.worker:
            parts.append(f"on {self.worker}")
        if self.queued_at is not None and self.kind == "attempt":
            parts.append(f"queued {duration(self.started_at - self.queued_at)}")
        took = duration(self.ended_at - self.started_at)
        parts.append(f"{'so far' if self.open else 'took'} {took}")
        parts.append("cause of compensation" if self.cause else self.said)
        if self.error:
            parts.append(f"error: {self.error}")
        if self.note:
            parts.append(self.note)
        return " · ".join(parts)


@dataclass(frozen=True)
class Mark:
    """A moment: a signal's arrival on its step's row, or compensation starting (row None:
    across every row)."""

    kind: str  # "signal" or "compensation"
    at: datetime
    row: int | None
    label: str


@dataclass(frozen=True)
class Tick:
    at: datetime
    label: str  # the time since the chart's start: "+0", "+1.5 s", "+2 min"


@dataclass(frozen=True)
class Timeline:
    """Everything to draw; `start` and `end` bound the time axis."""

    start: datetime
    end: datetime
    rows: list[Row]
    bars: list[Bar]
    marks: list[Mark] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)

    @property
    def compensation(self) -> Mark | None:
        return next((m for m in self.marks if m.kind == "compensation"), None)

    def x(self, at: datetime, width: float) -> float:
        """`at` on a scale from 0 (start) to `width` (end)."""
        span = (self.end - self.start).total_seconds()
        return round((at - self.start).total_seconds() / span * width, 2) if span > 0 else 0.0


def layout(events: Sequence[Mapping[str, Any]], *, now: datetime | None = None,
           finished: bool = False,
           signal_steps: Mapping[str, Sequence[str]] | None = None) -> Timeline:
    """The timeline of a run's `events` (oldest first, as `Store.events` returns them).

    `now`: the log's time, where an unfinished run's open bars end (ignored when
    `finished`). `signal_steps`: each signal name → the steps that wait for it (from the
    definition), so its arrival is marked on that step's row; unknown, on a row of its own.
    """
    listed = [dict(e) for e in events]
    if not listed:
        moment = now or datetime.min
        return Timeline(moment, moment, [], [])
    start = listed[0]["at"]
    last = max(e["at"] for e in listed)
    end = last if finished or now is None else max(last, now)
    rows: dict[Key, int] = {}
    order: list[Key] = []

    def row(key: Key) -> int:
        if key not in rows:
            rows[key] = -1  # numbered once every row is known: forward rows come first
            order.append(key)
        return rows[key]

    found = attempts(listed)
    for attempt in found:
        row((attempt.step, attempt.role))
    unclaimed = _unclaimed(listed, end)
    for bar in unclaimed:
        row((bar.step, bar.role))
    signals = _signals(listed, signal_steps, row)
    keys = ([k for k in order if k[1] == Role.FORWARD] + [k for k in order if k[1] == Role.COMPENSATE]
            + [k for k in order if k[1] not in (Role.FORWARD, Role.COMPENSATE)])
    rows.update({key: index for index, key in enumerate(keys)})
    compensating = next((e for e in listed if e["type"] == "run.compensating"), None)
    bars = [_bar(a, rows[(a.step, a.role)], end, compensating) for a in found]
    bars += [_placed(b, rows[(b.step, b.role)]) for b in unclaimed]
    marks = [Mark("signal", at, rows[key], label) for key, at, label in signals]
    if compensating is not None:
        why = (compensating.get("data") or {}).get("error") or "compensation started"
        marks.append(Mark("compensation", compensating["at"], None,
                          f"compensation starts: {why}"))
    return Timeline(start, end, [_row(k) for k in keys], bars, marks, ticks(start, end))


def _row(key: Key) -> Row:
    step, role = key
    label = f"↶ {step}" if role == Role.COMPENSATE else step
    return Row(step, role, label)


def _bar(a: Attempt, row: int, end: datetime, compensating: Mapping[str, Any] | None) -> Bar:
    cause = (compensating is not None and a.role == Role.FORWARD and a.outcome == "failed"
             and a.ended_at == compensating["at"])
    said = a.outcome
    if a.retry_at:
        said += f" (next attempt due {a.retry_at})"
    return Bar(row=row, step=a.step, role=a.role, kind="wait" if a.wait else "attempt",
               attempt=a.attempt, worker=a.worker, queued_at=a.queued_at,
               started_at=a.started_at, ended_at=a.ended_at or end, open=a.ended_at is None,
               outcome=OUTCOME_CLASS.get(a.outcome, "running"), said=said, error=a.error,
               note=a.note, cause=cause)


def _placed(bar: Bar, row: int) -> Bar:
    return replace(bar, row=row)


def _unclaimed(events: list[dict[str, Any]], end: datetime) -> list[Bar]:
    """Queued times that no claim took up: the step was cancelled (or timed out, or is
    still queued) first. `attempts` shows only claims, so these would be invisible."""
    found: list[Bar] = []
    pending: dict[Key, datetime] = {}
    for event in events:
        family, _, what = event["type"].partition(".")
        role = {"step": Role.FORWARD.value, "compensation": Role.COMPENSATE.value}.get(family)
        if role is None or not event.get("step"):
            continue
        key = (event["step"], event.get("role") or role)
        if what in ("running", "waiting"):
            pending.pop(key, None)
        elif what == "queued":
            if key in pending:  # queued again unclaimed: its schedule-to-start ran out
                found.append(_unclaimed_bar(key, pending[key], event, "retried"))
            pending[key] = event["at"]
        elif what in UNCLAIMED_ENDS and key in pending:
            outcome = OUTCOME_CLASS.get(what, "retried" if what == "retry_wait" else what)
            found.append(_unclaimed_bar(key, pending.pop(key), event, outcome))
    for (step, role), since in pending.items():
        found.append(Bar(row=-1, step=step, role=role, kind="unclaimed", attempt=None,
                         worker=None, queued_at=since, started_at=since, ended_at=end,
                         outcome="queued", said="still queued", open=True))
    return found


def _unclaimed_bar(key: Key, since: datetime, event: Mapping[str, Any], outcome: str) -> Bar:
    what = event["type"].partition(".")[2]
    return Bar(row=-1, step=key[0], role=key[1], kind="unclaimed", attempt=None, worker=None,
               queued_at=since, started_at=since, ended_at=event["at"], outcome=outcome,
               said=what.replace("_", " "), error=(event.get("data") or {}).get("error"))


def _signals(events: list[dict[str, Any]], signal_steps: Mapping[str, Sequence[str]] | None,
             row: Any) -> list[tuple[Key, datetime, str]]:
    """(row key, when, label) of each signal received, on the row of a step awaiting it."""
    found = []
    for event in events:
        if event["type"] != "signal.received":
            continue
        data = event.get("data") or {}
        name = data.get("signal") or "?"
        steps = list((signal_steps or {}).get(name, ()))
        key: Key = (steps[0], Role.FORWARD.value) if steps else SIGNALS_ROW
        row(key)
        by = f" by {data['by']}" if data.get("by") else ""
        found.append((key, event["at"], f"signal {name!r} arrived{by}"))
    return found


def ticks(start: datetime, end: datetime, most: int = 8) -> list[Tick]:
    """Evenly spaced round times from `start` to `end`, at most `most` + 1 of them."""
    span = (end - start).total_seconds()
    if span <= 0:
        return [Tick(start, "+0")]
    step = next((s for s in TICK_STEPS_S if span / s <= most), None)
    if step is None:  # longer than the table: whole multiples of its last step
        step = TICK_STEPS_S[-1] * -(-span // (TICK_STEPS_S[-1] * most))
    count = int(span // step)
    return [Tick(start + timedelta(seconds=i * step), _offset(i * step)) for i in range(count + 1)]


def _offset(seconds: float) -> str:
    if seconds == 0:
        return "+0"
    if seconds < 1:
        return f"+{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"+{seconds:g} s"
    units = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))
    parts: list[str] = []
    left = round(seconds)
    for size, name in units:
        if left >= size and len(parts) < 2:
            parts.append(f"{left // size} {name}")
            left %= size
    return "+" + " ".join(parts)
