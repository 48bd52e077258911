"""The sweeper's side of schedules and backfills: fire due schedules, feed backfills, plan them.

Every run either starts carries an idempotency key, `schedule:<logical time>` or
`backfill:<key>`, so any number of sweepers (and a backfill beside the schedule) start
each firing and each item once. Called from every sweep:

    fire_schedules(engine)    # due firings, after downtime by each schedule's catch-up policy
    feed_backfills(engine)    # the next items of each backfill, while fewer than N run
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

from saga.engine import Engine, validate_input
from saga.errors import (
    DefinitionError,
    IdempotencyConflict,
    InvalidInput,
    SagaError,
    UnknownSaga,
)
from saga.registry import Registry
from saga.schedules.cron import Schedule, iso, schedule_key

__all__ = ["fire_schedules", "feed_backfills", "plan_backfill", "start_backfill",
           "parse_lines", "BackfillPlan", "Firing", "InvalidBackfill", "scheduled"]

log = logging.getLogger("saga.schedules.firing")

# A sweeper that dies while starting runs delays them by at most this: less than a
# schedule's default grace, so such a firing still counts as on time.
CLAIM_S = 30.0
MAX_ITEMS = 100_000  # runs one backfill may ask for
MAX_RUNNING = 10_000
DEFAULT_MAX_RUNNING = 10
BACKFILL_PREFIX = "backfill:"
KEY_CHARS = 255 - len(BACKFILL_PREFIX)  # runs.idempotency_key is 255 characters
ERRORS_SHOWN = 20


class InvalidBackfill(SagaError):
    """The backfill request is invalid; nothing was written."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        shown = "; ".join(f"{where}: {' '.join(texts)}" for where, texts in errors.items())
        super().__init__(f"invalid backfill: {shown}")
        self.errors = errors


@dataclass(frozen=True)
class Firing:
    """One logical time a sweep started (or found started: `created` False)."""

    saga: str
    logical_time: datetime
    run_id: str
    created: bool


@dataclass(frozen=True)
class BackfillPlan:
    """The runs a backfill would start: (idempotency key, input) items, in order."""

    saga: str
    items: tuple[tuple[str, Any], ...]
    existing: int  # asked for, but a run with the key exists already
    max_running: int
    from_at: datetime | None = None
    to_at: datetime | None = None


# -- schedules ---------------------------------------------------------------------------

def fire_schedules(engine: Engine, registry: Registry | None = None,
                   now: datetime | None = None) -> list[Firing]:
    """Start every due firing of the loaded schedules; safe to call from many sweepers.

    A schedule seen for the first time starts from `now`: no history is fired.
    """
    store = engine.store
    now = (now if now is not None else store.now()).astimezone(UTC)
    found = scheduled(registry if registry is not None else engine.registry)
    specs = {name: schedule.spec for name, schedule in found.items()}
    store.add_schedules(specs, lambda name: found[name].next_after(now))
    fired: list[Firing] = []
    for name, due in store.claim_due_schedules(specs, now, engine.settings.sweep_batch, CLAIM_S):
        schedule = found[name]
        plan = schedule.plan(due, now, engine.settings.sweep_batch)
        if due < now - schedule.grace and schedule.catch_up != "all":
            log.warning("schedule of %s missed firings since %s; catch_up=%s starts %s",
                        name, iso(due), schedule.catch_up, [iso(t) for t in plan.fire] or "none")
        try:
            started = [f for f in (_fire(engine, name, t) for t in plan.fire) if f is not None]
        except Exception:
            log.exception("firing the schedule of %s failed; the next sweep tries again", name)
            store.release_schedule(name)
            continue
        store.advance_schedule(name, due, plan.next_fire_at, plan.fire[-1] if plan.fire else None)
        fired.extend(started)
    return fired


def scheduled(registry: Registry) -> dict[str, Schedule]:
    """The schedule of the newest version of each loaded saga that has a valid one."""
    found = {}
    for saga in registry:
        schedule = getattr(saga, "schedule", None)
        if registry.get(saga.name) is not saga or schedule is None:
            continue
        if _valid(saga.name, schedule, saga.input):
            found[saga.name] = schedule
    return found


@lru_cache(maxsize=1024)
def _valid(name: str, schedule: Schedule, schema: Any) -> bool:
    # Saga definitions check their schedule when built; this guards the sweeper anyway,
    # and logs a bad one once per process, not every sweep.
    try:
        schedule.check(_Named(name, schema))
    except DefinitionError as exc:
        log.error("%s; it does not fire", exc)
        return False
    return True


@dataclass(frozen=True)
class _Named:
    name: str
    input: Any


def _fire(engine: Engine, name: str, t: datetime) -> Firing | None:
    try:
        run_id, created = engine.start(name, {"logical_time": iso(t)}, schedule_key(t))
    except (InvalidInput, IdempotencyConflict, UnknownSaga) as exc:
        log.error("the firing of %s at %s cannot start: %s", name, iso(t), exc)
        return None
    return Firing(name, t, run_id, created)


# -- backfills ---------------------------------------------------------------------------

def feed_backfills(engine: Engine, backfill_id: str | None = None) -> int:
    """Start the next items of each backfill while fewer than its max_running are running.

    Returns how many items started. Only backfills of sagas loaded here are fed.
    """
    store = engine.store
    names = sorted({saga.name for saga in engine.registry})
    started = 0
    for feed in store.claim_feeds(names, engine.settings.sweep_batch, CLAIM_S, backfill_id):
        try:
            for seq, key, value in feed.items:
                try:
                    run_id, _ = engine.start(feed.saga, value, key, actor=feed.created_by)
                except (InvalidInput, IdempotencyConflict) as exc:
                    store.item_refused(feed.backfill_id, seq, str(exc))
                    continue
                store.item_started(feed.backfill_id, seq, run_id)
                started += 1
        except Exception:
            log.exception("feeding backfill %s failed; the next sweep goes on", feed.backfill_id)
        finally:
            store.release_feed(feed.backfill_id)
    return started


def plan_backfill(engine: Engine, saga_name: str, *, start: str | datetime | None = None,
                  end: str | datetime | None = None,
                  inputs: Sequence[tuple[str, Any]] | None = None,
                  max_running: int = DEFAULT_MAX_RUNNING) -> BackfillPlan:
    """The runs a backfill would start, checked, writing nothing.

    Either a range of the saga's schedule (`start`, `end`: ISO 8601, or aware datetimes;
    without an offset, in the schedule's time zone) or `inputs`, each (label, value)
    where the label ("line 3", "inputs[2]") names it in errors. Raises `UnknownSaga` or
    `InvalidBackfill`.
    """
    saga = engine.registry.get(saga_name)
    if not 1 <= max_running <= MAX_RUNNING:
        raise InvalidBackfill({"max_running": [f"must be between 1 and {MAX_RUNNING}"]})
    ranged = start is not None or end is not None
    if inputs is not None:
        if ranged:
            raise InvalidBackfill({"inputs": ["give either a range (from, to) or inputs, "
                                              "not both"]})
        return _plan_inputs(engine, saga, inputs, max_running)
    schedule = getattr(saga, "schedule", None)
    if schedule is None:
        raise InvalidBackfill({"from": [f"saga {saga_name!r} has no schedule, so no logical "
                                        "times: backfill it with inputs"]})
    if start is None or end is None:
        raise InvalidBackfill({"from" if start is None else "to": [
            "a range needs both from and to"]})
    zone = ZoneInfo(schedule.timezone)
    errors: dict[str, list[str]] = {}
    first, last = _time(start, zone, "from", errors), _time(end, zone, "to", errors)
    if errors:
        raise InvalidBackfill(errors)
    if first > last:
        raise InvalidBackfill({"from": [f"{iso(first)} is after to ({iso(last)})"]})
    # Times after now are the schedule's own to fire.
    times = list(islice(schedule.times(first, min(last, engine.store.now())), MAX_ITEMS + 1))
    if len(times) > MAX_ITEMS:
        raise InvalidBackfill({"to": [f"the range holds more than {MAX_ITEMS} logical times; "
                                      "split it"]})
    if times:
        _validate(saga, {"logical_time": iso(times[0])}, "from")
    keys = [schedule_key(t) for t in times]
    existing = engine.store.existing_keys(saga.name, keys)
    items = tuple((key, {"logical_time": iso(t)}) for key, t in zip(keys, times, strict=True)
                  if key not in existing)
    return BackfillPlan(saga.name, items, len(existing), max_running, first, last)


def start_backfill(engine: Engine, plan: BackfillPlan, created_by: str | None = None) -> str:
    """Store the backfill and start its first items now; the sweeper starts the rest.

    `created_by` (an API token's name) is recorded as the actor of every run it starts.
    """
    backfill_id = engine.store.create_backfill(plan.saga, plan.items, plan.max_running,
                                               plan.existing, plan.from_at, plan.to_at,
                                               created_by)
    feed_backfills(engine, backfill_id)
    return backfill_id


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
        raise InvalidBackfill(_shown(errors))
    if not entries:
        raise InvalidBackfill({"inputs": ["holds no lines"]})
    return entries


def _plan_inputs(engine: Engine, saga: Any, inputs: Sequence[tuple[str, Any]],
                 max_running: int) -> BackfillPlan:
    if not inputs:
        raise InvalidBackfill({"inputs": ["holds no inputs"]})
    if len(inputs) > MAX_ITEMS:
        raise InvalidBackfill({"inputs": [f"more than {MAX_ITEMS} inputs; split them"]})
    errors: dict[str, list[str]] = {}
    by_key: dict[str, tuple[str, Any]] = {}
    for label, value in inputs:
        key, run_input, problem = _item(value)
        if problem is None:
            try:
                validate_input(saga, run_input)
            except InvalidInput as exc:
                problem = "input " + "; ".join(
                    f"{name}: {' '.join(map(str, texts)) if isinstance(texts, list) else texts}"
                    for name, texts in sorted(exc.errors.items()))
        if problem is None and key in by_key and by_key[key][1] != run_input:
            problem = f"key {key[len(BACKFILL_PREFIX):]!r} is on {by_key[key][0]} with another input"
        if problem is not None:
            errors[label] = [problem]
        by_key.setdefault(key, (label, run_input))
    if errors:
        raise InvalidBackfill(_shown(errors))
    existing = engine.store.existing_keys(saga.name, list(by_key))
    items = tuple((key, run_input) for key, (_, run_input) in by_key.items()
                  if key not in existing)
    return BackfillPlan(saga.name, items, len(existing), max_running)


def _item(value: Any) -> tuple[str, Any, str | None]:
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
    """Text JSON carries but PostgreSQL cannot store: NUL, unpaired surrogates."""
    pending = [value]
    while pending:  # a loop, not recursion: the depth is the file's choice
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "text must not contain NUL (\\u0000) characters"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "text must not hold unpaired UTF-16 surrogates"
    return None


def _validate(saga: Any, run_input: Any, where: str) -> None:
    try:
        validate_input(saga, run_input)
    except InvalidInput as exc:
        raise InvalidBackfill({where: [f"the saga's input schema refuses {run_input}: "
                                       f"{exc.errors}"]}) from None


def _time(value: str | datetime, zone: ZoneInfo, where: str,
          errors: dict[str, list[str]]) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            errors[where] = [f"{value!r} is not an ISO 8601 time, e.g. 2025-01-31T03:00:00Z"]
            return datetime.min
    return (value if value.tzinfo is not None else value.replace(tzinfo=zone)).astimezone(UTC)


def _shown(errors: dict[str, list[str]]) -> dict[str, list[str]]:
    if len(errors) <= ERRORS_SHOWN:
        return errors
    shown = dict(list(errors.items())[:ERRORS_SHOWN])
    shown["more"] = [f"{len(errors) - ERRORS_SHOWN} more lines are wrong too"]
    return shown


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
