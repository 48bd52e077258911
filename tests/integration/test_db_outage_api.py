"""The API while PostgreSQL is down or restarting (503 + Retry-After, never 500), and the
health check's answers: database or broker down, schema not migrated, and never a host.

The shared PostgreSQL is never stopped: the app reaches it through a TCP proxy of this
test's own (tests/faults/proxy.py), which is cut to play the outage.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import flask
import pytest
import sqlalchemy as sa

from saga import Saga, Step, WaitForSignal, migrations
from saga.api import create_app
from saga.api.problems import RETRY_AFTER_S, UNAVAILABLE
from saga.registry import Registry
from saga.settings import Settings
from saga.system import System, build
from tests.conftest import PG_ADMIN_URL, need
from tests.faults.proxy import Proxy
from tests.stack import wait_for

PROBLEM = "application/problem+json"
CLOSED_PORT = 1  # nothing listens on port 1: connections are refused at once
RECOVERY_S = 30.0


def record(ctx) -> dict:
    return {"step": ctx.step}


WAITING = Saga("waiting", steps=[Step("first", record), WaitForSignal("go"), Step("last", record)])


def settings_for(database_url: str, broker_url: str = "memory://") -> Settings:
    return Settings(database_url=database_url, broker_url=broker_url, inline_steps=0,
                    auth="off")


@pytest.fixture
def proxy(database_url: str) -> Iterator[Proxy]:
    with Proxy.for_url(database_url, "pg") as running:
        yield running


@pytest.fixture
def system(proxy: Proxy, database_url: str) -> Iterator[System]:
    built = build(settings_for(proxy.url(database_url)), Registry([WAITING]))
    yield built
    built.store.close()


@pytest.fixture
def app(system: System) -> flask.Flask:
    return create_app(system.settings, system)


def requests_of(run_id: str) -> list[tuple[str, str, dict | None]]:
    """One request of each kind: reads, a listing, a start, a signal, a cancel."""
    return [("get", f"/v1/runs/{run_id}", None), ("get", f"/v1/runs/{run_id}/events", None),
            ("get", "/v1/runs?saga=waiting", None), ("get", "/v1/sagas", None),
            ("post", "/v1/sagas/waiting/runs", {"input": {}}),
            ("post", f"/v1/runs/{run_id}/signals/go", {"payload": {"n": 1}}),
            ("post", f"/v1/runs/{run_id}/cancel", None)]


def send(client, method: str, path: str, body: dict | None):
    return getattr(client, method)(path, json=body) if body is not None \
        else getattr(client, method)(path)


def assert_unavailable(response, database_url: str) -> None:
    text = response.get_data(as_text=True)
    assert response.status_code == 503, text
    assert response.headers["Content-Type"] == PROBLEM
    assert response.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert response.get_json(force=True)["detail"] == UNAVAILABLE
    assert_no_address(text, database_url)


def assert_no_address(text: str, *urls: str) -> None:
    """Nothing of the URLs' host, port, user or database name, nor a driver, shows."""
    for url in urls:
        parsed = sa.make_url(url) if "://" in url and not url.startswith(("redis", "amqp")) \
            else None
        if parsed is not None:
            for part in (parsed.host, str(parsed.port or ""), parsed.username, parsed.database):
                assert not part or part not in text, (part, text)
    assert not re.search(r"127\.0\.0\.1|localhost|:\d{2,5}\b|psycopg|sqlalchemy|redis|amqp",
                         text, re.IGNORECASE), text



# -- the outage ------------------------------------------------------------------------

def test_every_operation_is_a_503_with_retry_after_while_the_database_is_down(
        app, system, proxy, database_url):
    """Given a run, When PostgreSQL goes away, Then every operation answers 503 with
    Retry-After and no address; When it is back, Then the same requests succeed."""
    client = app.test_client()
    run_id = client.post("/v1/sagas/waiting/runs", json={"input": {}}).get_json()["id"]

    proxy.cut()
    for method, path, body in requests_of(run_id):
        assert_unavailable(send(client, method, path, body), proxy.url(database_url))

    proxy.resume()
    wait_for(lambda: client.get(f"/v1/runs/{run_id}").status_code == 200, RECOVERY_S,
             "the API to serve again after the database came back")
    for method, path, body in requests_of(run_id):
        response = send(client, method, path, body)
        assert 200 <= response.status_code < 300, (path, response.get_data(as_text=True))
    assert client.get(f"/v1/runs/{run_id}").get_json()["cancel_requested"] is True


def test_a_database_restart_is_a_503_or_served_never_a_500(app, proxy, database_url):
    """Given pooled connections, When the database restarts (they all die), Then each
    request is served or a 503, and soon served again."""
    client = app.test_client()
    run_id = client.post("/v1/sagas/waiting/runs", json={"input": {}}).get_json()["id"]
    for _ in range(5):
        proxy.reset()
        for method, path, body in requests_of(run_id)[:5]:
            response = send(client, method, path, body)
            if response.status_code == 503:
                assert_unavailable(response, proxy.url(database_url))
            else:
                assert 200 <= response.status_code < 300, response.get_data(as_text=True)
    wait_for(lambda: client.get(f"/v1/runs/{run_id}").status_code == 200, RECOVERY_S,
             "the API to serve again after the restart")


def test_health_is_503_without_an_address_while_the_database_is_down(app, proxy, database_url):
    """Given the database cut off, When /v1/health is read, Then 503 naming the database
    only in words: no host, port, user or database name."""
    client = app.test_client()
    assert client.get("/v1/health").status_code == 200
    proxy.cut()
    response = client.get("/v1/health")
    assert response.status_code == 503
    problem = response.get_json(force=True)
    assert problem["errors"] == {"database": ["did not answer"]}
    assert_no_address(response.get_data(as_text=True), proxy.url(database_url), database_url)
    proxy.resume()
    wait_for(lambda: client.get("/v1/health").status_code == 200, RECOVERY_S,
             "health to recover after the database came back")


# -- health: broker down, schema not migrated ---------------------------------------------

@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A database with no tables at all: never migrated."""
    need("PostgreSQL", PG_ADMIN_URL)
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"saga_empty_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def health_of(settings: Settings):
    system = build(settings, Registry([WAITING]))
    try:
        return create_app(settings, system).test_client().get("/v1/health")
    finally:
        system.store.close()


def test_health_is_503_saying_run_saga_migrate_on_a_database_never_migrated(
        empty_database_url):
    """Given an empty database, When /v1/health is read, Then 503 saying `saga migrate`."""
    response = health_of(settings_for(empty_database_url))
    assert response.status_code == 503, response.get_data(as_text=True)
    [text] = response.get_json(force=True)["errors"]["database"]
    assert "saga migrate" in text and "not migrated" in text
    assert migrations.head() in text
    assert_no_address(response.get_data(as_text=True), empty_database_url)


def test_health_is_503_until_a_database_behind_is_migrated(empty_database_url):
    """Given a database at the first revision, When health is read, Then 503 naming both
    revisions; When it is migrated, Then 200."""
    engine = sa.create_engine(empty_database_url)
    migrations.upgrade(engine, "0001")
    response = health_of(settings_for(empty_database_url))
    assert response.status_code == 503, response.get_data(as_text=True)
    [text] = response.get_json(force=True)["errors"]["database"]
    assert "revision 0001" in text and migrations.head() in text and "saga migrate" in text
    migrations.upgrade(engine)
    engine.dispose()
    assert health_of(settings_for(empty_database_url)).status_code == 200


@pytest.mark.parametrize("broker", [f"redis://127.0.0.1:{CLOSED_PORT}/0",
                                    f"amqp://guest:guest@127.0.0.1:{CLOSED_PORT}//"])
def test_health_is_503_without_an_address_while_the_broker_is_down(database_url, broker):
    """Given a broker URL at a closed port, When health is read, Then 503 naming the broker
    in words, with no host, port or user, within the probe's time."""
    began = time.monotonic()
    response = health_of(settings_for(database_url, broker))
    assert time.monotonic() - began < 4.5
    assert response.status_code == 503, response.get_data(as_text=True)
    problem = response.get_json(force=True)
    assert set(problem["errors"]) == {"broker"}
    assert problem["errors"]["broker"][0].startswith("did not answer")
    text = response.get_data(as_text=True)
    assert "guest" not in text and str(CLOSED_PORT) + "/" not in text
    assert_no_address(text, database_url)


def test_pool_exhaustion_and_invalidated_connections_count_as_unavailable():
    """The classification itself: what a retry may cure is a 503, a refused statement not."""
    from saga.store import unreachable as unavailable

    assert unavailable(sa.exc.TimeoutError("QueuePool limit reached"))
    assert unavailable(sa.exc.OperationalError("SELECT 1", {}, Exception("refused")))
    assert unavailable(sa.exc.InterfaceError("SELECT 1", {}, Exception("closed")))
    assert unavailable(sa.exc.DBAPIError("SELECT 1", {}, Exception("x"),
                                         connection_invalidated=True))
    assert not unavailable(sa.exc.DataError("SELECT 1", {}, Exception("out of range")))
    assert not unavailable(sa.exc.IntegrityError("INSERT", {}, Exception("duplicate")))


