"""Prometheus metrics: counted from each commit's Changes; the log's own facts read per scrape.

`Metrics`, the observer the engine tells after each commit, increments module-level
counters and histograms in the process that committed: starts in the API, attempts in
the worker's pool, expired leases and fired retries in the sweeper. So each process kind
serves its own (`registry`, `serve`), a pool's processes merged from the files of
prometheus-client's multiprocess mode (`saga.observe.multiprocess`). What is a fact of
the database (runs by status, parked runs, waiting steps, the sweeper's lag) is kept in
no process: `DatabaseGauges` reads it once per scrape, and the API serves it.

    saga_runs_started_total{saga,version}            saga_runs_finished_total{saga,version,status}
    saga_compensations_started_total{saga,version}   saga_step_attempts_total{saga,step,role,outcome}
    saga_step_duration_seconds{saga,step,role}       saga_step_queue_delay_seconds{saga,role}
    saga_retries_scheduled_total{saga,step,role}     saga_timeouts_total{saga,step,kind}
    saga_leases_expired_total{saga,step,role}        saga_results_superseded_total{saga,step,role}
    saga_sweep_duration_seconds                      saga_sweeper_republished_total
    saga_messages_published_total{role}              saga_task_event_messages_total{kind}
    (the API's, from the log:) saga_runs{saga,version,status}, saga_runs_parked{saga,version},
    saga_steps_waiting{saga,version,step,kind}, saga_sweeper_lag_seconds{work}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from saga.definitions import Signal, Timer
from saga.events import Change
from saga.observe.multiprocess import ENV, alive
from saga.registry import Registry
from saga.run import RunStatus, StepState, StepStatus
from saga.store import Outage, Store
from saga.store.reads import GAUGED_STATUSES, SWEPT, Gauges

if TYPE_CHECKING:
    from saga.sweeper import Sweep

__all__ = ["Metrics", "DatabaseGauges", "swept", "registry", "serve"]

log = logging.getLogger("saga.observe.metrics")
# No `*_created` series: multiprocess mode has none, so each endpoint shows the same names.
disable_created_metrics()

# Steps take milliseconds to an hour; waits in the queue, a millisecond to minutes.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
DELAY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
SWEEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STEP = ["saga", "step", "role"]

RUNS_STARTED = Counter("saga_runs_started", "Runs started.", ["saga", "version"])
RUNS_FINISHED = Counter(
    "saga_runs_finished", "Runs that reached a final status: succeeded, compensated, failed "
    "(a compensation gave up: a person must look) or cancelled.", ["saga", "version", "status"])
COMPENSATIONS = Counter(
    "saga_compensations_started", "Runs that turned to compensation: a step failed, the "
    "saga's deadline passed, or someone cancelled.", ["saga", "version"])
ATTEMPTS = Counter(
    "saga_step_attempts", "Attempts that ended, of a step (role forward) or of its "
    "compensation: outcome succeeded, failed or timed_out.", [*STEP, "outcome"])
DURATION = Histogram("saga_step_duration_seconds", "How long an attempt ran, claim to end.",
                     STEP, buckets=STEP_BUCKETS)
QUEUE_DELAY = Histogram("saga_step_queue_delay_seconds", "How long a step was queued before "
                        "a worker claimed it.", ["saga", "role"], buckets=DELAY_BUCKETS)
RETRIES = Counter("saga_retries_scheduled", "Failed attempts given another attempt, at once "
                  "or after a backoff.", STEP)
TIMEOUTS = Counter(
    "saga_timeouts", "Timeouts, by kind: attempt (its time limit or its heartbeat), "
    "schedule_to_start, signal, or deadline (the saga's own; step \"\").",
    ["saga", "step", "kind"])
LEASES_EXPIRED = Counter("saga_leases_expired", "Attempts the sweeper ended because their "
                         "lease ran out: the worker died, froze or hung.", STEP)
SUPERSEDED = Counter("saga_results_superseded", "Results reported after the attempt's lease "
                     "was lost: recorded, not applied.", STEP)
SWEEP_DURATION = Histogram("saga_sweep_duration_seconds", "How long one sweep took.",
                           buckets=SWEEP_BUCKETS)
REPUBLISHED = Counter("saga_sweeper_republished", "Queued steps published again because no "
                      "worker took them within SAGA_REDISPATCH_S.")
# Broker traffic, counted where it is published (saga.tasks): per step run, the dearest part
# of a step after its commits.
MESSAGES_PUBLISHED = Counter(
    "saga_messages_published", "Step messages published to the broker, by role: a run's first "
    "steps, the steps not run inline after another, republished ones.", ["role"])
TASK_EVENT_MESSAGES = Counter(
    "saga_task_event_messages", "Broker messages of task events (for Flower) the saga sent "
    "itself, by kind: sent (a step message's task-sent event, before it) or inline (the events "
    "of attempts run inline, several per message). Celery's own task and worker events are "
    "not counted.", ["kind"])

SUCCEEDED, FAILED, TIMED_OUT = "succeeded", "failed", "timed_out"
AGAIN = (StepStatus.RETRY_WAIT, StepStatus.QUEUED)  # after a failed attempt: a retry is scheduled


class Metrics:
    """The observer that counts what each commit did: no I/O but the counters' own."""

    def committed(self, changes: Sequence[Change]) -> None:
        for change in changes:
            count(change)


def count(change: Change) -> None:
    """Count one commit's change to a run: its status, each step it moved, stale results."""
    run, before = change.after, change.before
    saga, version = run.saga, str(run.version)
    was = RunStatus.RUNNING if before is None else before.status
    if before is None:
        RUNS_STARTED.labels(saga, version).inc()
    if run.status is not was:
        if run.status.terminal:
            RUNS_FINISHED.labels(saga, version, run.status).inc()
        elif run.status is RunStatus.COMPENSATING and was is RunStatus.RUNNING:
            COMPENSATIONS.labels(saga, version).inc()
    timed_out: set[str | None] = set()
    for entry in change.entries:
        kind = entry["type"]
        if kind == "alert.timeout":
            timed_out.add(entry.get("step"))
        elif kind.endswith(".superseded"):
            SUPERSEDED.labels(saga, entry["step"], entry["role"]).inc()
    if None in timed_out:
        TIMEOUTS.labels(saga, "", "deadline").inc()
    earlier = before.steps if before is not None else {}
    at = change.at
    for key, now in run.steps.items():
        then = earlier.get(key)
        if then is not now:
            _step(saga, then, now, at, now.name in timed_out, by_sweeper=change.worker is None)


def _step(saga: str, then: StepState | None, now: StepState, at: datetime | None,
          timed_out: bool, by_sweeper: bool) -> None:
    name, role = now.name, now.role
    if now.status is StepStatus.RUNNING and (
            then is None or then.status is not StepStatus.RUNNING or then.fence != now.fence):
        QUEUE_DELAY.labels(saga, role).observe(_seconds(now.queued_at, now.started_at))
    if then is None:
        return
    if then.status is StepStatus.RUNNING and (
            now.status is not StepStatus.RUNNING or now.fence != then.fence):
        outcome = SUCCEEDED if now.status is StepStatus.SUCCEEDED else (
            TIMED_OUT if timed_out else FAILED)
        ATTEMPTS.labels(saga, name, role, outcome).inc()
        DURATION.labels(saga, name, role).observe(_seconds(then.started_at, now.finished_at or at))
        if timed_out:
            TIMEOUTS.labels(saga, name, "attempt").inc()
            if by_sweeper:  # only the sweeper ends a running attempt with no worker: its lease
                LEASES_EXPIRED.labels(saga, name, role).inc()
        if now.status in AGAIN:
            RETRIES.labels(saga, name, role).inc()
    elif (then.status is StepStatus.QUEUED and now.status is not StepStatus.RUNNING
          and now.attempt > then.attempt):  # not started within its schedule-to-start limit
        TIMEOUTS.labels(saga, name, "schedule_to_start").inc()
        if now.status in AGAIN:
            RETRIES.labels(saga, name, role).inc()
    elif then.status is StepStatus.WAITING and timed_out:
        TIMEOUTS.labels(saga, name, "signal").inc()


def _seconds(start: datetime | None, end: datetime | None) -> float:
    if start is None or end is None:
        return 0.0
    return max((end - start).total_seconds(), 0.0)


def swept(sweep: Sweep, seconds: float) -> None:
    """Count one sweep (the sweeper's `on_sweep`): how long it took, what it republished."""
    SWEEP_DURATION.observe(seconds)
    if sweep.republished:
        REPUBLISHED.inc(sweep.republished)


# -- the log's facts, read per scrape -----------------------------------------------------------

class DatabaseGauges:
    """Reads `Store.gauges()` on each scrape: runs by status, parked runs, waiting steps and
    the sweeper's lag. Every loaded saga shows, zeros included, so a graph has no gaps; a
    scrape while the log does not answer leaves these out and keeps the counters."""

    def __init__(self, store: Store, sagas: Registry) -> None:
        self.store, self.sagas = store, sagas
        self.outage = Outage(log, "metrics")

    def collect(self) -> Iterable[Metric]:
        try:
            found = self.store.gauges()
        except Exception as exc:
            if not self.outage.failed(exc):
                log.exception("metrics: reading the saga log's gauges failed")
            return []
        self.outage.answered()
        return self.families(found)

    def families(self, found: Gauges) -> list[Metric]:
        loaded = [(saga.name, saga.version) for saga in self.sagas]
        runs = GaugeMetricFamily("saga_runs", "Runs now running or compensating, and failed "
                                 "runs (they wait for a person).", labels=["saga", "version",
                                                                            "status"])
        counts = {(n, v, str(s)): 0 for n, v in loaded for s in GAUGED_STATUSES} | found.runs
        for (saga, version, status), value in sorted(counts.items()):
            runs.add_metric([saga, str(version), status], value)
        parked = GaugeMetricFamily("saga_runs_parked", "Unfinished runs parked: waiting for a "
                                   "person (a step timed out under on_timeout=park) or for "
                                   "their version to be loaded.", labels=["saga", "version"])
        for (saga, version), value in sorted((dict.fromkeys(loaded, 0) | found.parked).items()):
            parked.add_metric([saga, str(version)], value)
        waiting = GaugeMetricFamily("saga_steps_waiting", "Steps of running runs now waiting: "
                                    "for a timer, or for a signal.",
                                    labels=["saga", "version", "step", "kind"])
        waits = {(saga.name, saga.version, step.name): 0 for saga in self.sagas
                 for step in saga.by_name.values() if step.wait is not None} | found.waiting
        for (saga, version, step), value in sorted(waits.items()):
            waiting.add_metric([saga, str(version), step, self._wait_kind(saga, version, step)],
                               value)
        lag = GaugeMetricFamily("saga_sweeper_lag_seconds", "How long the most overdue item of "
                                "each kind of the sweeper's work has been due; a sweeper that "
                                "keeps up holds it under SAGA_SWEEP_INTERVAL_S.", labels=["work"])
        for work in SWEPT:
            due = found.due[work]
            behind = (found.at - due) if due is not None else timedelta(0)
            lag.add_metric([work], max(behind.total_seconds(), 0.0))
        return [runs, parked, waiting, lag]

    def _wait_kind(self, saga: str, version: int, step: str) -> str:
        try:
            wait = self.sagas.get(saga, version).by_name[step].wait
        except Exception:  # a version not loaded here, or a step renamed since
            return "unknown"
        return "timer" if isinstance(wait, Timer) else "signal" if isinstance(wait, Signal) \
            else "unknown"


# -- serving --------------------------------------------------------------------------------------

class _ThisProcess:
    """This process's metrics (the default registry), for a process that is not a pool."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class _PoolFiles:
    """Every pool process's files merged; one that is gone is marked dead first (its live
    gauges dropped, its counts kept), however it ended: SIGKILL leaves no hook to run."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.merged = MultiProcessCollector(None, path)

    def collect(self) -> Iterable[Metric]:
        for pid in _gone(self.path):
            mark_process_dead(pid, self.path)
        return self.merged.collect()


def _gone(path: str) -> set[int]:
    """Processes with live-gauge files in `path` that no longer run."""
    pids = set()
    for name in os.listdir(path):
        pid = name.removesuffix(".db").rpartition("_")[2]
        if name.startswith("gauge_live") and pid.isdigit() and not alive(int(pid)):
            pids.add(int(pid))
    return pids


def registry(*extra: Collector) -> CollectorRegistry:
    """What one endpoint serves: the counts of every process counting into
    PROMETHEUS_MULTIPROC_DIR, or this process's alone, and the `extra` collectors."""
    path = os.environ.get(ENV)
    served = CollectorRegistry()
    served.register(_PoolFiles(path) if path else _ThisProcess())
    for collector in extra:
        served.register(collector)
    return served


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve `registry()` at http://host:port/metrics from a daemon thread of this process.

    All interfaces by default: Prometheus scrapes from elsewhere (another container).
    """
    start_http_server(port, host, registry=registry())
