"""Each committed change to a run, told on the `saga.runs` logger: one line per event-log row.

The line's `event` is the row's type (`step.running`, `compensation.succeeded`,
`run.compensated`…), so a line and its row in the events table name the same thing;
each line carries the run's fields (run_id, saga, version, step, role, attempt, worker)
and what the row means for a person: how long the attempt took, its error, when the
next attempt is due. Lines are logged in the process that committed, after the commit.
Alert rows are left to `saga.alerts`, which logs each alert once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from saga.events import Change, prefix
from saga.run import Role, RunStatus, StepState, StepStatus

__all__ = ["RunLog", "line", "republished"]

log = logging.getLogger("saga.runs")

# The statuses an attempt (or a wait) ends in: succeeded, or failed and what came of it.
ENDINGS = ("succeeded", "failed", "retry_wait", "queued", "parked")
FINISHED = frozenset(str(s) for s in RunStatus if s.terminal)
NOT_LOADED = "waiting for "  # how a run parked for a definition not loaded here is told
Line = tuple[int, str, dict[str, Any]]  # level, message, the record's fields


class RunLog:
    """The observer that logs each commit's event-log rows (see `line`)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.log = logger

    def committed(self, changes: Sequence[Change]) -> None:
        logger = self.log
        if not logger.isEnabledFor(logging.ERROR):  # no line is louder than ERROR
            return
        for change in changes:
            for entry in change.entries:
                told = line(change, entry)
                if told is not None and logger.isEnabledFor(told[0]):
                    # As logger.log would, less its search of the stack for the caller:
                    # every line is logged from here.
                    logger.handle(logger.makeRecord(logger.name, told[0], *_CALLER, told[1],
                                                    (), None, "committed", told[2]))


_CALLER = (RunLog.committed.__code__.co_filename, RunLog.committed.__code__.co_firstlineno)


def line(change: Change, entry: dict[str, Any]) -> Line | None:
    """The log line for one event-log row of `change`; None for a row logged elsewhere."""
    kind = entry["type"]
    subject = kind.partition(".")[0]
    run, data = change.after, entry.get("data") or {}
    fields: dict[str, Any] = {
        "event": kind, "run_id": run.id, "saga": run.saga, "version": run.version,
        "step": entry.get("step"), "role": entry.get("role"), "attempt": entry.get("attempt"),
        "worker": change.worker}
    if data.get("by"):
        fields["actor"] = data["by"]
    if subject in ("step", "compensation"):
        return _step_line(change, entry, fields)
    if subject == "run":
        return _run_line(change, kind, data, fields)
    if subject == "alert":
        return None  # saga.alerts logs every alert as it sends it
    if kind == "signal.received":
        fields["signal"] = data.get("signal")
        return logging.INFO, f"{kind} {data.get('signal')!r}", fields
    return logging.INFO, kind, fields


def _step_line(change: Change, entry: dict[str, Any], fields: dict[str, Any]) -> Line:
    kind, data = entry["type"], entry.get("data") or {}
    what = kind.partition(".")[2]
    key = (entry["step"], Role(entry["role"]))
    before = change.before.steps.get(key) if change.before is not None else None
    after = change.after.steps[key] if key in change.after.steps else None
    was = before.status if before is not None else None
    error = data.get("error")
    if what == "superseded":
        fields["fence"] = data.get("fence")
        return logging.WARNING, (
            f"{kind}: the lease was lost, so this attempt's {data.get('outcome')} result "
            f"(fence {data.get('fence')}) is ignored; fence {data.get('current_fence')} "
            "holds the step now"), fields
    if what in ("checked", "skipped"):  # the step's verify answered about an attempt in doubt
        fields["answer"] = answer = data.get("answer")
        reason = f": {data['reason']}" if data.get("reason") else ""
        level = logging.WARNING if answer == "unknown" else logging.INFO  # a person must look
        return level, f"{kind}: verify answered {answer}{reason}", fields
    if data.get("in_doubt"):  # it may have taken effect: a check or a person tells
        fields["in_doubt"] = True
    if what == "running":
        if fields["worker"] is None and after is not None:
            fields["worker"] = after.lease_owner
        if was is StepStatus.RUNNING and before is not None:
            # The last attempt failed and the next was claimed in the same commit (a retry
            # with no wait): one row, so one line telling both.
            fields["error"] = error
            took = _duration(before.started_at, change.at)
            return logging.WARNING, (f"{kind}: attempt {entry['attempt']}, after attempt "
                                     f"{before.attempt} failed after {_human(took)}: {error}"
                                     ), fields
        return logging.INFO, f"{kind}: attempt {entry['attempt']}", fields
    if what == "waiting":
        fields["wake_at"] = data.get("wake_at")
        until = f"until {data['wake_at']}" if data.get("wake_at") else "with no time limit"
        return logging.INFO, f"{kind} {until}", fields
    if error and what != "succeeded":
        fields["error"] = error
    if was in (StepStatus.RUNNING, StepStatus.WAITING) and what in ENDINGS:
        assert before is not None and after is not None
        return _ended(change, entry, fields, before, after)
    if was is StepStatus.QUEUED and after is not None and before is not None \
            and after.attempt > before.attempt:  # its schedule-to-start limit passed
        fields["timed_out"] = True
        return logging.WARNING, _next(f"{kind}: attempt {entry['attempt']} never started: "
                                      f"{error}", what, data, fields), fields
    if what == "queued":  # first queued, its retry due, or resumed by a person
        fields.pop("error", None)  # the last attempt's, already logged
        note = {StepStatus.RETRY_WAIT: ": the retry is due", StepStatus.PARKED: ": resumed"}
        return logging.DEBUG, kind + (note.get(was, "") if was is not None else ""), fields
    if what in ("succeeded", "cancelled"):  # a wait over at once; never to run
        return logging.INFO, kind, fields
    return logging.WARNING, f"{kind}: {error}" if error else kind, fields


def _ended(change: Change, entry: dict[str, Any], fields: dict[str, Any], before: StepState,
           after: StepState) -> Line:
    """The line for an attempt (or a wait) that ended in this commit."""
    kind, data = entry["type"], entry.get("data") or {}
    what = kind.partition(".")[2]
    took = _duration(before.started_at, after.finished_at or change.at)
    if took is not None:
        fields["duration_ms"] = round(took.total_seconds() * 1000)
    if before.status is StepStatus.WAITING:
        error = f": {data['error']}" if data.get("error") else ""
        level = logging.INFO if what == "succeeded" else logging.WARNING
        return level, f"{kind}: the wait ended after {_human(took)}{error}", fields
    if fields["worker"] is None:
        fields["worker"] = before.lease_owner  # the sweeper ends a dead worker's attempt
    if what == "succeeded":
        return logging.INFO, f"{kind} in {_human(took)}", fields
    timed_out = any(e["type"] == "alert.timeout" and e.get("step") == entry["step"]
                    for e in change.entries)
    if timed_out:
        fields["timed_out"] = True
    message = (f"{kind}: attempt {entry['attempt']} {'timed out' if timed_out else 'failed'} "
               f"after {_human(took)}: {data.get('error')}")
    if what in ("retry_wait", "queued"):
        return logging.WARNING, _next(message, what, data, fields), fields
    # Failed for good (or parked): forward, the run compensates; a compensation that gave
    # up leaves the run failed, for a person.
    compensating = entry["role"] == Role.COMPENSATE and what == "failed"
    return (logging.ERROR if compensating else logging.WARNING), message, fields


def _next(message: str, what: str, data: dict[str, Any], fields: dict[str, Any]) -> str:
    """`message`, with when the next attempt comes if one does."""
    if what == "retry_wait":
        fields["next_attempt_at"] = data.get("next_attempt_at")
        return f"{message}; next attempt at {data.get('next_attempt_at')}"
    if what == "queued":
        return f"{message}; next attempt now"
    return message


def _run_line(change: Change, kind: str, data: dict[str, Any], fields: dict[str, Any]) -> Line:
    run = change.after
    status = kind.partition(".")[2]
    if data.get("error"):
        fields["error"] = data["error"]
    if kind == "run.parked":
        reason = str(data.get("reason"))
        fields["reason"] = reason
        # A version not loaded (yet) is a rollout in progress; anything else needs a person.
        level = logging.WARNING if reason.startswith(NOT_LOADED) else logging.ERROR
        return level, f"{kind}: {reason}", fields
    if status not in FINISHED:  # started, compensating, …
        level = logging.WARNING if status == RunStatus.COMPENSATING else logging.INFO
        return level, f"{kind}: {data['error']}" if data.get("error") else kind, fields
    fields["status"] = status
    took = _duration(run.created_at, run.finished_at or change.at)
    message = kind
    if took is not None:
        fields["duration_ms"] = round(took.total_seconds() * 1000)
        message += f" after {_human(took)}"
    if status == RunStatus.FAILED:  # its compensation gave up: a person must look
        return logging.ERROR, f"{message}: {data.get('error')}", fields
    return logging.INFO, message, fields


def republished(run_id: str, saga: str, version: int, step: str, role: Role) -> None:
    """Log that the sweeper published a queued step again (it changes no row to observe)."""
    kind = f"{prefix(role)}.republished"
    log.info("%s: still queued after SAGA_REDISPATCH_S, published again", kind,
             extra={"event": kind, "run_id": run_id, "saga": saga, "version": version,
                    "step": step, "role": str(role), "attempt": None, "worker": None})


def _duration(start: datetime | None, end: datetime | None) -> timedelta | None:
    if start is None or end is None:
        return None
    return max(end - start, timedelta(0))


def _human(took: timedelta | None) -> str:
    """`35 ms`, `2.4 s`, `0:03:05`: short for a person; the JSON has `duration_ms`."""
    if took is None:
        return "?"
    seconds = took.total_seconds()
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return str(timedelta(seconds=round(seconds)))
