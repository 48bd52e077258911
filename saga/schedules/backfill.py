"""Backfills as data: the plan of runs one would start, and the checks of its inputs; pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from saga.engine import validate_input
from saga.errors import InvalidBackfill, InvalidInput
from saga.store.text import unstorable_parts

MAX_ITEMS = 100_000  # runs one backfill may ask for
MAX_RUNNING = 10_000
DEFAULT_MAX_RUNNING = 10
BACKFILL_PREFIX = "backfill:"
KEY_CHARS = 255 - len(BACKFILL_PREFIX)  # runs.idempotency_key is 255 characters
ERRORS_SHOWN = 20


@dataclass(frozen=True)
class BackfillPlan:
    """The runs a backfill would start: (idempotency key, input) items, in order."""

    saga: str
    items: tuple[tuple[str, Any], ...]
    existing: int  # asked for, but a run with the key exists already
    max_running: int
    from_at: datetime | None = None
    to_at: datetime | None = None


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
