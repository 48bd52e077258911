"""The sweeper: republish lost dispatches, expire dead leases, fire due retries and timeouts.

Safe to run on several machines at once: republishing takes its rows `FOR UPDATE SKIP
LOCKED`, and every advance re-checks its condition under the run's lock, so a second
sweeper finds nothing left to do. Each query reads a partial index on its due time.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from saga.engine import Engine
from saga.errors import RunParked
from saga.run import Kind
from saga.schedules.firing import feed_backfills, fire_schedules
from saga.state import (
    CompensateStep,
    DeadlinePassed,
    Event,
    LeaseExpired,
    QueueTimedOut,
    RetryDue,
    RunStep,
    WakeUpDue,
)

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


def sweep_once(engine: Engine) -> Sweep:
    """One pass over everything due now."""
    limit = engine.settings.sweep_batch
    republished = engine.store.redispatch_due(limit)
    broker_down = False
    for due in republished:
        command = RunStep(due.step) if due.kind is Kind.FORWARD else CompensateStep(due.step)
        try:
            saga = engine.registry.get(due.saga, due.version)
        except Exception as exc:
            log.error("cannot republish %s of run %s: %s", due.step, due.run_id, exc)
            continue
        # Once the broker refuses one, stop trying (each refusal blocks) and keep every
        # step's next try at the base wait, so the backlog goes out as soon as it is back.
        broker_down = broker_down or not engine.publish(saga, due.run_id, [command])
        if broker_down:
            engine.store.redispatch_failed(due)
    expired = [d for d in engine.store.leases_expired(limit)
               if _advance(engine, d.run_id, LeaseExpired(d.step, d.kind, d.fence))]
    for due in expired:
        log.warning("lease of %s %s in run %s expired; the attempt counts as failed",
                    due.kind, due.step, due.run_id)
    fired = [d for d in engine.store.retries_due(limit)
             if _advance(engine, d.run_id, RetryDue(d.step, d.kind))]
    woken = [d for d in engine.store.wakeups_due(limit)
             if _advance(engine, d.run_id, WakeUpDue(d.step, d.kind))]
    unstarted = [d for d in engine.store.queue_timeouts_due(limit)
                 if _advance(engine, d.run_id, QueueTimedOut(d.step, d.kind))]
    overdue = [run_id for run_id in engine.store.deadlines_due(limit)
               if _advance(engine, run_id, DeadlinePassed())]
    if engine.settings.retention_days:
        _prune(engine)
    schedule_runs = sum(f.created for f in fire_schedules(engine))
    backfill_runs = feed_backfills(engine)
    return Sweep(len(republished), len(expired), len(fired), len(unstarted), len(overdue),
                 len(woken), schedule_runs, backfill_runs)


def _prune(engine: Engine) -> int:
    """Delete finished runs past the retention period, one batch per sweep (failed ones stay)."""
    cutoff = engine.store.now() - timedelta(days=engine.settings.retention_days)
    pruned = engine.store.prune_finished(cutoff, engine.settings.sweep_batch)
    if pruned:
        log.info("pruned %d runs finished before %s", pruned, cutoff.isoformat())
    return pruned


def _advance(engine: Engine, run_id: str, event: Event) -> bool:
    """One due item; a failure is logged and left for the next sweep, not fatal to this one."""
    try:
        return engine.handle(run_id, event, skip_locked=True)
    except RunParked as exc:
        log.warning("%s", exc)
        return False
    except Exception:
        log.exception("could not advance run %s on %s", run_id, event)
        return False


def run_forever(engine: Engine, stop: threading.Event | None = None) -> None:
    """Sweep every `sweep_interval_s` until `stop` is set; a failed sweep is logged and retried.

    Recovery after a crash is bounded: a dead worker's step is retried within
    `lease_s + sweep_interval_s`, a lost message is republished within
    `redispatch_s + sweep_interval_s`.
    """
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            result = sweep_once(engine)
            if result.total:
                log.info("sweep: %s", result)
        except Exception:
            log.exception("sweep failed; trying again next interval")
        stop.wait(engine.settings.sweep_interval_s)
