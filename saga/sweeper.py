"""The sweeper: republish lost dispatches, expire dead leases, fire due retries and timeouts.

Safe to run on several machines at once: republishing takes its rows `FOR UPDATE SKIP
LOCKED`, and every advance re-checks its condition under the run's lock, so a second
sweeper finds nothing left to do. Each query reads a partial index on its due time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from saga.engine import Engine
from saga.events import (
    DeadlinePassed,
    Event,
    LeaseExpired,
    QueueTimedOut,
    RetryDue,
    WakeUpDue,
    dispatch,
)
from saga.observe.logs import republished as republished_step
from saga.registry import Registry
from saga.schedules.firing import Scheduler
from saga.settings import Settings
from saga.store import Outage, Store, unreachable

log = logging.getLogger("saga.sweeper")


@dataclass(frozen=True)
class Sweep:
    republished: int = 0
    leases_expired: int = 0
    retries_fired: int = 0
    queue_timeouts: int = 0
    deadlines: int = 0
    wakeups: int = 0
    schedule_runs: int = 0
    backfill_runs: int = 0

    @property
    def total(self) -> int:
        return (self.republished + self.leases_expired + self.retries_fired
                + self.queue_timeouts + self.deadlines + self.wakeups + self.schedule_runs
                + self.backfill_runs)


class Sweeper:
    """One pass over everything due (`sweep_once`), or passes forever (`run_forever`)."""

    def __init__(self, engine: Engine, store: Store, registry: Registry, scheduler: Scheduler,
                 settings: Settings,
                 on_sweep: Callable[[Sweep, float], None] | None = None) -> None:
        self.engine = engine
        self.store = store
        self.registry = registry
        self.scheduler = scheduler
        self.settings = settings
        self.on_sweep = on_sweep  # told each sweep of `run_forever` and its seconds (metrics)

    def sweep_once(self) -> Sweep:
        """One pass over everything due now."""
        limit, store = self.settings.sweep_batch, self.store
        republished = store.redispatch_due(limit)
        broker_down = False
        for due in republished:
            try:
                saga = self.registry.get(due.saga, due.version)
            except Exception as exc:
                _not_loaded(due.saga, due.version, exc)
                continue
            # Once the broker refuses one, stop trying (each refusal blocks) and keep every
            # step's next try at the base wait, so the backlog goes out as soon as it is back.
            broker_down = broker_down or not self.engine.publish(
                saga, due.run_id, [dispatch(due.step, due.role)])
            if broker_down:
                store.redispatch_failed(due)
            else:
                republished_step(due.run_id, due.saga, due.version, due.step, due.role)
        # Each expiry is logged by saga.runs, as the attempt's timed-out line.
        expired = [d for d in store.leases_expired(limit)
                   if self._advance(d.run_id, LeaseExpired(d.step, d.role, d.fence))]
        fired = [d for d in store.retries_due(limit)
                 if self._advance(d.run_id, RetryDue(d.step, d.role))]
        woken = [d for d in store.wakeups_due(limit)
                 if self._advance(d.run_id, WakeUpDue(d.step, d.role))]
        unstarted = [d for d in store.queue_timeouts_due(limit)
                     if self._advance(d.run_id, QueueTimedOut(d.step, d.role))]
        overdue = [run_id for run_id in store.deadlines_due(limit)
                   if self._advance(run_id, DeadlinePassed())]
        if self.settings.retention_days:
            self._prune()
        schedule_runs = sum(f.created for f in self.scheduler.fire())
        backfill_runs = self.scheduler.feed()
        return Sweep(len(republished), len(expired), len(fired), len(unstarted), len(overdue),
                     len(woken), schedule_runs, backfill_runs)

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Sweep every `sweep_interval_s` until `stop` is set; a failed sweep is logged and retried.

        Recovery after a crash is bounded: a dead worker's step is retried within
        `lease_s + sweep_interval_s`, a lost message is republished within
        `redispatch_s + sweep_interval_s`.
        """
        stop = stop or threading.Event()
        outage = Outage(log, "sweeper")
        while not stop.is_set():
            began = time.monotonic()
            try:
                result = self.sweep_once()
            except Exception as exc:
                if not outage.failed(exc):
                    log.exception("sweep failed; trying again next interval")
            else:
                outage.answered()
                if result.total:
                    log.info("sweep: %s", result)
                if self.on_sweep is not None:
                    self.on_sweep(result, time.monotonic() - began)
            stop.wait(self.settings.sweep_interval_s)

    def _prune(self) -> int:
        """Delete finished runs past the retention period, one batch per sweep (failed ones stay)."""
        cutoff = self.store.now() - timedelta(days=self.settings.retention_days)
        pruned = self.store.prune_finished(cutoff, self.settings.sweep_batch)
        if pruned:
            log.info("pruned %d runs finished before %s", pruned, cutoff.isoformat())
        return pruned

    def _advance(self, run_id: str, event: Event) -> bool:
        """One due item; a failure is logged and left for the next sweep, not fatal to this one."""
        try:
            outcome = self.engine.advance(run_id, event, skip_locked=True)
        except Exception as exc:
            if unreachable(exc):
                raise  # the whole sweep stops; run_forever says so once
            log.exception("could not advance run %s on %s", run_id, event)
            return False
        if outcome.parked:  # saga.runs told it once, when it was parked; due again each sweep
            log.debug("run %s is parked: %s", run_id, outcome.parked)
        return outcome.changed


_unloaded: set[tuple[str, int]] = set()  # definitions already named in this process's log


def _not_loaded(saga: str, version: int, error: Exception) -> None:
    """A queued step whose definition this sweeper lacks: said once per definition."""
    level = logging.DEBUG if (saga, version) in _unloaded else logging.WARNING
    _unloaded.add((saga, version))
    log.log(level, "%s v%s is not loaded in this sweeper (%s): its queued steps are not "
            "republished here; a sweeper that loads it (SAGA_SAGAS) republishes them",
            saga, version, error)
