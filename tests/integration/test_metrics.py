"""Metrics on the real stack: the worker pool, the sweeper and the API each serve what they counted.

One stack on Redis (the counts do not depend on the broker): `saga worker -c 2` (prefork:
two children counting into files, merged per scrape) with SAGA_WORKER_METRICS_PORT,
`saga sweeper --metrics-port`, and `saga api` (two gunicorn workers, /metrics). Runs that
succeed, retry, compensate, time out, park and wait; then each endpoint is scraped and its
counts compared with the saga log, label for label: a label that goes missing, or a
process whose counts are not merged, fails here.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from saga import NonRetryable, Parallel, Retry, Saga, Step, Wait, WaitForSignal
from saga.store.reads import GAUGED_STATUSES
from tests.auth import bearer, create_token
from tests.conftest import BROKERS, need
from tests.sagas import arrive_and_wait
from tests.stack import Stack, free_port, wait_for

MODULE = __name__  # SAGA_SAGAS for the processes: the sagas below

Key = tuple[str, tuple[tuple[str, str], ...]]


def ok(ctx):
    return {"step": ctx.step}


def fails_twice(ctx):
    if ctx.attempt < 3:
        raise RuntimeError("gateway timeout")
    return {"attempt": ctx.attempt}


def decline(ctx):
    raise NonRetryable("card declined")


def overrun(ctx):
    time.sleep(30)  # the 1 s time limit interrupts it


QUICK = Retry(attempts=3, first_delay=timedelta(milliseconds=100), jitter=0)

m_quick = Saga("m_quick", steps=[Step("reserve", ok, compensate=ok), Step("charge", ok)])
m_flaky = Saga("m_flaky", steps=[Step("reserve", ok, compensate=ok),
                                 Step("charge", fails_twice, retry=QUICK)])
m_declined = Saga("m_declined", steps=[Step("reserve", ok, compensate=ok),
                                       Step("charge", decline, compensate_failed=False)])
# Both members wait for each other: the pool's two children each run one.
m_pair = Saga("m_pair", steps=[Parallel(Step("left", arrive_and_wait),
                                        Step("right", arrive_and_wait)), Step("join", ok)])
m_slow = Saga("m_slow", steps=[Step("slow", overrun, timeout=timedelta(seconds=1),
                                    on_timeout="park")])
m_nap = Saga("m_nap", steps=[Wait("nap", duration=timedelta(hours=1)), Step("after", ok)])
m_label = Saga("m_label", steps=[Step("reserve", ok, compensate=ok), WaitForSignal("label"),
                                 Step("after", ok)])
FINISHING = ["m_quick", "m_quick", "m_flaky", "m_declined", "m_pair"]


@pytest.fixture
def stack(database_url: str, tmp_path) -> Iterator[Stack]:
    need("redis", BROKERS["redis"])
    with Stack(database_url, BROKERS["redis"], tmp_path, sagas=MODULE) as running:
        yield running


def scrape(url: str, token: str | None = None) -> dict[Key, float]:
    response = requests.get(url, headers=bearer(token) if token else {}, timeout=5)
    assert response.status_code == 200, response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def counted(samples: dict[Key, float], name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of `name` with a value, keyed by the values of `labels` (all of its own)."""
    found: dict[tuple[str, ...], float] = {}
    for (sample, pairs), value in samples.items():
        if sample == name and value:
            assert [k for k, _ in pairs] == sorted(labels), (name, pairs)
            found[tuple(dict(pairs)[label] for label in labels)] = value
    return found


def summed(*scrapes: dict[Key, float]) -> dict[Key, float]:
    total: Counter = Counter()
    for samples in scrapes:
        total.update(samples)
    return dict(total)


def from_log(stack: Stack) -> dict[str, Counter]:
    """What the events table says happened: attempts by outcome, retries, claims, finishes."""
    rows = stack.query("SELECT r.saga, r.version, e.run_id, e.type, e.step, e.role, e.at "
                       "FROM events e JOIN runs r ON r.id = e.run_id ORDER BY e.id")
    timeouts = {(r.run_id, r.step, r.at) for r in rows if r.type == "alert.timeout"}
    log: dict[str, Counter] = {name: Counter() for name in (
        "attempts", "retries", "claims", "finished", "compensations", "started", "timeouts")}
    running: set[tuple[str, str, str]] = set()
    for r in rows:
        kind, _, what = r.type.partition(".")
        if kind == "run":
            if what == "started":
                log["started"][(r.saga, str(r.version))] += 1
            elif what == "compensating":
                log["compensations"][(r.saga, str(r.version))] += 1
            elif what in ("succeeded", "compensated", "failed", "cancelled"):
                log["finished"][(r.saga, str(r.version), what)] += 1
        elif kind == "alert" and what == "timeout":
            log["timeouts"][(r.saga, r.step, "attempt")] += 1  # the only kind this test makes
        elif kind in ("step", "compensation"):
            key = (r.run_id, r.step, r.role)
            if what == "running":
                running.add(key)
                log["claims"][(r.saga, r.role)] += 1
            elif key in running:
                running.discard(key)
                outcome = "succeeded" if what == "succeeded" else (
                    "timed_out" if (r.run_id, r.step, r.at) in timeouts else "failed")
                log["attempts"][(r.saga, r.step, r.role, outcome)] += 1
                if what in ("retry_wait", "queued"):
                    log["retries"][(r.saga, r.step, r.role)] += 1
    return log


def test_each_process_kind_serves_what_it_counted_and_the_sum_is_the_saga_log(stack: Stack):
    """Given a sweeper, the API and a worker pool of two, each with its metrics served,
    When runs succeed, retry, compensate, time out and park, run on both pool children,
    and wait on a timer and a signal,
    Then the worker's, the sweeper's and the API's counts add up to the saga log, label for
    label; the API's gauges are the log's unfinished runs; and /metrics wants a token."""
    worker_port, sweeper_port = free_port(), free_port()
    pool_files = stack.folder / "worker-metrics"
    pool_files.mkdir()
    stack.start_process("sweeper", ["-m", "saga.cli", "sweeper", "--metrics-port",
                                    str(sweeper_port)])
    stack.api()
    ids = {run_id: saga for saga in [*FINISHING, "m_slow", "m_nap", "m_label"]
           for run_id in [stack.post_run(saga, {})]}
    # No worker yet: the sweeper publishes a queued step again after SAGA_REDISPATCH_S.
    wait_for(lambda: stack.query("SELECT max(dispatches) FROM steps")[0][0] > 1, 10,
             "the sweeper to republish a queued step")
    stack.worker(concurrency=2, env={"SAGA_WORKER_METRICS_PORT": str(worker_port),
                                     "PROMETHEUS_MULTIPROC_DIR": str(pool_files)})
    for run_id, saga in ids.items():
        if saga in FINISHING:
            assert stack.wait_terminal(run_id, 30)["status"] in ("succeeded", "compensated")
    for saga, step in (("m_nap", "nap"), ("m_label", "label")):
        run_id = next(r for r, s in ids.items() if s == saga)
        wait_for(lambda run_id=run_id, step=step: any(
            s["name"] == step and s["status"] == "waiting" for s in stack.run(run_id)["steps"]),
            15, f"{saga} to wait")
    slow = next(r for r, s in ids.items() if s == "m_slow")
    wait_for(lambda: stack.run(slow)["parked"], 15, "m_slow to park after its time limit")

    read = create_token(stack.db, "read", "prometheus")
    urls = {"worker": f"http://127.0.0.1:{worker_port}/metrics",
            "sweeper": f"http://127.0.0.1:{sweeper_port}/metrics",
            "api": f"{stack.base}/metrics"}
    log = from_log(stack)
    expected = {
        ("saga_step_attempts_total", ("saga", "step", "role", "outcome")): log["attempts"],
        ("saga_retries_scheduled_total", ("saga", "step", "role")): log["retries"],
        ("saga_step_queue_delay_seconds_count", ("saga", "role")): log["claims"],
        ("saga_runs_finished_total", ("saga", "version", "status")): log["finished"],
        ("saga_runs_started_total", ("saga", "version")): log["started"],
        ("saga_compensations_started_total", ("saga", "version")): log["compensations"],
        ("saga_timeouts_total", ("saga", "step", "kind")): log["timeouts"],
    }
    durations = Counter()
    for (saga, step, role, _), n in log["attempts"].items():
        durations[(saga, step, role)] += n
    expected[("saga_step_duration_seconds_count", ("saga", "step", "role"))] = durations
    assert log["attempts"][("m_flaky", "charge", "forward", "failed")] == 2
    assert log["attempts"][("m_declined", "reserve", "compensate", "succeeded")] == 1
    assert log["timeouts"] == {("m_slow", "slow", "attempt"): 1}

    scrapes: dict[str, dict[Key, float]] = {}

    def mismatches() -> list[str]:
        scrapes.update({name: scrape(url, read if name == "api" else None)
                        for name, url in urls.items()})
        total = summed(*scrapes.values())
        return [f"{name}: {counted(total, name, *labels)} != {dict(want)}"
                for (name, labels), want in expected.items()
                if counted(total, name, *labels) != dict(want)]

    # Each process counts just after its commit, so a scrape may come a moment early.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not mismatches(), 10, "the scrapes to add up to the saga log")
    assert mismatches() == []
    worker, sweeper, api = scrapes["worker"], scrapes["sweeper"], scrapes["api"]

    # Where each was counted: starts in the API, attempts in the pool, from both children.
    assert counted(api, "saga_runs_started_total", "saga", "version") == dict(log["started"])
    assert counted(worker, "saga_step_attempts_total", "saga", "step", "role", "outcome") \
        == dict(log["attempts"])
    pair = stack.query("SELECT DISTINCT worker FROM events WHERE type = 'step.running' AND "
                       "step IN ('left', 'right')")
    assert len(pair) == 2, "the pair's members ran in two different pool children"
    children = {p.name.removesuffix(".db").rpartition("_")[2]
                for p in pool_files.glob("counter_*.db")}
    assert len(children) >= 2, sorted(pool_files.iterdir())

    # The sweeper: its sweeps, and each republish the log shows (dispatches beyond the first).
    republished = stack.query("SELECT coalesce(sum(dispatches - 1), 0) FROM steps")[0][0]
    assert republished >= 1
    assert counted(sweeper, "saga_sweeper_republished_total") == {(): republished}
    assert counted(sweeper, "saga_sweep_duration_seconds_count")[()] >= 1
    assert not counted(worker, "saga_sweep_duration_seconds_count")

    # The API's gauges are the log's: unfinished runs by status, zeros for every loaded saga.
    rows = stack.query("SELECT saga, version, status, count(*) FROM runs WHERE status IN "
                       "('running', 'compensating', 'failed') GROUP BY saga, version, status")
    in_log = {(r[0], str(r[1]), r[2]): float(r[3]) for r in rows}
    gauged = {labels: value for labels, value in _all(api, "saga_runs", "saga", "version",
                                                      "status").items()}
    assert {k: v for k, v in gauged.items() if v} == in_log
    assert {("m_quick", "1", str(s)) for s in GAUGED_STATUSES} <= set(gauged)
    assert in_log == {("m_slow", "1", "running"): 1, ("m_nap", "1", "running"): 1,
                      ("m_label", "1", "running"): 1}
    assert counted(api, "saga_runs_parked", "saga", "version") == {("m_slow", "1"): 1}
    assert counted(api, "saga_steps_waiting", "saga", "version", "step", "kind") == {
        ("m_nap", "1", "nap", "timer"): 1, ("m_label", "1", "label", "signal"): 1}
    lag = _all(api, "saga_sweeper_lag_seconds", "work")
    assert set(lag) == {("redispatch",), ("lease",), ("retry",), ("wakeup",),
                        ("schedule_to_start",), ("deadline",)}
    assert max(lag.values()) < 5, lag  # a sweeper that keeps up

    # /metrics wants a token while SAGA_AUTH=on, as /v1 does.
    refused = requests.get(urls["api"], timeout=5)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="saga"'
    wrong = requests.get(urls["api"], headers=bearer("saga_not-a-token"), timeout=5)
    assert wrong.status_code == 401 and "invalid_token" in wrong.headers["WWW-Authenticate"]


def _all(samples: dict[Key, float], name: str, *labels: str) -> dict[tuple[str, ...], Any]:
    """Every sample of `name`, zeros included."""
    return {tuple(dict(pairs)[label] for label in labels): value
            for (sample, pairs), value in samples.items() if sample == name}
