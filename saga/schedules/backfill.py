"""Backfills as data: the plan of runs one would start, how it differs from what ran; pure.

A backfill asks for windows (a schedule's logical times, or lines of inputs), each an
idempotency key and an input. A window whose key already started a run is skipped, and
the plan says how that run differs from what the backfill asks (`Difference`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from saga.engine import validate_input
from saga.errors import InvalidBackfill, InvalidInput
from saga.run import RunStatus
from saga.store.text import unstorable_parts

MAX_ITEMS = 100_000  # runs one backfill may ask for
MAX_RUNNING = 10_000
DEFAULT_MAX_RUNNING = 10
BACKFILL_PREFIX = "backfill:"
KEY_CHARS = 255 - len(BACKFILL_PREFIX)  # runs.idempotency_key is 255 characters
ERRORS_SHOWN = 20


class Difference(StrEnum):
    """Why a window whose key already started a run is skipped, most telling first."""

    INPUT_CHANGED = "input_changed"  # its run had another input (the key keeps it from rerunning)
    RUNNING = "running"  # its run has not finished (running or compensating)
    FAILED = "failed"  # its run ended failed, compensated or cancelled
    UNCHANGED = "unchanged"  # its run succeeded with this very input


@dataclass(frozen=True)
class EarlierRun:
    """The run a window's key already started, as the store read it."""

    id: str
    status: str
    input: Any
    error: str | None = None


@dataclass(frozen=True)
class Window:
    """One run a backfill asks for: its key and input, and the run the key started, if any."""

    key: str
    input: Any
    earlier: EarlierRun | None = None

    @property
    def difference(self) -> Difference | None:
        """None: the window never ran, so the backfill starts it."""
        return None if self.earlier is None else difference(self.input, self.earlier)


def difference(wanted: Any, earlier: EarlierRun) -> Difference:
    """How the run a key started differs from the run a backfill asks for under that key."""
    if not same_json(wanted, earlier.input):
        return Difference.INPUT_CHANGED
    if not RunStatus(earlier.status).terminal:
        return Difference.RUNNING
    if earlier.status != RunStatus.SUCCEEDED:
        return Difference.FAILED
    return Difference.UNCHANGED


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON: 1, 1.0 and true differ, as they do to the run's idempotency check."""
    return _canonical(a) == _canonical(b)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class BackfillPlan:
    """The windows a backfill asks for, in order: those never run are the runs it starts."""

    saga: str
    windows: tuple[Window, ...]
    max_running: int
    from_at: datetime | None = None
    to_at: datetime | None = None

    @property
    def items(self) -> tuple[tuple[str, Any], ...]:
        """(idempotency key, input) of each run it would start."""
        return tuple((w.key, w.input) for w in self.windows if w.earlier is None)

    @property
    def ran(self) -> tuple[Window, ...]:
        """The windows skipped because their key already started a run."""
        return tuple(w for w in self.windows if w.earlier is not None)

    @property
    def existing(self) -> int:
        return len(self.ran)

    def counts(self) -> dict[Difference, int]:
        """How many skipped windows differ in each way, in `Difference` order, zeros left out."""
        found = [w.difference for w in self.ran]
        return {d: found.count(d) for d in Difference if d in found}


def plan_windows(saga: str, wanted: Sequence[tuple[str, Any]], found: Mapping[str, EarlierRun],
         max_running: int, from_at: datetime | None = None,
         to_at: datetime | None = None) -> BackfillPlan:
    """The plan of (key, input) windows, given the runs their keys already started."""
    windows = tuple(Window(key, value, found.get(key)) for key, value in wanted)
    return BackfillPlan(saga, windows, max_running, from_at, to_at)


def parse_lines(lines: Iterable[str]) -> list[tuple[str, Any]]:
    """JSON lines as ("line N", value), blank lines skipped; InvalidBackfill names bad lines."""
    entries: list[tuple[str, Any]] = []
    errors: dict[str, list[str]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append((f"line {number}", json.loads(line, parse_constant=_no_constant)))
        except (ValueError, RecursionError) as exc:
            errors[f"line {number}"] = [f"not JSON: {exc}"]
    if errors:
        raise InvalidBackfill(shown(errors))
    if not entries:
        raise InvalidBackfill({"inputs": ["holds no lines"]})
    return entries


def item(value: Any) -> tuple[str, Any, str | None]:
    """(idempotency key, run input, problem) of one input line."""
    record = value if isinstance(value, dict) else {}
    run_input = record["input"] if "input" in record else value
    problem = _unstorable(value)
    if "key" not in record:
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"),
                                           ensure_ascii=False).encode("utf-8", "replace"))
        return BACKFILL_PREFIX + digest.hexdigest()[:32], run_input, problem
    key = record["key"]
    if isinstance(key, bool) or not isinstance(key, str | int):
        return "", run_input, "key must be a string or an integer"
    key = str(key)
    if not key or not key.isprintable() or len(key) > KEY_CHARS:
        problem = f"key must be 1 to {KEY_CHARS} printable characters"
    return BACKFILL_PREFIX + key, run_input, problem


def _unstorable(value: Any) -> str | None:
    """The first reason PostgreSQL would refuse text in `value`, or None."""
    found = unstorable_parts(value)
    return next(iter(found.values()))[0] if found else None


def check_input(saga: Any, run_input: Any, where: str) -> None:
    try:
        validate_input(saga, run_input)
    except InvalidInput as exc:
        raise InvalidBackfill({where: [f"the saga's input schema refuses {run_input}: "
                                       f"{exc.errors}"]}) from None


def parse_time(value: str | datetime, zone: ZoneInfo, where: str,
          errors: dict[str, list[str]]) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            errors[where] = [f"{value!r} is not an ISO 8601 time, e.g. 2025-01-31T03:00:00Z"]
            return datetime.min
    return (value if value.tzinfo is not None else value.replace(tzinfo=zone)).astimezone(UTC)


def shown(errors: dict[str, list[str]]) -> dict[str, list[str]]:
    if len(errors) <= ERRORS_SHOWN:
        return errors
    shown = dict(list(errors.items())[:ERRORS_SHOWN])
    shown["more"] = [f"{len(errors) - ERRORS_SHOWN} more lines are wrong too"]
    return shown


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
