"""Infrastructure faults with real processes: crashed orchestrator parts, PostgreSQL and the
broker restarted or unreachable, backoff outlasting the broker's redelivery timeouts.

Every test runs on RabbitMQ and on Redis. Server outages go through `tests.faults.proxy`
(the real servers are shared and are never touched); each test waits on conditions with
deadlines, then asserts the invariants of RELIABILITY.md with `invariants.check`. Recovery
times (fault lifted → the runs progress again) are printed: run with `-s` to see them.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import requests
from kombu import Connection

from saga.registry import Registry
from saga.tasks import redis_unacked_keys
from tests.faults import invariants
from tests.faults.infra_sagas import SLOW_BACKOFF_S
from tests.faults.proxy import Proxy
from tests.stack import TERMINAL, Stack, wait_for

SAGAS = "tests.faults.infra_sagas"
REGISTRY = Registry.from_modules(SAGAS.split(","))
LEASE_S = 3.0  # Stack's SAGA_LEASE_S
PROGRESS = ("step.running", "step.succeeded", "compensation.running", "compensation.succeeded")
# A Redis database of its own for the visibility-timeout test: Kombu keeps unacknowledged
# messages in keys shared by every client of a database, and a 2 s visibility timeout in
# database 0 would redeliver other people's messages.
VISIBILITY_TEST_REDIS_DB = 11
VISIBILITY_TIMEOUT_S = 2


@pytest.fixture
def stack(database_url: str, broker_url: str, tmp_path) -> Iterator[Stack]:
    running = Stack(database_url, broker_url, tmp_path, sagas=SAGAS)
    try:
        with running:
            try:
                yield running
            finally:
                kill_all(running)
    finally:
        forget_bindings(running)


def kill_all(stack: Stack) -> None:
    """SIGKILL the test's own processes (by process group) before Stack stops them.

    Every run has finished by then and the database is dropped next, so a warm shutdown
    (a second or two per worker) buys nothing.
    """
    for process in stack.processes:
        if process.alive():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.popen.wait(10)


def forget_bindings(stack: Stack) -> None:
    """Delete the Redis binding keys Kombu leaves behind for this test's queue (only those)."""
    if not stack.broker_url.startswith("redis"):
        return
    client = redis.Redis.from_url(stack.broker_url)
    try:
        client.delete(f"_kombu.binding.{stack.queue}", f"_kombu.binding_permanent.{stack.queue}")
    finally:
        client.close()


NO_ENV: Mapping[str, str] = MappingProxyType({})


def start(stack: Stack, *, api: Mapping[str, str] | None = NO_ENV,
          worker: Mapping[str, str] | None = NO_ENV, sweeper: Mapping[str, str] | None = NO_ENV,
          concurrency: int = 2) -> dict[str, Any]:
    """Start the API and a worker side by side (each waited for), and a sweeper.

    Each argument is that process's extra environment, or None not to start it.
    """
    started: dict[str, Any] = {}
    if sweeper is not None:
        started["sweeper"] = stack.sweeper(env=dict(sweeper))
    with ThreadPoolExecutor(2) as pool:
        pending = {}
        if api is not None:
            pending["api"] = pool.submit(stack.api, env=dict(api))
        if worker is not None:
            pending["worker"] = pool.submit(stack.worker, concurrency, env=dict(worker))
        started.update((name, future.result()) for name, future in pending.items())
    return started


@pytest.fixture
def pg(stack: Stack) -> Iterator[Proxy]:
    """A proxy in front of this test's PostgreSQL: point processes at it to fail it."""
    with Proxy.for_url(stack.database_url, "postgres") as proxy:
        yield proxy


@pytest.fixture
def mq(stack: Stack) -> Iterator[Proxy]:
    """A proxy in front of this test's broker."""
    with Proxy.for_url(stack.broker_url, "broker") as proxy:
        yield proxy


# -- helpers: the saga log read straight from PostgreSQL (the API may be away) ------------

def broker_name(stack: Stack) -> str:
    return "redis" if stack.broker_url.startswith("redis") else "rabbitmq"


def report(stack: Stack, scenario: str, **seconds: float) -> None:
    times = ", ".join(f"{name.replace('_', ' ')} {value:.2f}s" for name, value in seconds.items())
    print(f"\nRECOVERY [{broker_name(stack)}] {scenario}: {times}")


def new_order(**overrides: Any) -> dict[str, Any]:
    return {"order_id": f"o-{uuid.uuid4().hex[:8]}", "items": [{"sku": "sku-1", "qty": 2}],
            "amount_cents": 1999, "card": "ok", "address": "1 Main St",
            "email": "buyer@example.com", **overrides}


def statuses(stack: Stack, run_ids: list[str]) -> dict[str, str]:
    return dict(stack.query("SELECT id, status FROM runs WHERE id = ANY(:ids)", ids=run_ids))


def wait_terminal(stack: Stack, run_ids: list[str], timeout: float = 30) -> dict[str, str]:
    def done() -> dict[str, str] | None:
        found = statuses(stack, run_ids)
        return found if len(found) == len(run_ids) and all(
            s in TERMINAL for s in found.values()) else None

    try:
        return wait_for(done, timeout, f"runs {run_ids} to finish", interval=0.1)
    except AssertionError as exc:
        rows = stack.query("SELECT run_id, name, role, status, attempt, fence, lease_expires_at, "
                           "next_attempt_at, redispatch_at, dispatches FROM steps "
                           "WHERE run_id = ANY(:ids) ORDER BY run_id, queued_at", ids=run_ids)
        now = stack.query("SELECT clock_timestamp()")[0][0]
        raise AssertionError(f"{exc}\nat {now}, steps:\n" + "\n".join(map(str, rows))) from None


def step(stack: Stack, run_id: str, name: str, role: str = "forward") -> Any:
    rows = stack.query("SELECT status, attempt, fence, lease_expires_at, next_attempt_at, "
                       "dispatches FROM steps WHERE run_id = :r AND name = :n AND role = :k",
                       r=run_id, n=name, k=role)
    return rows[0] if rows else None


def last_event_id(stack: Stack) -> int:
    return stack.query("SELECT coalesce(max(id), 0) FROM events")[0][0]


def progressed(stack: Stack, run_ids: list[str], since: int, types=PROGRESS,
               step_name: str | None = None) -> bool:
    rows = stack.query("SELECT count(*) FROM events WHERE run_id = ANY(:ids) AND id > :since "
                       "AND type = ANY(:types) AND (CAST(:step AS text) IS NULL OR step = :step)",
                       ids=run_ids, since=since, types=list(types), step=step_name)
    return rows[0][0] > 0


def time_until(check, timeout: float, what: str) -> float:
    """Seconds until `check` holds (polled every 20 ms): the recovery time we report."""
    started = time.monotonic()
    wait_for(check, timeout, what, interval=0.02)
    return time.monotonic() - started


def event_count(stack: Stack, run_id: str, type: str, step_name: str | None = None) -> int:
    return stack.query("SELECT count(*) FROM events WHERE run_id = :r AND type = :t "
                       "AND (CAST(:s AS text) IS NULL OR step = :s)",
                       r=run_id, t=type, s=step_name)[0][0]


def run_of_order(stack: Stack, order_id: str) -> str | None:
    rows = stack.query("SELECT id FROM runs WHERE input->>'order_id' = :o", o=order_id)
    return rows[0][0] if rows else None


def actions(stack: Stack, order_id: str) -> list[str]:
    return [action for action, _ in stack.effects(order_id)]


def at_gate(stack: Stack, run_ids: list[str]) -> bool:
    """Every run's gated charge is claimed and waiting (running, first attempt)."""
    return all((s := step(stack, r, "charge_card")) is not None and s.status == "running"
               and s.attempt == 1 for r in run_ids)


def open_gate(stack: Stack, name: str) -> None:
    (stack.folder / f"gate-{name}").touch()


def start_gated(stack: Stack, n: int) -> tuple[list[str], list[str]]:
    """Start `n` gated orders and wait until each holds its charge at the gate."""
    orders = [new_order() for _ in range(n)]
    run_ids = [stack.post_run("gated_order", o) for o in orders]
    wait_for(lambda: at_gate(stack, run_ids), 30, "the gated charges to be claimed")
    return run_ids, [o["order_id"] for o in orders]


def proxied(proxy: Proxy, variable: str, real_url: str) -> dict[str, str]:
    return {variable: proxy.url(real_url)}


def with_redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def queued_messages(stack: Stack) -> int:
    """Messages waiting in this test's queue on the real broker."""
    if stack.broker_url.startswith("redis"):
        client = redis.Redis.from_url(stack.broker_url)
        try:
            return sum(client.llen(key) for key in _redis_queue_keys(stack.queue))
        finally:
            client.close()
    with Connection(stack.broker_url, connect_timeout=3) as conn:
        return conn.default_channel.queue_declare(stack.queue, passive=True).message_count


def unacknowledged(stack: Stack) -> int:
    """This test's messages delivered but not acknowledged (Redis: the queue's own unacked hash;
    RabbitMQ does not tell without its management plugin, so 0 there)."""
    if not stack.broker_url.startswith("redis"):
        return 0
    client = redis.Redis.from_url(stack.broker_url)
    try:
        return len(client.hvals(redis_unacked_keys(stack.queue)["unacked_key"]))
    finally:
        client.close()


def lose_queued_messages(stack: Stack) -> None:
    """What a broker restart without persistence does to this test's queue, and only to it."""
    if stack.broker_url.startswith("redis"):
        client = redis.Redis.from_url(stack.broker_url)
        try:
            client.delete(*_redis_queue_keys(stack.queue))
        finally:
            client.close()
        return
    with Connection(stack.broker_url, connect_timeout=3) as conn:
        conn.default_channel.queue_purge(stack.queue)


def _redis_queue_keys(queue: str) -> list[str]:
    # Kombu's Redis transport keeps priority 0 in the queue's own key, others beside it.
    return [queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9))]


def deliveries(stack: Stack) -> int:
    """Step and compensation messages the workers received (each is logged once, named
    for its saga and step)."""
    return sum(len(re.findall(r"Task [\w.-]+\[[^\]]+\] received", p.output()))
               for p in stack.processes if p.name == "worker")


def publishes(stack: Stack, run_ids: list[str]) -> int:
    """Messages the saga log asked for: one per queued event, plus the sweeper's republishes."""
    queued = stack.query("SELECT count(*) FROM events WHERE run_id = ANY(:ids) "
                         "AND type IN ('step.queued', 'compensation.queued')", ids=run_ids)[0][0]
    again = stack.query("SELECT coalesce(sum(dispatches - 1), 0) FROM steps "
                        "WHERE run_id = ANY(:ids)", ids=run_ids)[0][0]
    return queued + again


# -- 6. the orchestrator's processes killed at the worst moments --------------------------

def test_api_killed_between_run_insert_and_first_publish_is_dispatched_by_the_sweeper(
        stack: Stack) -> None:
    """Given an API that dies right after committing a new run, before publishing its first step,
    When the client's POST fails, a new API starts and the sweeper runs,
    Then the run found in the database is published by the sweeper and succeeds, each effect
    applied once, and the client's retried POST gets that same run back (200, not a new run).
    """
    first = start(stack, api={"SAGA_FAULTS": "after_start_commit:fault_order:once"},
                  sweeper=None)["api"]
    order = new_order()
    post = {"url": f"{stack.base}/v1/sagas/fault_order/runs", "json": {"input": order},
            "headers": {"Idempotency-Key": order["order_id"]}, "timeout": 10}
    with pytest.raises(requests.ConnectionError):
        stack.http.post(**post)
    assert (stack.folder / "fault-after_start_commit-fault_order").exists()
    run_id = run_of_order(stack, order["order_id"])
    assert run_id is not None, "the run was committed before the crash, so it must exist"
    assert stack.query("SELECT name, status, attempt FROM steps WHERE run_id = :r",
                       r=run_id) == [("validate_order", "queued", 0)]

    # gunicorn replaces a dead worker process; stop the whole server and start a new one,
    # as after a crash of the machine.
    first.stop()
    stack.api()
    stack.sweeper()
    lifted = last_event_id(stack)
    recovery = time_until(lambda: progressed(stack, [run_id], lifted), 30,
                          "the sweeper to publish the first step")
    again = stack.http.post(**post)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == run_id

    assert wait_terminal(stack, [run_id]) == {run_id: "succeeded"}
    assert actions(stack, order["order_id"]) == ["reserve", "charge", "ship"]
    invariants.check(stack, [run_id], REGISTRY)
    report(stack, "API killed after the run insert", sweeper_start_to_first_claim=recovery)


def test_worker_killed_between_step_commit_and_next_publish_is_finished_by_the_sweeper(
        stack: Stack) -> None:
    """Given a worker child that dies right after committing charge_card, before publishing
    the two parallel steps that follow (or running one of them itself: the engine may take
    a step it queued in the same commit and run it inline),
    When the sweeper runs,
    Then it publishes what was never published, retries what the dead child had taken once
    its lease expires, the run succeeds, and every step committed exactly once.
    """
    worker = start(stack, worker={"SAGA_FAULTS": "after_commit:charge_card:once"})["worker"]
    order = new_order()
    run_id = stack.post_run("fault_order", order)
    wait_for(lambda: (stack.folder / "fault-after_commit-charge_card").exists(), 30,
             "the worker child to crash after committing charge_card")
    crashed = last_event_id(stack)
    recovery = time_until(
        lambda: all(progressed(stack, [run_id], crashed, ("step.running",), name)
                    for name in ("create_shipment", "email_warehouse")),
        30, "the sweeper to publish the parallel steps")

    assert wait_terminal(stack, [run_id]) == {run_id: "succeeded"}
    assert worker.alive(), "the pool replaces a killed child; the worker itself stays up"
    attempts = {s["name"]: s["attempts"] for s in stack.run(run_id)["steps"]}
    assert [attempts.pop(name) for name in ("validate_order", "reserve_inventory",
                                            "charge_card")] == [1, 1, 1], "committed before"
    assert attempts.keys() == {"create_shipment", "email_warehouse"}
    assert all(n in (1, 2) for n in attempts.values()), attempts
    assert actions(stack, order["order_id"]) == ["reserve", "charge", "ship"]
    invariants.check(stack, [run_id], REGISTRY)
    report(stack, "worker killed after a commit", crash_to_next_steps_claimed=recovery)


def test_worker_killed_mid_compensation_resumes_it_in_order_with_one_refund(
        stack: Stack) -> None:
    """Given an order whose shipment fails, and a worker child that dies as it starts the refund,
    When the refund's lease expires,
    Then the sweeper retries the refund, it is applied once, and only then is the inventory
    released: the run ends compensated with the undo order kept.
    """
    start(stack, worker={"SAGA_FAULTS": "before_effect:charge_card.compensate:once"})
    order = new_order(address="nowhere")
    run_id = stack.post_run("fault_order", order)
    wait_for(lambda: (stack.folder / "fault-before_effect-charge_card.compensate").exists(), 30,
             "the worker child to crash before the refund")
    crashed = last_event_id(stack)
    recovery = time_until(
        lambda: progressed(stack, [run_id], crashed, ("compensation.running",), "charge_card"),
        30, "the refund to be claimed again")

    assert wait_terminal(stack, [run_id]) == {run_id: "compensated"}
    assert step(stack, run_id, "charge_card", "compensate").attempt == 2
    assert actions(stack, order["order_id"]) == ["reserve", "charge", "refund", "release"]
    invariants.check(stack, [run_id], REGISTRY)
    report(stack, "worker killed mid-compensation", crash_to_refund_reclaimed=recovery,
           lease=LEASE_S)


# -- 8. PostgreSQL restarted, and unreachable for longer than a lease ---------------------

def restart_mid_saga(stack: Stack, proxy: Proxy, variable: str, url: str, what: str) -> None:
    """Every process through `proxy`; two runs held at the charge gate, two more placed;
    the server "restarts" (every connection dies) as the gate opens; all must succeed once."""
    via = proxied(proxy, variable, url)
    start(stack, api=via, worker=via, sweeper=via, concurrency=3)
    gated, gated_orders = start_gated(stack, 2)
    orders = [new_order() for _ in range(2)]
    placed = [stack.post_run("fault_order", o) for o in orders]
    run_ids = gated + placed
    assert proxy.connections > 0

    before = last_event_id(stack)
    proxy.reset()
    open_gate(stack, "charge")
    recovery = time_until(lambda: all(progressed(stack, [r], before, ("step.succeeded",),
                                                 "charge_card") for r in gated),
                          30, f"the gated charges to commit after the {what} restart")
    assert wait_terminal(stack, run_ids) == dict.fromkeys(run_ids, "succeeded")
    for order_id in gated_orders + [o["order_id"] for o in orders]:
        assert actions(stack, order_id) == ["reserve", "charge", "ship"]
    invariants.check(stack, run_ids, REGISTRY)
    report(stack, f"{what} restarted", restart_to_gated_charges_committed=recovery)
    # An attempt beyond the first is a step whose commit (PostgreSQL) or acknowledgement
    # (the broker: Celery terminates what it can no longer ack) the restart cut off.
    print(f"  gated charge attempts: {[step(stack, r, 'charge_card').attempt for r in gated]}")



def test_postgres_restart_mid_saga_loses_no_run_and_repeats_no_effect(stack: Stack,
                                                                      pg: Proxy) -> None:
    """Given every process reaching PostgreSQL through a proxy, two runs holding their charge
    at a gate and two more orders just placed,
    When PostgreSQL "restarts" (every connection dies at once) and the gate opens,
    Then all four runs succeed, each effect applied once and no step committed twice.

    The API goes through the proxy too: a restart is brief and every client sees it.
    """
    restart_mid_saga(stack, pg, "SAGA_DATABASE_URL", stack.database_url, "PostgreSQL")


def test_postgres_unreachable_longer_than_a_lease_then_every_run_finishes_once(
        stack: Stack, pg: Proxy) -> None:
    """Given the worker and the sweeper reaching PostgreSQL through a proxy, and two runs
    holding their charge at a gate,
    When PostgreSQL becomes unreachable, the gate opens (the charges land at the payment
    service but cannot be recorded), an order is placed meanwhile, and the outage lasts
    until two seconds past the leases,
    Then once it is back the expired charges are retried, replayed by the service under the
    same idempotency key (one charge each), the order placed meanwhile is republished, and
    every run succeeds with no step committed twice.

    The API talks to PostgreSQL directly: it hosts the demo services, which stand for
    downstream services with databases of their own. Keeping them up is what lets an effect
    land while its saga log is unreachable, the case that needs idempotency keys.
    """
    via = proxied(pg, "SAGA_DATABASE_URL", stack.database_url)
    start(stack, worker=via, sweeper=via, concurrency=3)
    gated, gated_orders = start_gated(stack, 2)

    pg.cut()
    open_gate(stack, "charge")
    wait_for(lambda: all("charge" in actions(stack, o) for o in gated_orders), 30,
             "the charges to land while the saga log is unreachable")
    late_order = new_order()
    late = stack.post_run("fault_order", late_order)
    # Hold the outage until two seconds past every lease, on the database's own clock.
    wait_for(lambda: stack.query(
        "SELECT bool_and(lease_expires_at + interval '2 seconds' < clock_timestamp()) "
        "FROM steps WHERE run_id = ANY(:ids) AND status = 'running'", ids=gated)[0][0],
        LEASE_S + 10, "the outage to outlast the leases by 2 s")
    assert statuses(stack, gated) == dict.fromkeys(gated, "running")
    # The late order's message reached a worker that could not claim it: it is gone.
    assert step(stack, late, "validate_order")[:2] == ("queued", 0)

    before = last_event_id(stack)
    pg.resume()
    recovery = time_until(lambda: progressed(stack, gated + [late], before), 30,
                          "the runs to progress after the outage")
    run_ids = gated + [late]
    done = wait_terminal(stack, run_ids)

    assert done == dict.fromkeys(run_ids, "succeeded")
    for run_id in gated:
        assert step(stack, run_id, "charge_card").attempt == 2, \
            "the first attempt's commit was lost; its lease expired; the second replayed"
    assert step(stack, late, "validate_order").dispatches >= 2, "republished by the sweeper"
    for order_id in gated_orders + [late_order["order_id"]]:
        assert actions(stack, order_id) == ["reserve", "charge", "ship"]
    invariants.check(stack, run_ids, REGISTRY)
    report(stack, "PostgreSQL unreachable for lease + 2 s", resume_to_progress=recovery)


def test_postgres_stopped_under_load_gives_503s_then_every_run_finishes_once(
        stack: Stack, pg: Proxy) -> None:
    """Given every process (API, worker, sweeper) reaching PostgreSQL through a proxy and a
    client placing orders one after another, retrying a 503 as its Retry-After says,
    When PostgreSQL goes away and comes back while orders keep coming,
    Then the API answers 503 with Retry-After (never a 500) meanwhile, every order gets one
    run that succeeds with each effect applied once, and the worker and the sweeper each say
    once that the log went and once that it came back, with no traceback.
    """
    via = proxied(pg, "SAGA_DATABASE_URL", stack.database_url)
    started = start(stack, api=via, worker=via, sweeper=via, concurrency=2)
    orders = [new_order() for _ in range(12)]
    accepted: dict[str, str] = {}
    refusals: list[requests.Response] = []

    def place_orders() -> None:
        for order in orders:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                response = stack.http.post(
                    f"{stack.base}/v1/sagas/fault_order/runs", json={"input": order},
                    headers={"Idempotency-Key": order["order_id"]}, timeout=10)
                if response.status_code in (200, 201):
                    accepted[order["order_id"]] = response.json()["id"]
                    break
                refusals.append(response)
                # The client's own pacing, as Retry-After asks (capped: the test is short).
                time.sleep(min(float(response.headers.get("Retry-After", 1)), 0.2))

    client = threading.Thread(target=place_orders, name="orders")
    client.start()
    wait_for(lambda: len(accepted) >= 3, 30, "the first orders to be accepted")
    pg.cut()
    wait_for(lambda: refusals and "does not answer" in started["sweeper"].output(), 30,
             "a 503 to a client and the sweeper to notice the outage")
    pg.resume()
    client.join(90)
    assert not client.is_alive() and len(accepted) == len(orders), "every order is accepted"

    assert {r.status_code for r in refusals} == {503}, [r.text for r in refusals]
    assert all(r.headers.get("Retry-After") for r in refusals)
    run_ids = list(accepted.values())
    assert wait_terminal(stack, run_ids, 60) == dict.fromkeys(run_ids, "succeeded")
    for order in orders:
        assert actions(stack, order["order_id"]) == ["reserve", "charge", "ship"]
    invariants.check(stack, run_ids, REGISTRY)
    sweeper_log = started["sweeper"].output()
    assert sweeper_log.count("does not answer") == 1, sweeper_log
    assert sweeper_log.count("answers again") == 1, sweeper_log
    for name in ("sweeper", "worker", "api"):
        assert "Traceback" not in started[name].output(), started[name].output()


# -- 9. the broker restarted, losing its messages or not, and down during a POST ----------

def test_broker_restart_mid_saga_lets_every_run_finish(stack: Stack, mq: Proxy) -> None:
    """Given every process reaching the broker through a proxy, two runs holding their charge
    at a gate and two more orders just placed,
    When the broker "restarts" (every connection dies) and the gate opens,
    Then the workers reconnect; the steps Celery terminated because it could no longer
    acknowledge them (worker_cancel_long_running_tasks_on_connection_loss) are retried once
    their leases expire, whatever message was lost is republished, and all runs succeed
    with each effect applied once.
    """
    restart_mid_saga(stack, mq, "SAGA_BROKER_URL", stack.broker_url, "broker")


def test_broker_restart_losing_queued_messages_is_repaired_by_the_sweeper(stack: Stack,
                                                                          mq: Proxy) -> None:
    """Given three orders whose first step messages wait in the broker (no worker yet),
    When the broker restarts and loses them (Redis without AOF: the queue's keys are gone;
    RabbitMQ: the queue purged, as on a node that lost its disk),
    Then the sweeper republishes the lost steps and all three runs succeed, effects once.
    """
    via = proxied(mq, "SAGA_BROKER_URL", stack.broker_url)
    stack.api(env=via)
    orders = [new_order() for _ in range(3)]
    run_ids = [stack.post_run("fault_order", o) for o in orders]
    wait_for(lambda: queued_messages(stack) == 3, 10, "the three messages to be queued")

    mq.reset()
    lose_queued_messages(stack)
    restarted = time.monotonic()
    assert queued_messages(stack) == 0
    before = last_event_id(stack)
    start(stack, api=None, worker=via, sweeper=via)
    recovery = time_until(lambda: all(progressed(stack, [r], before, ("step.running",))
                                      for r in run_ids), 30, "the lost steps to be claimed")
    assert wait_terminal(stack, run_ids) == dict.fromkeys(run_ids, "succeeded")
    since_restart = time.monotonic() - restarted
    for o in orders:
        assert actions(stack, o["order_id"]) == ["reserve", "charge", "ship"]
    invariants.check(stack, run_ids, REGISTRY)
    report(stack, "broker restarted without its messages", worker_ready_to_claims=recovery,
           restart_to_all_done=since_restart)


def test_broker_down_during_post_accepts_the_run_and_dispatches_it_once_back(
        stack: Stack, mq: Proxy) -> None:
    """Given the broker down (every process reaches it through a proxy that refuses),
    When an order is POSTed,
    Then the API accepts it (201: the run is committed, the failed publish is left to the
    sweeper) within the client's patience, and once the broker is back the run is dispatched
    and succeeds: it is never silently stuck.
    """
    via = proxied(mq, "SAGA_BROKER_URL", stack.broker_url)
    start(stack, api=via, worker=via, sweeper=via)
    mq.cut()
    order = new_order()
    started = time.monotonic()
    response = stack.http.post(f"{stack.base}/v1/sagas/fault_order/runs", json={"input": order},
                               timeout=30)
    post_s = time.monotonic() - started
    assert response.status_code == 201, (
        f"expected the run accepted and dispatched later; got {response.status_code} "
        f"{response.headers.get('Content-Type')}: {response.text}")
    assert post_s < 10, f"the POST took {post_s:.1f}s with the broker down"
    run_id = response.json()["id"]
    assert step(stack, run_id, "validate_order").status == "queued"

    before = last_event_id(stack)
    mq.resume()
    recovery = time_until(lambda: progressed(stack, [run_id], before, ("step.running",)),
                          40, "the run to be dispatched once the broker is back")
    assert wait_terminal(stack, [run_id]) == {run_id: "succeeded"}
    assert actions(stack, order["order_id"]) == ["reserve", "charge", "ship"]
    invariants.check(stack, [run_id], REGISTRY)
    report(stack, "broker down during a POST", post_answered_in=post_s,
           resume_to_first_claim=recovery)


# -- 10. backoff longer than the broker's redelivery timeouts -----------------------------

def test_backoff_longer_than_the_redelivery_timeout_waits_in_postgres_not_the_broker(
        stack: Stack) -> None:
    """Given a charge that fails once with a 4 s backoff, and on Redis a 2 s visibility
    timeout (RabbitMQ's consumer_timeout is a server setting and cannot be lowered per test,
    so there the test shows the same wait living outside the broker),
    When the run goes,
    Then the retry waits as a retry_wait row in PostgreSQL while the broker holds nothing for
    it, the sweeper fires it once after 4 s, the charge takes exactly two attempts and is
    applied once, and no message is delivered more often than the saga log published it.
    """
    env: dict[str, str] = {}
    if stack.broker_url.startswith("redis"):
        stack.broker_url = with_redis_db(stack.broker_url, VISIBILITY_TEST_REDIS_DB)
        env = {"SAGA_BROKER_URL": stack.broker_url,
               "SAGA_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S)}
    sweeper = start(stack, api=env, worker=env, sweeper=env)["sweeper"]
    order = new_order()
    run_id = stack.post_run("slow_retry_order", order)

    waiting = wait_for(lambda: (s := step(stack, run_id, "charge_card")) is not None
                       and s.status == "retry_wait" and s, 30, "the charge to wait for its retry")
    failed_at = stack.query("SELECT at FROM events WHERE run_id = :r AND step = 'charge_card' "
                            "AND type = 'step.retry_wait'", r=run_id)[0][0]
    assert (waiting.next_attempt_at - failed_at).total_seconds() == pytest.approx(
        SLOW_BACKOFF_S, abs=0.05)
    # Past the 2 s visibility timeout, still waiting, and the broker holds nothing for it:
    # no ETA message to be redelivered, neither queued nor unacknowledged.
    wait_for(lambda: stack.query("SELECT clock_timestamp() > :t", t=failed_at + timedelta(
        seconds=VISIBILITY_TIMEOUT_S + 0.3))[0][0], 10, "the visibility timeout to pass")
    assert queued_messages(stack) == 0, "the wait must not sit in the broker"
    assert unacknowledged(stack) == 0, "no message of the run may wait unacknowledged"
    assert step(stack, run_id, "charge_card").status == "retry_wait", "checked while waiting"

    assert wait_terminal(stack, [run_id]) == {run_id: "succeeded"}
    second = stack.query("SELECT at FROM events WHERE run_id = :r AND step = 'charge_card' "
                         "AND type = 'step.running' AND attempt = 2", r=run_id)[0][0]
    assert (second - failed_at).total_seconds() >= SLOW_BACKOFF_S
    assert step(stack, run_id, "charge_card").attempt == 2
    assert event_count(stack, run_id, "step.running", "charge_card") == 2
    assert event_count(stack, run_id, "step.retry_wait", "charge_card") == 1
    executions = stack.folder / f"executions-{run_id}-charge_card-forward"
    assert len(executions.read_text().splitlines()) == 2
    fired = sum(int(n) for n in re.findall(r"retries_fired=(\d+)", sweeper.output()))
    assert fired == 1, f"the sweeper fired {fired} retries"
    delivered, published = deliveries(stack), publishes(stack, [run_id])
    assert 0 < delivered <= published, f"{delivered} deliveries of {published} messages"
    assert actions(stack, order["order_id"]) == ["reserve", "charge", "ship"]
    invariants.check(stack, [run_id], REGISTRY)
    report(stack, "4 s backoff past a 2 s visibility timeout",
           retry_started_after=(second - failed_at).total_seconds())
