"""The HTTP API against real PostgreSQL: starts, reads, listings, health and every error shape.

The broker is Kombu's in-memory transport: the API only publishes, so no worker is needed;
where a test needs a step to have run, it runs it in-process with `Engine.run_step`.
"""

from __future__ import annotations

import base64
import os
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import quote

import flask
import marshmallow as ma
import pytest
import requests
import sqlalchemy as sa
from marshmallow import fields, validate
from werkzeug.serving import make_server

from saga import NonRetryable, Saga, Step, migrations
from saga.api import create_app
from saga.registry import Registry
from saga.run import Role
from saga.settings import Settings
from saga.store import metadata
from saga.system import System, build
from tests.auth import authorize, bearer, create_token

PG_URL = os.environ.get("SAGA_TEST_DATABASE_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CLOSED_PORT = 1  # nothing listens on port 1: connections are refused at once
PROBLEM = "application/problem+json"


# -- the sagas under test ----------------------------------------------------------------

class ChargeInput(ma.Schema):
    order_id = fields.String(required=True)
    amount_cents = fields.Integer(strict=True, validate=validate.Range(min=1))


def reserve(ctx):
    return {"reserved": ctx.input["order_id"]}


def release(ctx):
    return {"released": ctx.input["order_id"]}


def charge(ctx):
    if ctx.input.get("amount_cents", 0) > 1_000_000:
        raise NonRetryable("card declined: over the limit")
    return {"charged": ctx.input.get("amount_cents", 0)}


CHARGE = Saga("charge", input=ChargeInput, steps=[
    Step("reserve", reserve, compensate=release),
    Step("charge", charge),
])
LISTED = Saga("listed", steps=[Step("only", reserve)])  # only the listing tests start it


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of its own for this module, dropped at the end."""
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": 3})
    try:
        admin.connect().close()
    except sa.exc.OperationalError as exc:
        admin.dispose()
        message = f"PostgreSQL not reachable at {PG_URL}: {exc.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    name = f"api_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    migrations.upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="module")
def settings(database_url: str) -> Settings:
    # Tests here drive each step by hand, so each message runs one step only.
    return Settings(database_url=database_url, broker_url="memory://", inline_steps=0)


@pytest.fixture(scope="module")
def system(settings: Settings) -> Iterator[System]:
    built = build(settings, Registry([CHARGE, LISTED]))
    yield built
    built.store.close()


@pytest.fixture(scope="module")
def app(settings: Settings, system: System) -> flask.Flask:
    return create_app(settings, system)


@pytest.fixture(scope="module")
def token(system: System) -> str:
    return create_token(system.store.engine, "admin")


@pytest.fixture
def client(app: flask.Flask, token: str):
    return authorize(app.test_client(), token)


@pytest.fixture(scope="module")
def server(app: flask.Flask) -> Iterator[str]:
    """The app behind a real threaded HTTP server; yields its base URL."""
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join()


def count_runs(system: System, **where: str) -> int:
    runs = metadata.tables["runs"]
    query = sa.select(sa.func.count()).select_from(runs)
    for column, value in where.items():
        query = query.where(runs.c[column] == value)
    with system.store.engine.connect() as conn:
        return conn.execute(query).scalar_one()


def order(amount: int = 500) -> dict:
    return {"input": {"order_id": f"o-{uuid.uuid4().hex[:8]}", "amount_cents": amount}}


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == PROBLEM
    body = response.get_json(force=True)
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


# -- starting runs -----------------------------------------------------------------------

def test_start_creates_a_run_and_points_to_it(client, system):
    """Given a valid order, When it is POSTed, Then 201, a Location, and the run's view."""
    response = client.post("/v1/sagas/charge/runs", json=order())
    assert response.status_code == 201
    run = response.get_json()
    assert response.headers["Location"] == f"/v1/runs/{run['id']}"
    assert (run["saga"], run["version"], run["status"]) == ("charge", 1, "running")
    assert [s["name"] for s in run["steps"]] == ["reserve"]
    assert count_runs(system, id=run["id"]) == 1
    assert client.get(response.headers["Location"]).get_json() == run  # the run as stored


def test_same_key_and_body_returns_the_first_run(client, system):
    """Given a run started with a key, When the same request is repeated, Then 200, same run."""
    key, body = str(uuid.uuid4()), order()
    first = client.post("/v1/sagas/charge/runs", json=body, headers={"Idempotency-Key": key})
    again = client.post("/v1/sagas/charge/runs", json=body, headers={"Idempotency-Key": key})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert count_runs(system, idempotency_key=key) == 1


def test_same_key_with_another_body_is_a_422_and_writes_nothing(client, system):
    """Given a run started with a key, When the key comes with another body, Then 422, no write."""
    key = str(uuid.uuid4())
    first = client.post("/v1/sagas/charge/runs", json=order(100), headers={"Idempotency-Key": key})
    before = count_runs(system)
    response = client.post("/v1/sagas/charge/runs", json=order(200),
                           headers={"Idempotency-Key": key})
    problem = assert_problem(response, 422)
    assert "Idempotency-Key" in problem["detail"]
    assert problem["type"].endswith("idempotency-conflict")
    assert count_runs(system) == before
    assert client.get(first.headers["Location"]).get_json()["input"]["amount_cents"] == 100


def test_concurrent_duplicate_posts_create_exactly_one_run(server, system, token):
    """Given 20 clients with one key and body, When they POST at once, Then one run, one id."""
    key, body, barrier = str(uuid.uuid4()), order(), threading.Barrier(20)
    results: list[tuple[int, str]] = []

    def post() -> None:
        barrier.wait()
        response = requests.post(f"{server}/v1/sagas/charge/runs", json=body,
                                 headers={"Idempotency-Key": key, **bearer(token)}, timeout=30)
        results.append((response.status_code, response.json()["id"]))

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 19 + [201]
    assert len({run_id for _, run_id in results}) == 1
    assert count_runs(system, idempotency_key=key) == 1


def test_idempotency_key_over_255_characters_is_a_400(client, system):
    """Given a 256-character key, When POSTed, Then 400 naming the header, and no run."""
    before = count_runs(system)
    response = client.post("/v1/sagas/charge/runs", json=order(),
                           headers={"Idempotency-Key": "k" * 256})
    assert "Idempotency-Key" in assert_problem(response, 400)["errors"]
    assert count_runs(system) == before
    ok = client.post("/v1/sagas/charge/runs", json=order(), headers={"Idempotency-Key": "k" * 255})
    assert ok.status_code == 201


def test_input_failing_the_saga_schema_is_a_422_naming_each_field(client, system):
    """Given input missing order_id and a zero amount, When POSTed, Then 422 names both."""
    before = count_runs(system)
    response = client.post("/v1/sagas/charge/runs", json={"input": {"amount_cents": 0}})
    problem = assert_problem(response, 422)
    assert set(problem["errors"]) == {"input.order_id", "input.amount_cents"}
    assert count_runs(system) == before


def test_a_string_amount_is_refused_by_the_strict_schema(client, system):
    """Given amount_cents as a string, When POSTed, Then 422 naming it, and no run."""
    before = count_runs(system)
    response = client.post("/v1/sagas/charge/runs",
                           json={"input": {"order_id": "o", "amount_cents": "5"}})
    assert "input.amount_cents" in assert_problem(response, 422)["errors"]
    assert count_runs(system) == before


@pytest.mark.parametrize("body, field", [
    ({}, "input"),
    ({"input": [1, 2]}, "input"),
    ({"input": {"order_id": "o"}, "version": "1"}, "version"),
    ({"input": {"order_id": "o"}, "version": 0}, "version"),
    ({"input": {"order_id": "o"}, "surprise": True}, "surprise"),
    ([1], "body"),
    ({"input": {"order_id": "a\u0000b"}}, "input.order_id"),
    ({"input": {"order_id": "o", "note": ["\ud800"]}}, "input.note[0]"),
])
def test_a_malformed_request_body_is_a_422_naming_the_field(client, system, body, field):
    """Given a body the request schema refuses, When POSTed, Then 422 naming the field."""
    before = count_runs(system)
    response = client.post("/v1/sagas/charge/runs", json=body)
    assert field in assert_problem(response, 422)["errors"]
    assert count_runs(system) == before


@pytest.mark.parametrize("raw", [b'{"input": ', b"{'input': {}}", b'{"input": NaN}',
                                 b"[" * 100_000, b'{"input": {"n": ' + b"9" * 5000 + b"}}",
                                 b"\xff\xfe\xfa"])
def test_malformed_json_is_a_400(client, system, raw):
    """Given a body that is not RFC 8259 JSON, When POSTed, Then 400 problem, and no run."""
    before = count_runs(system)
    response = client.post("/v1/sagas/charge/runs", data=raw, content_type="application/json")
    assert "JSON" in assert_problem(response, 400)["detail"]
    assert count_runs(system) == before


def test_a_10_mb_body_is_a_413(client, system):
    """Given a body over max_body_bytes, When POSTed, Then 413 problem, and no run."""
    before = count_runs(system)
    response = client.post("/v1/sagas/charge/runs", data=b" " * 10_000_000,
                           content_type="application/json")
    assert "limit" in assert_problem(response, 413)["detail"]
    assert count_runs(system) == before


def test_unknown_saga_is_a_404(client):
    """Given no saga named "nope", When a run of it is POSTed, Then 404 problem."""
    problem = assert_problem(client.post("/v1/sagas/nope/runs", json=order()), 404)
    assert "nope" in problem["detail"]


def test_explicit_version_starts_it_and_an_unknown_version_is_a_404(client, system):
    """Given charge v1 only, When v1 then v2 is asked for, Then 201 then 404, one run."""
    body = order()
    assert client.post("/v1/sagas/charge/runs", json={**body, "version": 1}).status_code == 201
    before = count_runs(system)
    response = client.post("/v1/sagas/charge/runs", json={**body, "version": 2})
    assert "version 2" in assert_problem(response, 404)["detail"]
    assert count_runs(system) == before


@pytest.mark.parametrize("name", ["\x00", "charge\x00", "x" * 5000, "'; DROP TABLE runs; --",
                                  "../../etc/passwd", "charge%00", "<script>alert(1)</script>",
                                  "\u202echarge", "charge' OR '1'='1"])
def test_hostile_saga_names_get_a_4xx_problem_never_a_5xx(server, system, name, token):
    """Given an injection-like, NUL or over-long name, When used anywhere, Then a 4xx problem."""
    before = count_runs(system)
    quoted = quote(name, safe="")
    for method, path in [("post", f"/v1/sagas/{quoted}/runs"), ("get", f"/v1/runs/{quoted}"),
                         ("get", f"/v1/runs/{quoted}/events"), ("get", f"/v1/runs?saga={quoted}"),
                         ("get", f"/v1/runs?cursor={quoted}")]:
        response = requests.request(method, server + path, json=order(), timeout=10,
                                    headers=bearer(token))
        if response.status_code == 200:  # a listing filtered by a saga that has no runs
            assert response.json()["runs"] == []
            continue
        assert 400 <= response.status_code < 500, (path, response.text)
        assert response.headers["Content-Type"] == PROBLEM
    assert count_runs(system) == before


# -- reading runs ------------------------------------------------------------------------

def test_run_view_shows_steps_compensations_outputs_and_errors(client, system):
    """Given a charge declined after a reservation, When compensated, Then the view shows all."""
    run_id = client.post("/v1/sagas/charge/runs", json=order(2_000_000)).get_json()["id"]
    worker = system.worker
    worker.run_step(run_id, "reserve", Role.FORWARD, "charge", 1, worker="test-worker")
    worker.run_step(run_id, "charge", Role.FORWARD, "charge", 1, worker="test-worker")
    middle = client.get(f"/v1/runs/{run_id}").get_json()
    assert middle["status"] == "compensating"
    assert [(c["name"], c["status"]) for c in middle["compensations"]] == [("reserve", "queued")]
    worker.run_step(run_id, "reserve", Role.COMPENSATE, "charge", 1, worker="test-worker")

    response = client.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200
    run = response.get_json()
    assert run["status"] == "compensated" and run["version"] == 1
    assert run["input"]["amount_cents"] == 2_000_000
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["reserve"]["status"] == "succeeded" and steps["reserve"]["attempts"] == 1
    assert steps["reserve"]["output"] == {"reserved": run["input"]["order_id"]}
    assert steps["charge"]["status"] == "failed" and "declined" in steps["charge"]["error"]
    [undo] = run["compensations"]
    assert (undo["name"], undo["status"], undo["attempts"]) == ("reserve", "succeeded", 1)
    assert undo["output"] == {"released": run["input"]["order_id"]}
    for stamp in ("queued_at", "started_at", "finished_at"):
        assert datetime.fromisoformat(steps["reserve"][stamp]).tzinfo is not None
    assert datetime.fromisoformat(run["created_at"]).tzinfo is not None
    assert datetime.fromisoformat(run["finished_at"]).tzinfo is not None


def test_events_come_oldest_first(client, system):
    """Given a run whose first step ran, When its events are read, Then oldest first."""
    run_id = client.post("/v1/sagas/charge/runs", json=order()).get_json()["id"]
    system.worker.run_step(run_id, "reserve", Role.FORWARD, "charge", 1, worker="w")
    response = client.get(f"/v1/runs/{run_id}/events")
    assert response.status_code == 200
    events = response.get_json()["events"]
    assert events[0]["type"] == "run.started"
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    stamps = [datetime.fromisoformat(e["at"]) for e in events]
    assert stamps == sorted(stamps)
    assert {"step.running", "step.succeeded"} <= {e["type"] for e in events}


@pytest.mark.parametrize("path", ["/v1/runs/{id}", "/v1/runs/{id}/events"])
def test_unknown_run_is_a_404(client, path):
    """Given no run with this id, When it or its events are read, Then 404 problem."""
    problem = assert_problem(client.get(path.format(id=uuid.uuid4())), 404)
    assert problem["type"].endswith("run-not-found")


# -- listing runs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def listed(system: System) -> list[str]:
    """55 runs of the `listed` saga, started in order."""
    return [system.engine.start("listed", {"n": n})[0] for n in range(55)]


def test_listing_pages_newest_first_with_a_cursor(client, listed):
    """Given 55 runs, When listed 20 at a time, Then every run once, newest first."""
    seen, cursor = [], None
    while True:
        url = "/v1/runs?saga=listed&limit=20" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url).get_json()
        seen.extend(page["runs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [r["id"] for r in seen] == list(reversed(listed))
    assert all(set(r) >= {"id", "saga", "status", "created_at"} for r in seen)


def test_listing_defaults_to_50(client, listed):
    """Given 55 runs, When listed without a limit, Then 50 and a cursor."""
    page = client.get("/v1/runs?saga=listed").get_json()
    assert len(page["runs"]) == 50 and page["next_cursor"]


def test_listing_filters_by_status(client, listed):
    """Given only running runs of `listed`, When filtered by status, Then running only."""
    running = client.get("/v1/runs?saga=listed&status=running&limit=200").get_json()["runs"]
    assert len(running) == 55 and {r["status"] for r in running} == {"running"}
    assert client.get("/v1/runs?saga=listed&status=succeeded").get_json()["runs"] == []


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=201", "limit"), ("limit=ten", "limit"),
    ("status=lost", "status"), ("cursor=not-a-cursor", "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|a\x00b").decode(), "cursor"),
])
def test_bad_listing_arguments_are_a_422_naming_them(client, query, field):
    """Given an out-of-range limit, unknown status or foreign cursor, Then 422 naming it."""
    assert field in assert_problem(client.get(f"/v1/runs?{query}"), 422)["errors"]


# -- sagas, health, documentation --------------------------------------------------------

def test_sagas_lists_definitions_with_runs_in_flight(client, system, listed):
    """Given charge and listed loaded, When /v1/sagas is read, Then both with their graphs."""
    sagas = {s["name"]: s for s in client.get("/v1/sagas").get_json()["sagas"]}
    assert set(sagas) == {"charge", "listed"}
    [version] = sagas["listed"]["versions"]
    assert sagas["listed"]["latest"] == 1
    assert version["runs_in_flight"] == 55
    assert [s["name"] for s in sagas["charge"]["versions"][0]["steps"]] == ["reserve", "charge"]


def test_health_is_200_when_database_and_broker_answer(client):
    """Given PostgreSQL and the in-memory broker, When /v1/health is read, Then 200 ok."""
    response = client.get("/v1/health")
    assert response.status_code == 200
    assert response.get_json() == {"database": "ok", "broker": "ok"}


@pytest.mark.parametrize("down, change", [
    ("broker", {"broker_url": f"redis://127.0.0.1:{CLOSED_PORT}/0"}),
    ("database", {"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{CLOSED_PORT}/x"}),
])
def test_health_is_503_naming_what_does_not_answer(settings, down, change):
    """Given a closed port for one dependency, When /v1/health is read, Then 503 names it, fast."""
    broken = settings.with_(**change)
    broken_system = build(broken, Registry([CHARGE]))
    began = time.monotonic()
    try:
        response = create_app(broken, broken_system).test_client().get("/v1/health")
    finally:
        elapsed = time.monotonic() - began
        broken_system.store.close()
    problem = assert_problem(response, 503)
    assert set(problem["errors"]) == {down}
    assert down in problem["detail"]
    assert elapsed < 4.5


def test_openapi_document_lists_paths_and_the_run_schema(client):
    """When /v1/openapi.json is read, Then it lists every endpoint and documents a run."""
    doc = client.get("/v1/openapi.json").get_json()
    assert doc["openapi"] == "3.0.3"
    assert {"/v1/sagas/{name}/runs", "/v1/runs", "/v1/runs/{run_id}", "/v1/runs/{run_id}/events",
            "/v1/sagas", "/v1/health"} <= doc["paths"].keys()
    schemas = doc["components"]["schemas"]
    assert {"id", "status", "version", "input", "error", "steps", "compensations"} <= \
        schemas["Run"]["properties"].keys()
    assert {"status", "attempts", "output", "error", "started_at"} <= \
        schemas["Step"]["properties"].keys()
    start = doc["paths"]["/v1/sagas/{name}/runs"]["post"]
    assert start["responses"]["201"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/Run")
    assert PROBLEM in start["responses"]["422"]["content"]
    assert any(p["name"] == "Idempotency-Key" for p in start["parameters"])


# -- errors everywhere -------------------------------------------------------------------

def test_unknown_route_is_a_404_problem(client):
    """When a path no endpoint serves is read, Then 404 problem."""
    assert_problem(client.get("/v1/no-such-thing"), 404)


def test_wrong_method_is_a_405_problem_with_allow(client):
    """When /v1/runs is DELETEd, Then 405 problem and an Allow header."""
    response = client.delete("/v1/runs")
    assert_problem(response, 405)
    assert "GET" in response.headers["Allow"]


def test_an_unexpected_error_is_a_500_problem(client, system, monkeypatch):
    """Given the store failing unexpectedly, When a run is read, Then a 500 problem."""
    def broken(run_id: str) -> dict:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(system.store, "get_run", broken)
    problem = assert_problem(client.get(f"/v1/runs/{uuid.uuid4()}"), 500)
    assert "disk on fire" not in problem["detail"]  # internals stay in the log


def test_modules_named_in_settings_can_mount_their_own_endpoints(settings, system, monkeypatch):
    """Given a saga module with init_app, When the app is built, Then its endpoints are served."""
    plugin = types.ModuleType("api_test_plugin")

    def init_app(app: flask.Flask, given: System) -> None:
        assert given is system
        app.add_url_rule("/plugin/ping", "plugin_ping", lambda: {"pong": True})

    plugin.init_app = init_app
    monkeypatch.setitem(sys.modules, "api_test_plugin", plugin)
    app = create_app(settings.with_(sagas=("api_test_plugin",)), system)
    assert app.test_client().get("/plugin/ping").get_json() == {"pong": True}
