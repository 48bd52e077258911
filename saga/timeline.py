"""A run's history rebuilt from its events alone: attempts, the state at a moment, and text.

Pure: events in (the dicts `Store.events` returns, oldest first), values out. The event
log is the only input, so what `saga show` prints is what the log proves, and the state
at a past moment is exactly what was committed by then.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from typing import Any

from saga.run import Role, RunStatus, StepStatus

__all__ = ["Attempt", "StepAt", "RunAt", "attempts", "state_at", "render", "render_state",
           "render_events", "duration"]

STEP_STATUSES = frozenset(s.value for s in StepStatus)
RUN_STATUSES = frozenset(s.value for s in RunStatus)
PREFIXES = {"step": Role.FORWARD.value, "compensation": Role.COMPENSATE.value}
# What the event closing an attempt says of it; `running` again means a new claim took
# the step over after this attempt's lease ran out (or, with an error, that it failed and
# was claimed again at once).
OUTCOMES = {"succeeded": "succeeded", "failed": "failed", "retry_wait": "failed, will retry",
            "queued": "failed, requeued", "parked": "parked", "cancelled": "cancelled",
            "superseded": "superseded", "running": "lease expired", "waiting": "waiting"}
Key = tuple[str, str]  # (step name, role)


@dataclass(frozen=True)
class Attempt:
    """One claim of a step or compensation, from its `*.running` event to the next outcome;
    or one wait (a timer or a signal, `wait` true), from `*.waiting` to how it ended."""

    step: str
    role: str  # "forward" or "compensate"
    attempt: int | None
    worker: str | None
    fence: int | None
    started_at: datetime
    ended_at: datetime | None = None  # None: still running at the last event
    outcome: str = "running"
    error: str | None = None
    retry_at: str | None = None  # when the next attempt is due, after a failed one
    note: str | None = None  # e.g. a late result of this attempt, discarded
    wait: bool = False
    queued_at: datetime | None = None  # queued for this attempt (None: claimed as queued)

    @property
    def duration(self) -> timedelta | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


@dataclass(frozen=True)
class StepAt:
    """A step or compensation as of some moment."""

    name: str
    role: str
    status: str
    attempt: int
    error: str | None = None
    worker: str | None = None  # the last worker that claimed it


@dataclass(frozen=True)
class RunAt:
    """A run as of some moment; `status` None means it had not started by then."""

    at: datetime
    status: str | None
    error: str | None
    steps: dict[Key, StepAt]  # in the order each first appeared
    parked: str | None = None  # why no worker could go on with it then

    @property
    def forward(self) -> list[StepAt]:
        return [s for s in self.steps.values() if s.role == Role.FORWARD]

    @property
    def compensations(self) -> list[StepAt]:
        return [s for s in self.steps.values() if s.role == Role.COMPENSATE]


def _parse(event: dict[str, Any]) -> tuple[str, str, Key | None]:
    """(family, what happened, step key): ("step", "failed", ("charge", "forward"))."""
    family, _, what = event["type"].partition(".")
    if family not in PREFIXES or not event.get("step"):
        return family, what, None
    return family, what, (event["step"], event.get("role") or PREFIXES[family])


def attempts(events: list[dict[str, Any]]) -> list[Attempt]:
    """Every attempt of every step and compensation, in the order they started.

    A `*.running` event opens an attempt (and `*.waiting` a wait); the next outcome of
    the same step and role (succeeded, failed, retry_wait, queued, parked, cancelled,
    superseded, or another claim) closes it. A `*.superseded` event names the fence whose
    result came too late: it closes only the attempt holding that fence, or notes it on
    that closed attempt. The `*.queued` event before a claim gives its `queued_at`.
    """
    found: list[Attempt] = []
    open_: dict[Key, int] = {}  # index into `found` of each step's running attempt
    queued: dict[Key, datetime] = {}  # when each step was queued for its next claim
    for event in events:
        _, what, key = _parse(event)
        if key is None or what not in OUTCOMES:
            continue
        data = event.get("data") or {}
        if what == "superseded":
            _supersede(found, open_, key, event, data)
            continue
        if key in open_:
            index = open_.pop(key)
            outcome = OUTCOMES[what]
            if what == "running" and data.get("error"):
                # The attempt failed and the worker claimed the next in the same commit,
                # which writes only the new claim, carrying the failure's error.
                outcome = "failed, retried"
            if found[index].wait and what in ("running", "waiting"):
                outcome = "ended"
            found[index] = replace(
                found[index], ended_at=event["at"], outcome=outcome,
                error=data.get("error") if what != "succeeded" else None,
                retry_at=data.get("next_attempt_at"))
        if what == "queued":
            queued[key] = event["at"]
        if what in ("running", "waiting"):
            open_[key] = len(found)
            # A wait holds no worker; the one named recorded the step that led to it.
            found.append(Attempt(step=key[0], role=key[1], attempt=event.get("attempt"),
                                 worker=event.get("worker") if what == "running" else None,
                                 fence=data.get("fence"),
                                 started_at=event["at"], outcome=what, wait=what == "waiting",
                                 queued_at=queued.pop(key, None)))
    return found


def _supersede(found: list[Attempt], open_: dict[Key, int], key: Key, event: dict[str, Any],
               data: dict[str, Any]) -> None:
    fence = data.get("fence")
    late = f"its late result ({data.get('outcome', 'unknown')}) was discarded"
    index = open_.get(key)
    if index is not None and fence in (None, found[index].fence):
        del open_[key]
        found[index] = replace(found[index], ended_at=event["at"], outcome="superseded",
                               note=late)
        return
    for i in range(len(found) - 1, -1, -1):
        if (found[i].step, found[i].role) == key and found[i].fence == fence:
            found[i] = replace(found[i], note=late)
            return


def state_at(events: list[dict[str, Any]], at: datetime) -> RunAt:
    """The run and each of its steps as they stood at `at`: every event up to then, applied.

    `run.started` makes the run running and `run.<status>` gives it that status and
    error (`run.parked` and `run.unparked` flag it); `step.<status>` and
    `compensation.<status>` do the same for a step (the status's attempt, error, and for
    `running` its worker). Other events (alerts, signals, superseded results) change no
    status.
    """
    status: str | None = None
    error: str | None = None
    parked: str | None = None
    found: dict[Key, StepAt] = {}
    for event in events:
        if event["at"] > at:
            continue
        family, what, key = _parse(event)
        data = event.get("data") or {}
        if family == "run" and (what == "started" or what in RUN_STATUSES):
            status = "running" if what == "started" else what
            error = data.get("error")
        elif family == "run" and what in ("parked", "unparked"):
            parked = (data.get("reason") or "parked") if what == "parked" else None
        elif key is not None and what in STEP_STATUSES:
            before = found.get(key)
            attempt = event.get("attempt")
            if attempt is None:
                attempt = before.attempt if before else 0
            found[key] = StepAt(
                name=key[0], role=key[1], status=what, attempt=attempt,
                # A claim leaves the last attempt's error in place; every other status
                # change records the step's error as it then was.
                error=(before.error if before else None) if what == "running" else data.get("error"),
                worker=event.get("worker") if what == "running" else (before.worker if before else None))
    return RunAt(at=at, status=status, error=error, steps=found, parked=parked)


# -- as text --------------------------------------------------------------------------

def render(run: dict[str, Any], events: list[dict[str, Any]], tz: tzinfo | None = None) -> str:
    """The run's header, then each attempt of each step and each compensation.

    Times are shown in `tz` (default: this machine's local time).
    """
    lines = _header(run, tz)
    tried = attempts(events)
    final = state_at(events, max((e["at"] for e in events), default=run["created_at"]))
    width = max((len(s.name) for s in final.steps.values()), default=0)
    day = _local(run["created_at"], tz).date()
    for label, group in (("step", final.forward), ("compensation", final.compensations)):
        for step in group:
            mine = [a for a in tried if (a.step, a.role) == (step.name, step.role)]
            prefix = f"  {label:<12} {step.name:<{width}}"
            if not mine:
                lines.append(f"{prefix}  {'-':<4}  no attempt ({step.status})")
            for a in mine:
                lines.append(f"{prefix}  {_attempt_line(a, day, tz)}")
                prefix = " " * len(prefix)
    return "\n".join(lines)


def render_state(run: dict[str, Any], state: RunAt, tz: tzinfo | None = None) -> str:
    """The run and its steps as they stood at `state.at`."""
    lines = [f"run {run['id']}  {run['saga']} v{run['version']}  as of "
             f"{_stamp(state.at, tz)}"]
    if state.status is None:
        lines.append(f"  not started yet (it started {_stamp(run['created_at'], tz)})")
        return "\n".join(lines)
    lines.append(f"  status   {state.status.upper()}")
    if state.error:
        lines.append(f"  error    {state.error}")
    if state.parked:
        lines.append(f"  parked   {state.parked}")
    width = max((len(s.name) for s in state.steps.values()), default=0)
    for label, group in (("step", state.forward), ("compensation", state.compensations)):
        for s in group:
            detail = f"attempt {s.attempt}" if s.attempt else "no attempt yet"
            if s.status == "running" and s.worker:
                detail += f" on {s.worker}"
            if s.error:
                detail += f"  error: {s.error}"
            lines.append(f"  {label:<12} {s.name:<{width}}  {s.status:<10}  {detail}")
    return "\n".join(lines)


def render_events(run: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """One line per event, with the time since the run started."""
    lines = []
    for event in events:
        offset = (event["at"] - run["created_at"]).total_seconds() * 1000
        data = event.get("data") or {}
        detail = []
        if event.get("attempt"):
            detail.append(f"attempt {event['attempt']}")
        if data.get("error"):
            detail.append(f"error: {data['error']}")
        if data.get("next_attempt_at"):
            detail.append(f"retry at {data['next_attempt_at']}")
        if event.get("worker") and event["type"].endswith(".running"):
            detail.append(f"on {event['worker']}")
        if data.get("by"):
            detail.append(f"by {data['by']}")
        suffix = f"  ({'; '.join(detail)})" if detail else ""
        lines.append(f"  +{offset:>10.1f} ms  {event['type']:<26} {event['step'] or ''}{suffix}")
    return "\n".join(lines)


def _header(run: dict[str, Any], tz: tzinfo | None) -> list[str]:
    lines = [f"run {run['id']}  {run['saga']} v{run['version']}  {run['status'].upper()}"]
    took = ""
    if run.get("finished_at"):
        took = (f"  finished {_stamp(run['finished_at'], tz)}"
                f"  ({duration(run['finished_at'] - run['created_at'])})")
    lines.append(f"  started  {_stamp(run['created_at'], tz)}{took}")
    if run.get("error"):
        lines.append(f"  error    {run['error']}")
    if run.get("parked"):
        lines.append(f"  parked   {run['parked']}")
    return lines


def _attempt_line(a: Attempt, day: Any, tz: tzinfo | None) -> str:
    end = _clock(a.ended_at, day, tz) if a.ended_at else "…"
    took = duration(a.duration) if a.duration is not None else "-"
    outcome = a.outcome
    if a.retry_at:
        outcome += f" at {_clock(datetime.fromisoformat(a.retry_at), day, tz)}"
    label = "wait" if a.wait else f"#{a.attempt if a.attempt is not None else '?':<2}"
    parts = [f"{label:<4}",
             f"{_clock(a.started_at, day, tz)} → {end}", f"{took:>9}",
             f"{a.worker or '-'}", outcome]
    if a.error:
        parts.append(f"error: {a.error}")
    if a.note:
        parts.append(f"({a.note})")
    return "  ".join(parts)


def duration(span: timedelta) -> str:
    """A span as people read it: `70 ms`, `4.2 s`, `3 min 05 s`, `2 h 10 min`, `3 d 4 h`."""
    seconds = span.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def _local(at: datetime, tz: tzinfo | None) -> datetime:
    return at.astimezone(tz)


def _stamp(at: datetime, tz: tzinfo | None) -> str:
    local = _local(at, tz)
    return f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d} {local:%Z}".rstrip()


def _clock(at: datetime, day: Any, tz: tzinfo | None) -> str:
    """The time of day, with the date only when it is not the run's first day."""
    local = _local(at, tz)
    clock = f"{local:%H:%M:%S}.{local.microsecond // 1000:03d}"
    return clock if local.date() == day else f"{local:%Y-%m-%d} {clock}"
