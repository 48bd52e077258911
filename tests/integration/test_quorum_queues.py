"""SAGA_QUEUE_TYPE=quorum on the local RabbitMQ: the step queue is a quorum queue, real
processes run sagas on it, a SIGKILLed worker's message comes back from it, and a queue of
the other type is refused in one clear line.

A single RabbitMQ node holds a quorum queue of one member; what these tests show (the
declaration every process agrees on, redelivery, global QoS off) is what a cluster relies
on. Each test deletes its own queue and exchange: the broker is shared.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue
from kombu.exceptions import ChannelError

from saga.registry import Registry
from saga.settings import Settings
from saga.tasks import make_celery
from saga.tasks.namespace import Namespace, QueueMismatch, use_exchanges
from tests.conftest import BROKERS, need
from tests.faults import invariants
from tests.stack import ROOT, Process, Stack, wait_for

RABBITMQ = BROKERS["rabbitmq"]
SAGAS = "examples.fulfillment,tests.faults.worker_sagas"
QUORUM = {"SAGA_QUEUE_TYPE": "quorum"}
HOLD = {"SAGA_TEST_HOLD": "1"}  # a `hold` step's first attempt waits (worker_sagas), 30 s at most


@pytest.fixture
def rabbitmq() -> str:
    need("rabbitmq", RABBITMQ)
    return RABBITMQ


def declared_type(queue: str) -> str:
    """The broker's type of `queue`, read from RabbitMQ's refusal of a classic declaration
    (no management plugin here; rabbitmqctl takes seconds to start)."""
    with Connection(RABBITMQ, connect_timeout=3) as conn:
        try:
            conn.channel().queue_declare(queue, durable=True, auto_delete=False,
                                         arguments={"x-queue-type": "classic"})
        except ChannelError as exc:
            found = re.search(r"'x-queue-type' .* current is '(\w+)'", str(exc))
            assert found, exc
            return found.group(1)
    return "classic"


def delete(queue: str) -> None:
    """The step queue and its direct exchange of the same name (Stack deletes the queue)."""
    with Connection(RABBITMQ, connect_timeout=3) as conn:
        conn.default_channel.queue_delete(queue)
        conn.default_channel.exchange_delete(queue)


@pytest.fixture
def stack(database_url: str, rabbitmq: str, tmp_path: Path) -> Iterator[Stack]:
    running = Stack(database_url, rabbitmq, tmp_path, sagas=SAGAS)
    running.env.update(QUORUM)
    try:
        with running:
            try:
                yield running
            finally:
                for process in running.processes:  # the runs are over: no warm shutdown
                    if process.alive():
                        os.killpg(process.pid, signal.SIGKILL)
    finally:
        delete(running.queue)


def received_ids(log: str) -> set[str]:
    """Celery's "Task <name>[<id>] received" lines: the messages a worker was delivered."""
    return set(re.findall(r"Task \S+\[([0-9a-f-]{36})\] received", log))


def start_workers(stack: Stack, count: int) -> list[Process]:
    """`count` workers started at once (Stack.worker starts one at a time), each ready."""
    workers = [stack.start_process("worker", ["-m", "saga.cli", "--log-level", "INFO", "worker",
                                              "-c", "2"], HOLD) for _ in range(count)]

    def ready() -> bool:
        for worker in workers:
            if not worker.alive():
                raise AssertionError(f"worker exited:\n{worker.output()}")
        return all(" ready." in worker.output() for worker in workers)

    wait_for(ready, 60, "the workers to be ready")
    return workers


def test_a_quorum_queue_runs_sagas_and_gives_a_killed_workers_message_back(
        stack: Stack) -> None:
    """Given SAGA_QUEUE_TYPE=quorum for every process and two workers,
    When one is SIGKILLed (parent and children) while it holds a run's message mid-step,
    Then the step queue is a quorum queue, the workers run other orders to success, the
    killed worker's message comes back from the queue to the other worker, and the held run
    succeeds with its held step on a second attempt and its effect applied once."""
    stack.sweeper()
    with ThreadPoolExecutor(1) as pool:
        api = pool.submit(stack.api)
        workers = start_workers(stack, 2)
        api.result()
    for worker in workers:
        assert "Global QoS is disabled" in worker.output()  # quorum queues refuse global QoS
        assert "delayed delivery" not in worker.output().lower()  # no celery_delayed_* queues
    assert declared_type(stack.queue) == "quorum"

    held = stack.post_run("held_order", {"order_id": f"o-{uuid.uuid4().hex[:8]}"})
    started = stack.folder / f"started-{held}-hold-1"
    wait_for(started.exists, 20, "the held step to start")
    [doomed] = [w for w in workers if int(started.read_text()) in w.children()]
    [heir] = [w for w in workers if w is not doomed]
    orders = [stack.post_order() for _ in range(2)]
    for run_id in orders:
        assert stack.wait_terminal(run_id, 20)["status"] == "succeeded"
    # The held step runs inline from its run's first message, unacknowledged until it ends.
    in_flight = received_ids(doomed.output())

    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.popen.wait(10)
    assert stack.wait_terminal(held, 20)["status"] == "succeeded"

    redelivered = in_flight & received_ids(heir.output())
    assert len(redelivered) == 1, "the held message was delivered again, to the other worker"
    hold = stack.query("SELECT attempt, status FROM steps WHERE run_id = :r AND name = 'hold'",
                       r=held)
    assert [tuple(row) for row in hold] == [(2, "succeeded")]
    executions = (stack.folder / "executions.log").read_text().splitlines()
    assert [line.split()[0] for line in executions if line.startswith(f"{held}:hold")] == \
        [f"{held}:hold:forward"], "the killed attempt never reached its effect; the retry did once"
    invariants.check(stack, [*orders, held], Registry.from_modules(SAGAS.split(",")))


@pytest.fixture
def classic_queue(rabbitmq: str) -> Iterator[str]:
    """A classic queue, as a deployment made it before SAGA_QUEUE_TYPE=quorum."""
    name = f"saga-test-classic-{uuid.uuid4().hex[:8]}"
    with Connection(rabbitmq, connect_timeout=3) as conn:
        Queue(name, Exchange(name, type="direct"), name)(conn.default_channel).declare()
    try:
        yield name
    finally:
        delete(name)


def test_a_worker_refuses_a_classic_queue_when_told_quorum_in_one_line(
        database_url: str, classic_queue: str) -> None:
    """Given the deployment's queue already classic, When a worker starts with
    SAGA_QUEUE_TYPE=quorum, Then it exits at once naming the queue, the setting and the way
    out, without a traceback, and the queue is left as it was."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_BROKER_URL": RABBITMQ,
           "SAGA_DATABASE_URL": database_url, "SAGA_SAGAS": "tests.sagas",
           "SAGA_RESULT_BACKEND": BROKERS["redis"], "SAGA_QUEUE": classic_queue, **QUORUM}
    done = subprocess.run([sys.executable, "-m", "saga.cli", "worker"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert f"queue '{classic_queue}' is not a quorum queue" in line
    assert "SAGA_QUEUE_TYPE=classic" in line and "SAGA_QUEUE" in line
    assert f"rabbitmqctl delete_queue {classic_queue}" in line
    assert declared_type(classic_queue) == "classic"


@pytest.mark.parametrize(("existing", "wanted", "told"), [
    ("classic", "quorum", "SAGA_QUEUE_TYPE=quorum asks for one"),
    ("quorum", "classic", "SAGA_QUEUE_TYPE=classic asks for one"),
    ("transient", "classic", "declared otherwise than this deployment declares it"),
])
def test_a_publisher_is_told_the_queue_differs_not_a_channel_error(
        rabbitmq: str, existing: str, wanted: str, told: str) -> None:
    """Given the queue declared otherwise (another type; or not durable, by something else),
    When a process publishes to it, Then it raises QueueMismatch saying what differs and
    what to do (the engine logs it, the sweeper publishes again), each time until fixed;
    the queue is left as it was."""
    name = f"saga-test-mismatch-{uuid.uuid4().hex[:8]}"
    arguments = {"x-queue-type": "quorum"} if existing == "quorum" else None
    with Connection(rabbitmq, connect_timeout=3) as conn:
        Queue(name, Exchange(name, type="direct"), name, durable=existing != "transient",
              queue_arguments=arguments)(conn.default_channel).declare()
    try:
        settings = Settings(broker_url=rabbitmq, queue=name, queue_type=wanted)
        app = make_celery(settings)
        namespace = Namespace(settings, lambda: "0123456789ab")
        for _ in range(2):
            with pytest.raises(QueueMismatch, match=told) as raised:
                use_exchanges(app, namespace)
            assert f"rabbitmqctl delete_queue {name}" in str(raised.value)
    finally:
        delete(name)


@pytest.mark.parametrize("broker", ["redis://127.0.0.1:6379/0", "memory://"])
def test_quorum_is_refused_off_rabbitmq(broker: str) -> None:
    """Redis and the in-process broker have no queue types: asking for quorum there is a
    mistake to be told, not a setting to ignore."""
    with pytest.raises(ValueError, match="SAGA_QUEUE_TYPE=quorum is a RabbitMQ queue type"):
        Settings(broker_url=broker, queue_type="quorum")
    with pytest.raises(ValueError, match="must be classic or quorum"):
        Settings(broker_url=RABBITMQ, queue_type="stream")
    assert Settings(broker_url=broker).queue_type == "classic"
