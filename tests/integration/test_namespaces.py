"""Two deployments (two databases) on one broker: each its own queue, neither slows the other.

Each deployment is a real `saga api`, `saga worker` and `saga sweeper` on its own fresh
database; both share one RabbitMQ or Redis, and (by default) nothing else is configured.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from saga import migrations
from saga.store.deployment import deployment_id
from saga.tasks import queue_for, redis_unacked_keys
from tests.conftest import BROKERS, need, template_copies
from tests.stack import Stack, wait_for

RUNS = 8  # per deployment
# A lost or misdelivered message is published again only after this: far past the deadline,
# so a single message the other deployment's worker swallowed fails the test.
SLOW_REDISPATCH_S = "60"
DEADLINE_S = 40  # for all runs of both; one deployment alone takes a few seconds
MESSAGE_PER_STEP = {"SAGA_INLINE_STEPS": "0"}  # every step a message: many chances to collide


@pytest.fixture
def new_database(pg_template: str) -> Iterator[Callable[[], str]]:
    """Makes fresh migrated databases (copies of the template), dropped after."""
    with template_copies(pg_template, "saga_ns") as make:
        yield make


def read_id(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        return deployment_id(engine)
    finally:
        engine.dispose()


# -- the deployment id ------------------------------------------------------------------

def test_each_database_is_its_own_deployment_even_a_copy_of_another(new_database):
    first, second = new_database(), new_database()
    stored = "SELECT id FROM deployment"
    with sa.create_engine(first).connect() as a, sa.create_engine(second).connect() as b:
        # Both copy one template, row and all: the stored id alone would not tell them apart.
        assert a.exec_driver_sql(stored).scalar_one() == b.exec_driver_sql(stored).scalar_one()
    ids = read_id(first), read_id(second)
    assert ids[0] != ids[1]
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)


def test_every_spelling_of_one_database_url_reads_the_same_id(new_database):
    url = sa.make_url(new_database())
    spellings = [url.set(host="127.0.0.1"), url.set(host="localhost"),
                 url.set(host="localhost", query={"application_name": "another"})]
    ids = {read_id(u.render_as_string(hide_password=False)) for u in spellings}
    assert len(ids) == 1


def test_a_sqlite_deployment_reads_its_stored_id(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/saga.db"
    migrations.upgrade(url)
    assert read_id(url) == read_id(url)
    assert read_id(url) != read_id(_migrated_sqlite(tmp_path / "other.db"))


def _migrated_sqlite(path: Path) -> str:
    url = f"sqlite:///{path}"
    migrations.upgrade(url)
    return url


# -- two deployments on one broker ------------------------------------------------------

def deployment(database_url: str, broker_url: str, folder: Path, env: dict[str, str],
               sagas: str = "examples.fulfillment") -> Stack:
    """A Stack with no queue set (the per-database default) unless `env` sets SAGA_QUEUE."""
    folder.mkdir()
    stack = Stack(database_url, broker_url, folder, sagas=sagas)
    del stack.env["SAGA_DEFAULT_QUEUE"]
    stack.env.update(env)
    stack.queue = stack.env.get("SAGA_QUEUE") or queue_for(read_id(database_url))  # to delete
    return stack


def start(stack: Stack) -> None:
    stack.api()
    stack.worker()
    stack.sweeper()


def place_orders(stacks: list[Stack]) -> dict[int, list[str]]:
    """RUNS orders in each, interleaved, so both deployments publish at once."""
    placed: dict[int, list[str]] = {i: [] for i in range(len(stacks))}
    for _ in range(RUNS):
        for i, stack in enumerate(stacks):
            placed[i].append(stack.post_order())
    return placed


def wait_all_succeeded(stacks: list[Stack], placed: dict[int, list[str]], timeout: float) -> None:
    def finished() -> bool:
        return all(stack.query("SELECT count(*) FROM runs WHERE status = 'succeeded' "
                               "AND id = ANY(:ids)", ids=placed[i])[0][0] == RUNS
                   for i, stack in enumerate(stacks))

    wait_for(finished, timeout, f"{RUNS} runs to succeed in each deployment", interval=0.1)


def errors(stack: Stack) -> list[str]:
    return [line for p in stack.processes for line in p.output().splitlines()
            if " ERROR " in line or "Traceback" in line]


def foreign_warnings(stack: Stack) -> list[str]:
    return [line for p in stack.processes for line in p.output().splitlines()
            if "handed back a message of deployment" in line]


def test_two_deployments_with_default_settings_finish_promptly_on_their_own_queues(
        new_database, broker_url: str, tmp_path: Path):
    """Given two databases and one broker, nothing else set (and a lost message republished
    only after a minute), when both take orders at once, then every run of each succeeds
    within the deadline, each worker consumes its own database's queue, and no process
    logs an error or a foreign message."""
    env = {"SAGA_REDISPATCH_S": SLOW_REDISPATCH_S, **MESSAGE_PER_STEP}
    with deployment(new_database(), broker_url, tmp_path / "a", env) as a, \
            deployment(new_database(), broker_url, tmp_path / "b", env) as b:
        for stack in (a, b):
            start(stack)
        assert a.queue != b.queue
        for stack in (a, b):
            assert f"queue {stack.queue}" in stack.processes[1].output()  # the worker's

        placed = place_orders([a, b])
        wait_all_succeeded([a, b], placed, DEADLINE_S)  # shorter than one republish

        for stack in (a, b):
            assert errors(stack) == []
            assert foreign_warnings(stack) == []


def test_one_queue_forced_on_both_loses_nothing_and_says_which_setting_to_fix(
        new_database, broker_url: str, tmp_path: Path):
    """Given two databases made to share one queue by SAGA_QUEUE, when both take orders,
    then every run still succeeds (a worker hands the other's messages back to the queue
    unrun; one handed back too often is published again by its own sweeper), and the
    workers warn, naming both deployments and SAGA_QUEUE, never with an error."""
    shared = f"saga-shared-{uuid.uuid4().hex[:8]}"
    env = {"SAGA_QUEUE": shared, **MESSAGE_PER_STEP}
    with deployment(new_database(), broker_url, tmp_path / "a", env) as a, \
            deployment(new_database(), broker_url, tmp_path / "b", env) as b:
        for stack in (a, b):
            start(stack)
        placed = place_orders([a, b])
        wait_all_succeeded([a, b], placed, DEADLINE_S)

        warnings = foreign_warnings(a) + foreign_warnings(b)
        assert warnings, "two workers on one queue never met the other's message"
        ids = {read_id(a.database_url), read_id(b.database_url)}
        for line in warnings:
            assert " WARNING " in line
            assert ids <= set(re.findall(r"[0-9a-f]{12}", line))
            assert "SAGA_QUEUE" in line and repr(shared) in line
        for stack in (a, b):
            assert errors(stack) == []


def test_on_redis_a_worker_keeps_its_unacked_messages_under_its_own_queue_keys(
        database_url: str, tmp_path: Path):
    """Given a worker on Redis running a step that holds, then its message waits
    unacknowledged in `<queue>.unacked`, not in Kombu's `unacked` hash that every app on
    that Redis database shares (where the shortest visibility timeout would decide when
    this deployment's messages come back)."""
    broker_url = BROKERS["redis"]
    need("redis", broker_url)
    with deployment(database_url, broker_url, tmp_path / "a", {},
                    sagas="tests.sagas") as stack:
        start(stack)
        run_id = stack.post_run("holding", {})
        held = Path(stack.folder) / f"holding-{run_id}-second-forward"
        wait_for(held.exists, 30, "the step to hold")
        keys = redis_unacked_keys(stack.queue)
        client = redis.Redis.from_url(broker_url)
        try:
            own = client.hvals(keys["unacked_key"])
            shared = client.hvals("unacked")
        finally:
            client.close()
        assert any(run_id.encode() in raw for raw in own)
        assert not any(run_id.encode() in raw for raw in shared)
        (Path(stack.folder) / f"release-{run_id}-second-forward").touch()
        assert stack.wait_terminal(run_id, 30)["status"] == "succeeded"
