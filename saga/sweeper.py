"""The sweeper: republish lost dispatches, expire dead leases, fire due retries.

Safe to run on several machines at once: republishing takes its rows `FOR UPDATE SKIP
LOCKED`, and every advance re-checks its condition under the run's lock, so a second
sweeper finds nothing left to do. Each query reads a partial index on its due time.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from saga.engine import Engine
from saga.state import CompensateStep, Event, LeaseExpired, RetryDue, RunStep
from saga.status import Kind
from saga.store import Due

log = logging.getLogger("saga.sweeper")


@dataclass(frozen=True)
class Sweep:
    republished: int = 0
    leases_expired: int = 0
    retries_fired: int = 0

    @property
    def total(self) -> int:
        return self.republished + self.leases_expired + self.retries_fired


def sweep_once(engine: Engine) -> Sweep:
    """One pass over everything due now."""
    limit = engine.settings.sweep_batch
    republished = engine.store.redispatch_due(limit)
    for due in republished:
        command = RunStep(due.step) if due.kind is Kind.FORWARD else CompensateStep(due.step)
        try:
            saga = engine.registry.get(due.saga, due.version)
        except Exception as exc:
            log.error("cannot republish %s of run %s: %s", due.step, due.run_id, exc)
            continue
        engine.publish(saga, due.run_id, [command])
    expired = [d for d in engine.store.leases_expired(limit)
               if _advance(engine, d, LeaseExpired(d.step, d.kind, d.fence))]
    for due in expired:
        log.warning("lease of %s %s in run %s expired; the attempt counts as failed",
                    due.kind, due.step, due.run_id)
    fired = [d for d in engine.store.retries_due(limit)
             if _advance(engine, d, RetryDue(d.step, d.kind))]
    return Sweep(len(republished), len(expired), len(fired))


def _advance(engine: Engine, due: Due, event: Event) -> bool:
    """One due item; a failure is logged and left for the next sweep, not fatal to this one."""
    try:
        return engine.handle(due.run_id, event, skip_locked=True)
    except Exception:
        log.exception("could not advance run %s (%s %s)", due.run_id, due.kind, due.step)
        return False


def run_forever(engine: Engine, stop: threading.Event | None = None) -> None:
    """Sweep every `sweep_interval_s` until `stop` is set; a failed sweep is logged and retried."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            result = sweep_once(engine)
            if result.total:
                log.info("sweep: %s", result)
        except Exception:
            log.exception("sweep failed; trying again next interval")
        stop.wait(engine.settings.sweep_interval_s)
