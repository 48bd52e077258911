"""Flower shows every attempt of every run, as the saga log records it, and no other deployment's.

A real `saga flower` (Flower's own HTTP API, behind its login) watches a real `saga api`,
`saga worker` and `saga sweeper`; every attempt in each run's event log, the ones a worker
ran inline without a message too, must be a task there named for its saga and step, with
the state its outcome means: SUCCESS, RETRY (another attempt followed) or FAILURE.
"""

from __future__ import annotations

import ast
import re
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from click.testing import CliRunner
from kombu import Connection

from saga.cli import main
from saga.engine import Outcome
from saga.events import RunStep, StepFailed, StepSucceeded
from saga.registry import Registry
from saga.run import Role, Run, RunStatus, StepState, StepStatus
from saga.settings import Settings
from saga.system import build
from saga.tasks import task_name, use_exchanges
from saga.tasks.attempts import state_of
from saga.timeline import attempts
from tests.conftest import template_copies
from tests.stack import Stack, free_port, wait_for

LOGIN = ("watcher", "s3cret-pass")
# What an attempt's outcome in the saga log (saga.timeline) is as a Celery task state.
STATES = {"succeeded": "SUCCESS", "failed": "FAILURE", "failed, will retry": "RETRY",
          "failed, requeued": "RETRY", "failed, retried": "RETRY"}


class Flower:
    """A `saga flower` process of a stack, read through its HTTP API."""

    def __init__(self, stack: Stack) -> None:
        self.port = free_port()
        self.process = stack.start_process(
            "flower", ["-m", "saga.cli", "flower", "--port", str(self.port), "--persistent=False"],
            {"SAGA_FLOWER_BASIC_AUTH": ":".join(LOGIN)})
        self.base = f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: Any) -> Any:
        if not self.process.alive():
            raise AssertionError(f"flower exited:\n{self.process.output()}")
        response = requests.get(f"{self.base}{path}", params=params, auth=LOGIN, timeout=5)
        response.raise_for_status()
        return response.json()

    def sees_worker(self) -> bool:
        """Whether Flower has an event from a worker yet (its heartbeats come every 2 s)."""
        try:
            return bool(self.get("/workers", json=1))
        except requests.RequestException:
            return False

    def tasks(self) -> list[dict[str, Any]]:
        return list(self.get("/api/tasks").values())


def by_attempt(tasks: list[dict[str, Any]], run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Flower's tasks of one run, by (task name, attempt), read from their kwargs and outcome."""
    found = {}
    for task in tasks:
        kwargs = ast.literal_eval(task.get("kwargs") or "{}")
        told = f"{task.get('result') or ''} {task.get('exception') or ''}"
        number = re.search(r"attempt (\d+)", told)
        if kwargs.get("run_id") == run_id and number:
            found[(task["name"], int(number.group(1)))] = task
    return found


def missing(stack: Stack, flower: Flower, run_ids: list[str]) -> list[str]:
    """Every attempt of the runs' event logs that Flower does not show as it should."""
    tasks = flower.tasks()
    wrong = []
    for run_id in run_ids:
        run = stack.run(run_id)
        log = stack.http.get(f"{stack.base}/v1/runs/{run_id}/events", timeout=10).json()["events"]
        shown = by_attempt(tasks, run_id)
        for attempt in attempts(log):
            name = task_name(run["saga"], attempt.step, attempt.role)
            task = shown.get((name, attempt.attempt))
            want = STATES[attempt.outcome]
            if task is None or task["state"] != want:
                got = task and task["state"]
                wrong.append(f"{name} attempt {attempt.attempt}: want {want}, Flower has {got}")
    return wrong


@pytest.fixture
def watched(stack: Stack) -> Iterator[tuple[Stack, Flower]]:
    """A whole stack and its Flower, which has heard from the worker (so misses nothing)."""
    flower = Flower(stack)
    stack.api()
    worker = stack.worker()
    stack.sweeper()
    try:
        wait_for(flower.sees_worker, 30, "Flower to hear from the worker")
    except AssertionError:
        raise AssertionError(f"Flower heard from no worker:\n{flower.process.output()[-3000:]}"
                             f"\nworker:\n{worker.output()[-3000:]}") from None
    yield stack, flower
    flower.process.signal(signal.SIGKILL)  # it keeps nothing: no need to wait for its goodbye


# A whole stack takes ~15 s: one broker here (RabbitMQ passes it too; the exchanges are
# checked on both below).
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_every_attempt_is_a_task_in_flower_with_its_real_outcome(watched):
    # Given a stack watched by `saga flower`
    stack, flower = watched
    # When one order ships and another's card fails twice before charging, then its
    # shipment fails for good, so the charge is refunded and the reservation released
    shipped = stack.post_order()
    undone = stack.post_order(card="flaky", address="nowhere")
    assert stack.wait_terminal(shipped, 30)["status"] == "succeeded"
    assert stack.wait_terminal(undone, 30)["status"] == "compensated"
    # Then every attempt in both logs is a task in Flower, named for its step (and
    # `.compensate`), in the state its outcome means, the ones run inline too
    gaps: list[str] = []

    def complete() -> bool:
        gaps[:] = missing(stack, flower, [shipped, undone])
        return not gaps

    try:
        wait_for(complete, 10, "Flower to show every attempt of the saga log")
    except AssertionError:
        raise AssertionError(f"Flower does not show, or not so: {gaps}") from None
    tasks = by_attempt(flower.tasks(), undone)
    assert tasks[("order_fulfillment.charge_card", 1)]["state"] == "RETRY"
    assert tasks[("order_fulfillment.create_shipment", 1)]["state"] == "FAILURE"
    refund = tasks[("order_fulfillment.charge_card.compensate", 1)]
    assert refund["state"] == "SUCCESS"
    assert ast.literal_eval(refund["kwargs"])["step"] == "charge_card"
    # And the login is required
    assert requests.get(f"{flower.base}/api/tasks", timeout=5).status_code == 401


# -- one deployment's events, not another's ------------------------------------------------

def test_a_deployment_sees_only_its_own_task_events(pg_template, broker_url):
    # Given two deployments (two databases) on one broker, and a receiver on the first's
    # events the way Flower reads them (celery.events.state)
    with template_copies(pg_template, "saga_fl") as make:
        ours, theirs = (build(Settings(database_url=make(), broker_url=broker_url,
                                       queue=f"saga-test-{uuid.uuid4().hex[:8]}"), Registry())
                        for _ in range(2))
        use_exchanges(ours.celery, ours.dispatcher.namespace)
        seen = ours.celery.events.State()
        conn = ours.celery.connection_for_read()
        receiver = ours.celery.events.Receiver(conn, handlers={"*": seen.event})
        thread = threading.Thread(target=receiver.capture, daemon=True,
                                  kwargs={"limit": None, "timeout": None, "wakeup": False})
        thread.start()
        try:
            # When each publishes a step message (with its "task-sent" event)
            mine, other = str(uuid.uuid4()), str(uuid.uuid4())
            wait_for(lambda: _published(ours, mine, seen), 10, "our own task-sent event")
            _published(theirs, other, seen)
            _published(ours, "after", seen)
            wait_for(lambda: _published(None, "after", seen), 10, "the last of our events")
            # Then only its own reached the first deployment's Flower
            runs = {ast.literal_eval(t.kwargs)["run_id"] for t in seen.tasks.values()}
            assert mine in runs and other not in runs
        finally:
            receiver.should_stop = True  # seen within its next second of waiting
            thread.join(5)
            conn.release()
            for system in (ours, theirs):
                system.store.close()
                _drop_queue(broker_url, system.settings.queue)  # its messages were never to run


def _drop_queue(broker_url: str, queue: str) -> None:
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url)
        client.delete(queue, f"_kombu.binding.{queue}")
        client.close()
        return
    with Connection(broker_url, connect_timeout=3) as conn:
        conn.default_channel.queue_delete(queue)


def _published(system: Any, run_id: str, seen: Any) -> bool:
    """Publish a step of `run_id` from `system` (unless None); whether `seen` has one yet."""
    if system is not None:
        system.dispatcher.send(run_id, "order_fulfillment", 1, [RunStep("charge_card")], {})
    return any(run_id in (t.kwargs or "") for t in seen.tasks.values())


# -- an attempt's outcome as a task state ----------------------------------------------------

def _noop(ctx: Any) -> None:
    return None


def _outcome(status: StepStatus, attempt: int) -> Outcome:
    step = StepState("pay", Role.FORWARD, status, attempt=attempt, fence=attempt)
    run = Run("r", "table", 1, RunStatus.RUNNING, {}, steps={("pay", Role.FORWARD): step})
    return Outcome(True, run=run)


@pytest.mark.parametrize(("event", "after", "state"), [
    (StepSucceeded("pay", Role.FORWARD, 1), _outcome(StepStatus.SUCCEEDED, 1), "SUCCESS"),
    (StepFailed("pay", Role.FORWARD, 1, "503"), _outcome(StepStatus.RETRY_WAIT, 1), "RETRY"),
    (StepFailed("pay", Role.FORWARD, 1, "503"), _outcome(StepStatus.QUEUED, 1), "RETRY"),
    # failed, then re-claimed inline in the same commit: attempt 2 is running
    (StepFailed("pay", Role.FORWARD, 1, "503"), _outcome(StepStatus.RUNNING, 2), "RETRY"),
    (StepFailed("pay", Role.FORWARD, 3, "503"), _outcome(StepStatus.FAILED, 3), "FAILURE"),
    (StepFailed("pay", Role.FORWARD, 1, "slow", timed_out=True), _outcome(StepStatus.PARKED, 1),
     "FAILURE"),
    # the run was being cancelled: the policy would retry, the committed run does not
    (StepFailed("pay", Role.FORWARD, 1, "503"), _outcome(StepStatus.FAILED, 1), "FAILURE"),
])
def test_an_attempts_task_state_is_what_the_committed_run_says(event, after, state):
    claimed = event.fence  # in this table each attempt's fence is its number
    assert state_of(event, after.retried("pay", Role.FORWARD, claimed)) == state


# -- the command ---------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "env", "says"), [
    ([], {}, "Flower needs a login: set SAGA_FLOWER_BASIC_AUTH"),
    (["--host", "0.0.0.0", "--no-auth"], {}, "--no-auth serves Flower without a login"),
    ([], {"SAGA_FLOWER_BASIC_AUTH": "admin"}, "must be user:password"),
])
def test_flower_refuses_to_start_without_a_login(args, env, says):
    result = CliRunner().invoke(main, ["flower", *args],
                                env={"SAGA_FLOWER_BASIC_AUTH": None, **env})
    assert result.exit_code == 1
    assert says in result.output
