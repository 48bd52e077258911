"""The run lines of real processes, held against the saga log's events table.

A worker and sweeper log JSON (SAGA_LOG_FORMAT=json), the API the default text: orders
that succeed, retry and compensate must leave one line per attempt and compensation the
events table records, each naming its run, saga, version, step, role, attempt and worker.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import pytest
from celery.utils.log import get_task_logger

from saga import Saga, Step
from tests.conftest import BROKERS, need
from tests.stack import Stack, wait_for

SAGAS = "examples.fulfillment,tests.integration.test_logs"
QUIET_TYPES = (".queued",)  # logged at DEBUG; the processes here log INFO
UNLOGGED = ("alert.",)  # saga.alerts logs each alert, not saga.runs


def speak(ctx: Any) -> dict[str, Any]:
    """A step whose own code logs, through Celery's task logger and a plain one."""
    get_task_logger(__name__).info("speaking through Celery's task logger")
    logging.getLogger(__name__).warning("speaking through a plain logger")
    return {}


chatty = Saga("chatty", steps=[Step("speak", speak)])


@pytest.fixture
def broker_url() -> str:
    """One broker: what a process logs does not depend on which carries its messages."""
    need("redis", BROKERS["redis"])
    return BROKERS["redis"]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each log line of a JSON-logging process (Celery's banner and prints are not lines)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def row_key(row: Any) -> tuple[Any, ...]:
    return (row.run_id, row.type, row.step, row.role, row.attempt)


def line_key(line: dict[str, Any]) -> tuple[Any, ...]:
    return (line["run_id"], line["event"], line["step"], line["role"], line["attempt"])


def test_every_attempt_and_compensation_in_the_saga_log_has_its_line(stack: Stack) -> None:
    """Given an API logging text and a worker and sweeper logging JSON, when orders succeed,
    retry and compensate, then each row of the events table (but queued and alert rows)
    has exactly one saga.runs line with its run, step, role, attempt and worker, and no
    line tells of a row that is not there."""
    stack.env["SAGA_SAGAS"] = SAGAS
    stack.api()
    as_json = {"SAGA_LOG_FORMAT": "json"}
    worker = stack.worker(env=as_json)
    sweeper = stack.sweeper(env=as_json)  # fires the flaky card's retries
    chatty_id = stack.post_run("chatty", {})
    runs = {stack.post_order(): "succeeded", stack.post_order(card="flaky"): "succeeded",
            stack.post_order(address="nowhere"): "compensated", chatty_id: "succeeded"}
    assert {r: stack.wait_terminal(r)["status"] for r in runs} == runs

    rows = stack.query("SELECT run_id, type, step, role, attempt, worker FROM events "
                       "WHERE run_id = ANY(:ids) ORDER BY id", ids=list(runs))
    expected = Counter(row_key(r) for r in rows
                       if not r.type.endswith(QUIET_TYPES) and not r.type.startswith(UNLOGGED)
                       and r.type != "run.started")  # the API's, checked below
    assert {"step.retry_wait", "compensation.succeeded", "run.compensated"} <= {
        r.type for r in rows}, "the orders did not retry and compensate"

    def run_lines() -> list[dict[str, Any]]:
        return [line for p in (worker, sweeper) for line in json_lines(p.output())
                if line["logger"] == "saga.runs" and line.get("run_id") in runs]

    # A line is written just after its commit: wait until the last ones are there.
    try:
        wait_for(lambda: Counter(map(line_key, run_lines())) == expected, 10,
                 "a saga.runs line for each row")
    except AssertionError:
        logged = Counter(map(line_key, run_lines()))
        raise AssertionError(f"rows without their line: {expected - logged}; "
                             f"lines without their row: {logged - expected}") from None
    lines = run_lines()
    workers = {row_key(r): r.worker for r in rows if r.worker}
    for line in lines:
        assert line["saga"] in ("order_fulfillment", "chatty") and line["version"] == 1, line
        if line_key(line) in workers:
            assert line["worker"] == workers[line_key(line)], line
        if line["event"].endswith((".succeeded", ".retry_wait", ".failed")):
            assert isinstance(line["duration_ms"], int) and line["duration_ms"] >= 0, line
        if line["event"].startswith("run.") and line["event"] != "run.compensating":
            assert line["status"] == line["event"][4:] and line["duration_ms"] > 0, line
    failed = [line for line in lines if line["event"] == "step.retry_wait"]
    assert all(line["level"] == "WARNING" and "503" in line["error"] for line in failed), failed

    # The step's own lines, Celery's task logger's too, name the attempt they ran in.
    spoken = [line for line in json_lines(worker.output()) if "speaking" in line["message"]]
    assert len(spoken) == 2, spoken
    for line in spoken:
        assert (line["run_id"], line["saga"], line["version"], line["step"], line["role"],
                line["attempt"]) == (chatty_id, "chatty", 1, "speak", "forward", 1), line
        assert line["worker"].startswith("saga-"), line
    assert any(line["logger"] == "celery.app.trace" and "succeeded in" in line["message"]
               for line in json_lines(worker.output())), "Celery's task lines are not JSON"

    # The API logs text: a person reads the run and its saga on the line.
    api_text = stack.processes[0].output()
    for run_id in runs:
        assert f"INFO saga.runs run.started [run_id={run_id} saga=" in api_text, api_text
