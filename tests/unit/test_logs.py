"""Run lines and log formats: what `saga.runs` says for each committed row, and how a line reads.

The engine and worker run on an embedded SQLite log with a recording dispatcher; the
lines are held against the events table the same commits wrote.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from saga import NonRetryable, Retry, Saga, Step
from saga.cli import main
from saga.engine import Engine
from saga.events import Change, LeaseExpired, StepSucceeded
from saga.observe.context import ContextFilter, bound
from saga.observe.logs import RunLog, republished
from saga.observe.logs import line as line_of
from saga.observe.logsetup import formatter
from saga.registry import Registry
from saga.run import Role, Run, RunStatus, StepState, StepStatus
from saga.settings import Settings
from saga.store import Store
from saga.store.tables import events
from saga.testing.clock import MovableClock
from saga.testing.dispatch import RecordingDispatcher
from saga.worker.runner import Worker

FAILURES: Counter[str] = Counter()


def ok(ctx: Any) -> dict[str, Any]:
    return {"step": ctx.step}


def declined(ctx: Any) -> None:
    raise NonRetryable("card declined")


def fails_once(ctx: Any) -> dict[str, Any]:
    FAILURES[ctx.run_id] += 1
    if FAILURES[ctx.run_id] == 1:
        raise ConnectionError("payments answered 503")
    return {}


DECLINED = Saga("declined", steps=[
    Step("reserve", ok, compensate=ok),
    Step("charge", declined, compensate=ok),
])
FLAKY = Saga("flaky", steps=[  # no wait between attempts: requeued in the failing commit
    Step("charge", fails_once, retry=Retry(attempts=2, first_delay=timedelta(0))),
])
STUCK = Saga("stuck", steps=[  # its compensation cannot be done: the run fails, for a person
    Step("reserve", ok, compensate=declined),
    Step("charge", declined),
])
SLOW = Saga("slow", steps=[  # its lease runs out when the test moves the clock
    Step("charge", ok, retry=Retry(attempts=2, first_delay=timedelta(seconds=5)),
         heartbeat_timeout=timedelta(seconds=10)),
])


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Parts:
    def __init__(self, store: Store, clock: MovableClock) -> None:
        self.store, self.clock = store, clock
        self.logger = logging.getLogger(f"test.runs.{uuid.uuid4().hex[:8]}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.told = Records()
        self.logger.addHandler(self.told)
        self.dispatcher = RecordingDispatcher()
        self.registry = registry = Registry([DECLINED, FLAKY, STUCK, SLOW])
        self.engine = Engine(registry, store, self.dispatcher, lease_s=30,
                             observer=RunLog(self.logger))
        self.worker = Worker(self.engine, registry, self.dispatcher, inline_steps=50)

    def deliver(self) -> None:
        while sent := self.dispatcher.take():
            for hint in sent:
                self.worker.run_step(hint.run_id, hint.command.step, hint.command.role,
                                     hint.saga, hint.version, worker="host/1")

    def lines(self, run_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [{**r.__dict__, "message": r.getMessage()} for r in self.told.records
                if getattr(r, "run_id", None) == run_id
                and (event is None or r.__dict__["event"] == event)]

    def assert_one_line_per_row(self, run_id: str) -> None:
        """Each row of the run's events table, alerts aside, has exactly its line."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(events).where(events.c.run_id == run_id)
                                .order_by(events.c.id)).all()
        expected = [(r.type, r.step, r.role, r.attempt) for r in rows
                    if not r.type.startswith("alert.")]
        told = [(line["event"], line["step"], line["role"], line["attempt"])
                for line in self.lines(run_id)]
        assert told == expected
        worker = {(r.type, r.step, r.role, r.attempt): r.worker for r in rows}
        for line in self.lines(run_id):
            key = (line["event"], line["step"], line["role"], line["attempt"])
            assert worker[key] in (None, line["worker"]), line


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from saga import migrations

    path = tmp_path_factory.mktemp("log") / "saga.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def parts(migrated: Path, tmp_path: Path) -> Iterator[Parts]:
    shutil.copy(migrated, tmp_path / "saga.db")
    clock = MovableClock()
    store = Store(f"sqlite:///{tmp_path / 'saga.db'}", clock)
    yield Parts(store, clock)
    store.close()


# -- what saga.runs says for each committed row ---------------------------------------------


def test_a_declined_card_tells_each_attempt_compensation_and_the_run_with_durations(parts):
    """Given a charge that raises NonRetryable, when the run compensates, then each row has
    its line: the failure at WARNING with its error, each compensation started and done,
    the run compensated with its status and duration."""
    run_id, _ = parts.engine.start("declined", {})
    parts.deliver()
    parts.assert_one_line_per_row(run_id)

    [failed] = parts.lines(run_id, "step.failed")
    assert failed["levelname"] == "WARNING" and failed["attempt"] == 1
    assert failed["error"] == "NonRetryable: card declined"
    assert failed["message"].startswith("step.failed: attempt 1 failed after ")
    assert failed["worker"] == "host/1" and failed["duration_ms"] >= 0
    undone = parts.lines(run_id, "compensation.succeeded")
    assert [(u["step"], u["role"]) for u in undone] == [("charge", "compensate"),
                                                        ("reserve", "compensate")]
    [finished] = parts.lines(run_id, "run.compensated")
    assert finished["status"] == "compensated" and finished["duration_ms"] >= 0
    assert finished["levelname"] == "INFO"
    assert all((line["saga"], line["version"]) == ("declined", 1) for line in parts.lines(run_id))


def test_a_failed_attempt_claimed_again_in_its_commit_is_told_on_the_next_attempts_line(parts):
    """Given a retry with no wait, which the worker claims again in the commit recording
    the failure (one row), then the second attempt's line is a warning with the error."""
    run_id, _ = parts.engine.start("flaky", {})
    parts.deliver()
    parts.assert_one_line_per_row(run_id)
    first, second = parts.lines(run_id, "step.running")
    assert (first["attempt"], first["levelname"]) == (1, "INFO")
    assert (second["attempt"], second["levelname"]) == (2, "WARNING")
    assert second["error"] == "ConnectionError: payments answered 503"
    assert re.fullmatch(r"step.running: attempt 2, after attempt 1 failed after \d+ ms: "
                        r"ConnectionError: payments answered 503", second["message"])


def test_a_failed_attempt_queued_again_at_once_is_a_warning_with_its_error(parts):
    parts.worker = Worker(parts.engine, parts.registry, parts.dispatcher, inline_steps=0)
    run_id, _ = parts.engine.start("flaky", {})
    parts.deliver()
    parts.assert_one_line_per_row(run_id)
    [again] = [line for line in parts.lines(run_id, "step.queued") if line["attempt"] == 1]
    assert again["levelname"] == "WARNING" and again["worker"] == "host/1"
    assert re.fullmatch(r"step.queued: attempt 1 failed after \d+ ms: ConnectionError: "
                        r"payments answered 503; next attempt now", again["message"])


def test_a_compensation_that_gives_up_and_the_failed_run_are_errors(parts):
    run_id, _ = parts.engine.start("stuck", {})
    parts.deliver()
    parts.assert_one_line_per_row(run_id)
    errors = [(line["event"], line["step"]) for line in parts.lines(run_id)
              if line["levelname"] == "ERROR"]
    assert errors == [("compensation.failed", "reserve"), ("run.failed", None)]
    [failed] = parts.lines(run_id, "run.failed")
    assert failed["status"] == "failed" and "card declined" in failed["error"]


def test_an_expired_lease_is_a_timed_out_attempt_of_its_worker_and_its_late_result_is_superseded(
        parts):
    """Given a claimed step whose worker stops beating, when the sweeper expires its lease,
    then the line says the attempt timed out and names the worker that held it; the
    worker's late result is then told as superseded (its lease was lost)."""
    run_id, _ = parts.engine.start("slow", {})
    parts.dispatcher.take()
    claim = parts.engine.claim(run_id, SLOW, "charge", Role.FORWARD, "host/dead")
    assert claim is not None
    parts.clock.advance(timedelta(seconds=11))
    assert parts.engine.advance(run_id, LeaseExpired("charge", Role.FORWARD, claim.fence)).changed
    parts.engine.advance(run_id, StepSucceeded("charge", Role.FORWARD, claim.fence, {}),
                         worker="host/dead")
    parts.assert_one_line_per_row(run_id)

    [expired] = parts.lines(run_id, "step.retry_wait")
    assert expired["timed_out"] is True and expired["worker"] == "host/dead"
    assert expired["duration_ms"] == pytest.approx(11_000, abs=1_000)
    assert "attempt 1 timed out after" in expired["message"]
    assert "next attempt at" in expired["message"] and expired["next_attempt_at"]
    [late] = parts.lines(run_id, "step.superseded")
    assert late["levelname"] == "WARNING" and late["worker"] == "host/dead"
    assert "lease was lost" in late["message"]


def test_a_run_whose_version_is_not_loaded_is_parked_with_one_warning_not_an_error(parts):
    run_id, _ = parts.engine.start("slow", {})
    parts.dispatcher.take()
    for _ in range(3):  # each redelivery finds it parked already: no second line
        parts.worker.run_step(run_id, "charge", Role.FORWARD, "slow", 7, worker="host/1")
    [parked] = parts.lines(run_id, "run.parked")
    assert parked["levelname"] == "WARNING" and "slow v7" in parked["reason"]
    assert not [r for r in parts.told.records if r.levelno >= logging.ERROR]


RUN = Run("r-1", "order", 2, RunStatus.RUNNING, {},
          steps={("charge", Role.FORWARD): StepState("charge", Role.FORWARD, StepStatus.RUNNING,
                                                     attempt=2)})


@pytest.mark.parametrize("entry, level, message", [
    ({"type": "step.checked", "step": "charge", "role": "forward", "attempt": 2,
      "data": {"answer": "done"}}, logging.INFO, "step.checked: verify answered done"),
    ({"type": "step.checked", "step": "charge", "role": "forward", "attempt": 2,
      "data": {"answer": "unknown"}}, logging.WARNING, "step.checked: verify answered unknown"),
    ({"type": "compensation.skipped", "step": "charge", "role": "compensate", "attempt": 0,
      "data": {"answer": "not_done", "reason": "nothing to undo"}}, logging.INFO,
     "compensation.skipped: verify answered not_done: nothing to undo"),
    ({"type": "step.waiting", "step": "label", "role": "forward", "attempt": 0,
      "data": {"wake_at": "2030-01-01T00:00:00+00:00"}}, logging.INFO,
     "step.waiting until 2030-01-01T00:00:00+00:00"),
    ({"type": "signal.received", "step": None, "role": None, "attempt": None,
      "data": {"signal": "label", "signal_id": 4}}, logging.INFO, "signal.received 'label'"),
    ({"type": "run.parked", "step": None, "role": None, "attempt": None,
      "data": {"reason": "waiting for order v2 to be loaded again: not here"}}, logging.WARNING,
     "run.parked: waiting for order v2 to be loaded again: not here"),
    ({"type": "run.parked", "step": None, "role": None, "attempt": None,
      "data": {"reason": "the definition changed under this version"}}, logging.ERROR,
     "run.parked: the definition changed under this version"),
    ({"type": "alert.timeout", "step": "charge", "data": {"message": "timed out"}}, None, None),
])
def test_each_kind_of_row_has_its_level_and_message(entry, level, message):
    told = line_of(Change(RUN, RUN, [entry], "host/1"), entry)
    if level is None:
        assert told is None  # saga.alerts logs each alert
        return
    assert told is not None and told[:2] == (level, message)
    fields = told[2]
    assert (fields["event"], fields["run_id"], fields["saga"], fields["version"],
            fields["step"], fields["role"], fields["attempt"], fields["worker"]) == (
        entry["type"], "r-1", "order", 2, entry["step"], entry["role"], entry["attempt"],
        "host/1")


def test_a_republished_step_is_told_with_its_run_fields(caplog):
    with caplog.at_level(logging.INFO, logger="saga.runs"):
        republished("r-1", "order", 2, "charge", Role.COMPENSATE)
    [record] = caplog.records
    fields = record.__dict__
    assert ([fields[k] for k in ("event", "run_id", "saga", "version", "step", "role")]
            == ["compensation.republished", "r-1", "order", 2, "charge", "compensate"])


# -- how a line reads -------------------------------------------------------------------


def render(format: str, log: Any) -> str:
    """What `log(logger)` prints through a handler set up like `configure`'s."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter(format))
    logger = logging.getLogger(f"test.format.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    log(logger)
    return out.getvalue()


ATTEMPT = dict(run_id="r-1", saga="order", version=2, step="charge", role="forward",
               attempt=3, worker="host/9")


def test_a_text_line_ends_with_the_fields_of_the_attempt_running():
    with bound(**ATTEMPT):
        text = render("text", lambda log: log.info("charging %s", "card"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO test\.format\.\w+ charging card "
                        r"\[run_id=r-1 saga=order version=2 step=charge role=forward attempt=3 "
                        r"worker=host/9\]\n", text), text


def test_a_text_line_outside_any_attempt_is_the_classic_one():
    text = render("text", lambda log: log.warning("nothing running"))
    assert re.fullmatch(r"\S+ \S+ WARNING test\.format\.\w+ nothing running\n", text), text


def test_a_json_line_is_one_object_with_the_attempts_fields_and_its_own():
    with bound(**ATTEMPT):
        text = render("json", lambda log: log.info("step.succeeded in 5 ms", extra={
            "event": "step.succeeded", "duration_ms": 5, "attempt": 4}))
    [line] = [json.loads(raw) for raw in text.splitlines()]
    assert line["level"] == "INFO" and line["message"] == "step.succeeded in 5 ms"
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    assert line["event"] == "step.succeeded" and line["duration_ms"] == 5
    # The record's own attempt wins over the bound one; the rest come from the binding.
    assert {k: line[k] for k in ATTEMPT} == {**ATTEMPT, "attempt": 4}


def test_a_json_line_carries_its_traceback_in_one_line():
    def fail(log: logging.Logger) -> None:
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("it broke")

    text = render("json", fail)
    assert len(text.splitlines()) == 1
    assert "ValueError: bad" in json.loads(text)["exc_info"]


def test_the_fields_are_bound_only_for_the_block():
    with bound(run_id="outer"):
        with bound(step="inner"):
            inside = render("json", lambda log: log.info("x"))
        after = render("json", lambda log: log.info("y"))
    assert (json.loads(inside)["run_id"], json.loads(inside)["step"]) == ("outer", "inner")
    assert "step" not in json.loads(after)
    assert "run_id" not in json.loads(render("json", lambda log: log.info("z")))


@pytest.mark.parametrize("value", ["xml", "JSON", ""])
def test_an_unknown_log_format_is_refused_naming_the_setting(value):
    with pytest.raises(ValueError, match=f"SAGA_LOG_FORMAT must be text or json, not {value!r}"):
        Settings.from_env({"SAGA_LOG_FORMAT": value})


def test_the_cli_refuses_an_unknown_log_format_before_anything_else():
    result = CliRunner().invoke(main, ["migrate"], env={"SAGA_LOG_FORMAT": "xml"})
    assert result.exit_code == 1
    assert "SAGA_LOG_FORMAT must be text or json, not 'xml'" in result.output


CONFIGURED = """
import logging
from celery import signals
from saga.observe.logsetup import configure
configure("INFO", "text")
logging.getLogger("celery.app.trace").info("Task saga.step[1] succeeded")
configure("INFO", "json")  # again: its handler replaces the first
assert len(logging.getLogger().handlers) == 1
assert signals.setup_logging.receivers  # so a Celery worker leaves it as it is
logging.getLogger("celery.app.trace").info("Task saga.step[2] succeeded")
logging.getLogger("user").debug("not at INFO")
"""


def test_configure_sends_every_logger_through_its_one_handler_in_the_format():
    """In a process of its own: the test runner's logging is set, so configure leaves it."""
    result = subprocess.run([sys.executable, "-c", CONFIGURED], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text, as_json = result.stderr.splitlines()
    assert " INFO celery.app.trace Task saga.step[1] succeeded" in text
    assert json.loads(as_json)["logger"] == "celery.app.trace"
    assert json.loads(as_json)["message"] == "Task saga.step[2] succeeded"


def test_a_broker_refusing_publishes_is_one_warning_until_it_takes_them_again(parts, caplog):
    """Given a broker that refuses, when three runs start, then one warning says so (each
    run stays queued for the sweeper), and one line says when publishing works again."""
    parts.dispatcher.refuse = True
    with caplog.at_level(logging.DEBUG, logger="saga.engine"):
        for _ in range(3):
            parts.engine.start("slow", {})
        parts.dispatcher.refuse = False
        parts.engine.start("slow", {})
    said = [(r.levelname, r.getMessage().split(" (")[0].split(":")[0]) for r in caplog.records
            if r.name == "saga.engine"]
    assert [level for level, _ in said] == ["WARNING", "DEBUG", "DEBUG", "WARNING"]
    assert said[-1][1] == "publishing works again"
