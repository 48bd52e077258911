"""The sweeper's side of schedules and backfills: fire due schedules, feed backfills, plan them.

Every run either starts carries an idempotency key, `schedule:<logical time>` or
`backfill:<key>`, so any number of sweepers (and a backfill beside the schedule) start
each firing and each item once. Every sweep calls `Scheduler.fire` (due firings, after
downtime by each schedule's catch-up policy) and `Scheduler.feed` (the next items of
each backfill, while fewer than its max_running run).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
    InvalidBackfill,
    InvalidInput,
    UnknownSaga,
)
from saga.registry import Registry
from saga.schedules.backfill import (
    BACKFILL_PREFIX,
    DEFAULT_MAX_RUNNING,
    MAX_ITEMS,
    MAX_RUNNING,
    BackfillPlan,
    EarlierRun,
    check_input,
    item,
    parse_time,
    plan_windows,
    shown,
)
from saga.schedules.cron import Schedule, iso, schedule_key
from saga.store import Store

__all__ = ["Scheduler", "Firing", "scheduled", "CLAIM_S"]

log = logging.getLogger("saga.schedules")

# A sweeper that dies while starting runs delays them by at most this: less than a
# schedule's default grace, so such a firing still counts as on time.
CLAIM_S = 30.0


@dataclass(frozen=True)
class Firing:
    """One logical time a sweep started (or found started: `created` False)."""

    saga: str
    logical_time: datetime
    run_id: str
    created: bool


class Scheduler:
    """Starts the runs of schedules and backfills through the engine, so each is a normal run."""

    def __init__(self, engine: Engine, store: Store, registry: Registry, batch: int = 500) -> None:
        self.engine = engine
        self.store = store
        self.registry = registry
        self.batch = batch  # rows one sweep takes at most

    def fire(self, now: datetime | None = None,
             registry: Registry | None = None) -> list[Firing]:
        """Start every due firing of the loaded schedules; safe to call from many sweepers.

        A schedule seen for the first time starts from `now`: no history is fired. A paused
        schedule is not claimed, so it starts nothing until resumed.
        """
        store = self.store
        now = (now if now is not None else store.now()).astimezone(UTC)
        found = scheduled(registry if registry is not None else self.registry)
        specs = {name: schedule.spec for name, schedule in found.items()}
        store.add_schedules(specs, lambda name: found[name].next_after(now))
        fired: list[Firing] = []
        for name, due in store.claim_due_schedules(specs, now, self.batch, CLAIM_S):
            schedule = found[name]
            plan = schedule.plan(due, now, self.batch)
            if due < now - schedule.grace and schedule.catch_up != "all":
                log.warning("schedule of %s missed firings since %s; catch_up=%s starts %s",
                            name, iso(due), schedule.catch_up, [iso(t) for t in plan.fire] or "none")
            try:
                started = [f for f in (self._fire(name, t) for t in plan.fire) if f is not None]
            except Exception:
                log.exception("firing the schedule of %s failed; the next sweep tries again", name)
                store.release_schedule(name)
                continue
            store.advance_schedule(name, due, plan.next_fire_at, plan.fire[-1] if plan.fire else None)
            fired.extend(started)
        return fired

    def pause(self, name: str, by: str | None = None) -> bool:
        """Stop firing the schedule of saga `name` until `resume`; False if paused already.

        `by` (an API token's name, or `cli:<user>`) is kept as `paused_by`. Raises
        `UnknownSaga` for a saga not loaded here or without a (valid) schedule.
        """
        self._stored(name)
        paused = self.store.pause_schedule(name, by)
        if paused:
            log.info("schedule of %s paused by %s", name, by or "anonymous")
        return paused

    def resume(self, name: str, by: str | None = None) -> bool:
        """Fire the schedule of `name` again from its first time after now; False if it was
        not paused. The firings due while it was paused are not started (backfill them)."""
        schedule = self._stored(name)
        resumed = self.store.resume_schedule(name, schedule.next_after)
        if resumed:
            log.info("schedule of %s resumed by %s", name, by or "anonymous")
        return resumed

    def states(self) -> list[dict[str, Any]]:
        """Each loaded schedule and its stored state, by saga; no next firing while paused."""
        stored = {row["saga"]: row for row in self.store.schedule_rows()}
        found = []
        for saga, schedule in sorted(scheduled(self.registry).items()):
            row = stored.get(saga, {})
            paused_at = row.get("paused_at")
            found.append({
                "saga": saga, "cron": schedule.cron, "timezone": schedule.timezone,
                "catch_up": schedule.catch_up,
                "next_fire_at": None if paused_at else row.get("next_fire_at"),
                "last_fire_at": row.get("last_fire_at"), "paused": paused_at is not None,
                "paused_at": paused_at, "paused_by": row.get("paused_by")})
        return found

    def state(self, name: str) -> dict[str, Any]:
        """One loaded schedule's state, as in `states`; `UnknownSaga` as `pause`."""
        self._stored(name)
        return next(s for s in self.states() if s["saga"] == name)

    def _stored(self, name: str) -> Schedule:
        """The loaded schedule of `name`, its row stored (as a sweep would) if it has none."""
        schedule = scheduled(self.registry).get(name)
        if schedule is None:
            self.registry.get(name)  # UnknownSaga if no saga of that name is loaded
            raise UnknownSaga(f"saga {name!r} has no schedule")
        self.store.add_schedules({name: schedule.spec},
                                 lambda _: schedule.next_after(self.store.now()))
        return schedule

    def _fire(self, name: str, t: datetime) -> Firing | None:
        try:
            run_id, created = self.engine.start(name, {"logical_time": iso(t)}, schedule_key(t))
        except (InvalidInput, IdempotencyConflict, UnknownSaga) as exc:
            log.error("the firing of %s at %s cannot start: %s", name, iso(t), exc)
            return None
        return Firing(name, t, run_id, created)

    def feed(self, backfill_id: str | None = None) -> int:
        """Start the next items of each backfill while fewer than its max_running are running.

        Returns how many items started. Only backfills of sagas loaded here are fed.
        """
        store = self.store
        names = sorted({saga.name for saga in self.registry})
        started = 0
        for feed in store.claim_feeds(names, self.batch, CLAIM_S, backfill_id):
            try:
                for seq, key, value in feed.items:
                    try:
                        run_id, _ = self.engine.start(feed.saga, value, key, actor=feed.created_by)
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

    def plan_backfill(self, saga_name: str, *, start: str | datetime | None = None,
                          end: str | datetime | None = None,
                          inputs: Sequence[tuple[str, Any]] | None = None,
                          max_running: int = DEFAULT_MAX_RUNNING) -> BackfillPlan:
        """The runs a backfill would start, checked, writing nothing.

        Either a range of the saga's schedule (`start`, `end`: ISO 8601, or aware datetimes;
        without an offset, in the schedule's time zone) or `inputs`, each (label, value)
        where the label ("line 3", "inputs[2]") names it in errors. A window whose key already
        started a run is kept in the plan, not started, with how that run differs. Raises
        `UnknownSaga` or `InvalidBackfill`.
        """
        saga = self.registry.get(saga_name)
        if not 1 <= max_running <= MAX_RUNNING:
            raise InvalidBackfill({"max_running": [f"must be between 1 and {MAX_RUNNING}"]})
        ranged = start is not None or end is not None
        if inputs is not None:
            if ranged:
                raise InvalidBackfill({"inputs": ["give either a range (from, to) or inputs, "
                                                  "not both"]})
            return self._plan_inputs(saga, inputs, max_running)
        schedule = getattr(saga, "schedule", None)
        if schedule is None:
            raise InvalidBackfill({"from": [f"saga {saga_name!r} has no schedule, so no logical "
                                            "times: backfill it with inputs"]})
        if start is None or end is None:
            raise InvalidBackfill({"from" if start is None else "to": [
                "a range needs both from and to"]})
        zone = ZoneInfo(schedule.timezone)
        errors: dict[str, list[str]] = {}
        first, last = parse_time(start, zone, "from", errors), parse_time(end, zone, "to", errors)
        if errors:
            raise InvalidBackfill(errors)
        if first > last:
            raise InvalidBackfill({"from": [f"{iso(first)} is after to ({iso(last)})"]})
        # Times after now are the schedule's own to fire.
        times = list(islice(schedule.times(first, min(last, self.store.now())), MAX_ITEMS + 1))
        if len(times) > MAX_ITEMS:
            raise InvalidBackfill({"to": [f"the range holds more than {MAX_ITEMS} logical times; "
                                          "split it"]})
        if times:
            check_input(saga, {"logical_time": iso(times[0])}, "from")
        wanted = [(schedule_key(t), {"logical_time": iso(t)}) for t in times]
        return plan_windows(saga.name, wanted, self._earlier(saga.name, wanted), max_running,
                            first, last)

    def start_backfill(self, plan: BackfillPlan, created_by: str | None = None) -> str:
        """Store the backfill and start its first items now; the sweeper starts the rest.

        `created_by` (an API token's name) is recorded as the actor of every run it starts.
        """
        backfill_id = self.store.create_backfill(plan.saga, plan.items, plan.max_running,
                                                 plan.existing, plan.from_at, plan.to_at,
                                                 created_by)
        self.feed(backfill_id)
        return backfill_id

    def _plan_inputs(self, saga: Any, inputs: Sequence[tuple[str, Any]],
                         max_running: int) -> BackfillPlan:
        if not inputs:
            raise InvalidBackfill({"inputs": ["holds no inputs"]})
        if len(inputs) > MAX_ITEMS:
            raise InvalidBackfill({"inputs": [f"more than {MAX_ITEMS} inputs; split them"]})
        errors: dict[str, list[str]] = {}
        by_key: dict[str, tuple[str, Any]] = {}
        for label, value in inputs:
            key, run_input, problem = item(value)
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
            raise InvalidBackfill(shown(errors))
        wanted = [(key, run_input) for key, (_, run_input) in by_key.items()]
        return plan_windows(saga.name, wanted, self._earlier(saga.name, wanted), max_running)

    def _earlier(self, saga_name: str, wanted: Sequence[tuple[str, Any]]) -> dict[str, EarlierRun]:
        """The runs these windows' keys already started, read in one query (per 1000 keys)."""
        found = self.store.runs_by_key(saga_name, [key for key, _ in wanted])
        return {key: EarlierRun(**row) for key, row in found.items()}


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
