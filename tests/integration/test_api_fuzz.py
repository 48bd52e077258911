"""Schemathesis fuzzes every operation of the API's own OpenAPI document on real PostgreSQL.

Each answer must be documented (status and, where it has one, schema), never a 5xx, and
never show internals (a traceback, the driver's name, the database's URL or address).
The broker is Kombu's in-memory transport: nothing runs steps, which fuzzing needs not.
"""

from __future__ import annotations

import base64
import io
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import flask
import marshmallow as ma
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import strategies as st
from marshmallow import fields, validate
from schemathesis.engine import Status, events

from examples.services import create_tables, make_demo_services
from saga import Saga, Step, WaitForSignal
from saga.api import create_app
from saga.api.parsing import MAX_DEPTH
from saga.registry import Registry
from saga.schedules.cron import Schedule
from saga.settings import Settings
from saga.system import System, build
from tests.auth import bearer, create_token


class OrderInput(ma.Schema):
    order_id = fields.String(required=True, validate=validate.Length(min=1, max=100))
    amount_cents = fields.Integer(strict=True, validate=validate.Range(min=1, max=10**9))


class LabelPayload(ma.Schema):
    carrier = fields.String(required=True, validate=validate.OneOf(["ups", "dhl"]))
    tracking = fields.String(validate=validate.Length(max=50))


def record(ctx) -> dict:
    return {"step": ctx.step}


SIGNED = Saga("signed", input=OrderInput, steps=[
    Step("reserve", record, compensate=record),
    WaitForSignal("label", timeout=timedelta(days=2), schema=LabelPayload),
    Step("ship", record),
])
PLAIN = Saga("plain", steps=[  # no schemas at all: what the API lets through reaches the log
    Step("only", record),
    WaitForSignal("poke", timeout=timedelta(days=2)),
])
TICK = Saga("tick", steps=[Step("only", record)], schedule=Schedule("0 3 * * *"))  # to pause
SEEDED_RUNS = 3
# Operations the fuzzing must see succeed at least once, or it only knocked on the door
# (a 401 for every request, say).
REACHED = {"GET /v1/health", "GET /v1/runs", "GET /v1/sagas", "GET /v1/schedules",
           "POST /v1/sagas/{name}/runs", "GET /v1/runs/{run_id}", "GET /v1/runs/{run_id}/events",
           "POST /v1/runs/{run_id}/signals/{name}", "POST /v1/runs/{run_id}/cancel",
           "POST /v1/sagas/{name}/backfills", "GET /v1/backfills/{backfill_id}",
           "POST /v1/schedules/{saga}/pause", "POST /v1/schedules/{saga}/resume",
           "GET /v1/tokens", "POST /v1/tokens", "DELETE /v1/tokens/{name}"}
MAX_EXAMPLES = 50  # per operation and generation mode: about 30 s in all


@pytest.fixture
def api_headers(database_url: str) -> dict[str, str]:
    """Headers every fuzzed request carries: an admin token, so the fuzzing reaches the
    views and not only the 401 of a missing token."""
    return bearer(create_token(database_url, "admin"))


@pytest.fixture
def fuzz_settings(database_url: str, api_headers: dict[str, str]) -> Settings:
    # Without a token to send, authentication is off, so the requests still reach the views.
    return Settings(database_url=database_url, broker_url="memory://", inline_steps=0,
                    auth="on" if "Authorization" in api_headers else "off")


@pytest.fixture
def fuzz_system(fuzz_settings: Settings) -> Iterator[System]:
    built = build(fuzz_settings, Registry([SIGNED, PLAIN, TICK]))
    yield built
    built.store.close()


@pytest.fixture
def fuzz_app(fuzz_settings: Settings, fuzz_system: System) -> flask.Flask:
    return create_app(fuzz_settings, fuzz_system)


def api_schema(app: flask.Flask, system: System, headers: dict[str, str]):
    """The app's own document, loaded over WSGI; path parameters at times name real things."""
    # The token as the document's bearer scheme, so schemathesis also checks that each
    # operation refuses a request without it (its `ignored_auth` check).
    token = headers.get("Authorization", "").removeprefix("Bearer ")
    config = schemathesis.Config.from_dict({
        "seed": 20251203,  # the same requests every run: a failure here is reproducible
        **({"auth": {"openapi": {"bearerAuth": {"bearer": token}}}} if token else {}),
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none"},
        # Error feedback reads `errors` keys such as "input.order_id" as top-level fields,
        # and then nearly every start is refused for an unknown field.
        "phases": {"fuzzing": {"error-feedback": {"enabled": False}}},
        # Saga inputs and signal payloads are checked by each saga's own schema, which the
        # document cannot show: a request valid by the document may well be a 422.
        "checks": {"positive_data_acceptance": {"enabled": False},
                   "shows_no_internals": {"enabled": True}},
    })
    loaded = schemathesis.openapi.from_wsgi("/v1/openapi.json", app, config=config)
    signed = [system.engine.start("signed", {"order_id": f"o-{n}", "amount_cents": 100})[0]
              for n in range(SEEDED_RUNS)]
    # Runs only signals name (never cancelled, so a signal to them can succeed).
    plain = [system.engine.start("plain", {"n": n})[0] for n in range(SEEDED_RUNS)]
    # Tokens only DELETE names (never the fuzzing's own, which must stay live).
    doomed = [f"doomed-{n}" for n in range(SEEDED_RUNS)]
    for name in doomed:
        create_token(system.store.engine, "read", name)
    real = {  # by operation path, then parameter: real values to mix in with generated ones
        "/runs/{run_id}/signals/{name}": {"run_id": plain, "name": ["poke"]},
        "/runs/{run_id}/cancel": {"run_id": signed},
        "/sagas/{name}/runs": {"name": ["plain", "signed"]},
        "/sagas/{name}/backfills": {"name": ["plain", "signed"]},
        "/schedules/{saga}/pause": {"saga": ["tick"]},
        "/schedules/{saga}/resume": {"saga": ["tick"]},
        "/tokens/{name}": {"name": doomed},
    }

    if "Authorization" not in headers:
        @loaded.hook
        def filter_failure(context, failure, case, response) -> bool:
            # Authentication is off (see fuzz_settings): a request without a token is served.
            return "Authorization" not in f"{failure.title} {failure.message}" and \
                "authentication" not in failure.title

    @loaded.hook
    def flatmap_path_parameters(context, path_parameters: dict | None) -> st.SearchStrategy:
        path = context.operation.path.removeprefix("/v1")
        known = real.get(path, {"run_id": signed + plain})
        return st.fixed_dictionaries({key: st.sampled_from([value, *known.get(key, [])])
                                      for key, value in (path_parameters or {}).items()})

    return loaded


# What must never reach a client: a stack trace, the database driver, its address.
INTERNALS = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line|sqlalchemy|psycopg"
    r"|postgres(ql)?(\+\w+)?://|127\.0\.0\.1|localhost|:5432\b|\buser \"postgres\"",
    re.IGNORECASE)


@schemathesis.check
def shows_no_internals(ctx, response, case) -> None:
    """The body names no traceback, driver, database URL, host or port."""
    text = response.content.decode("utf-8", "replace") if response.content else ""
    found = INTERNALS.search(text)
    if found:
        raise AssertionError(f"the response shows internals ({found.group(0)!r}): {text[:300]}")


def failures(schema) -> tuple[list[str], dict[str, set[int]]]:
    """Run every phase of schemathesis on `schema`: one line per distinct failure, and the
    statuses each operation answered."""
    found: dict[tuple[str, str, str], str] = {}
    statuses: dict[str, set[int]] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, (events.NonFatalError, events.FatalError)):
            found[("error", "", str(event))] = f"schemathesis could not run: {event}"
        if not isinstance(event, events.ScenarioFinished):
            continue
        for case_id, interaction in event.recorder.interactions.items():
            if interaction.response is not None:
                case = event.recorder.cases[case_id].value
                statuses.setdefault(f"{case.method.upper()} {case.path}", set()).add(
                    interaction.response.status_code)
        for case_id, checks in event.recorder.checks.items():
            for check in checks:
                if check.status != Status.FAILURE or check.failure_info is None:
                    continue
                failure = check.failure_info.failure
                key = (check.name, event.recorder.label, failure.title)
                case = event.recorder.cases[case_id].value
                found.setdefault(key, f"{check.name} on {event.recorder.label}: {failure.title}: "
                                      f"{failure.message[:400]}\n    {case.as_curl_command()[:600]}")
    return sorted(found.values()), statuses


@pytest.fixture
def wsgi_transport_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """schemathesis 4.32 hands socket settings (`max_redirects`...) to werkzeug's test client
    whenever auth is configured; drop them, as it already does for a requests session."""
    from schemathesis.transport.wsgi import WSGITransport

    send = WSGITransport.send

    def without_socket_settings(self, case, *, session=None, **kwargs):
        for name in ("max_redirects", "verify", "cert", "proxies"):
            kwargs.pop(name, None)
        return send(self, case, session=session, **kwargs)

    monkeypatch.setattr(WSGITransport, "send", without_socket_settings)


@pytest.mark.usefixtures("wsgi_transport_fix")
def test_no_operation_answers_5xx_an_undocumented_status_or_internals(api_headers, fuzz_app,
                                                                        fuzz_system):
    """Given generated requests, valid and not, When sent to every operation, Then each answer
    is documented (status, content type, schema) and is never a 5xx nor shows internals."""
    found, statuses = failures(api_schema(fuzz_app, fuzz_system, api_headers))
    assert not found, "\n".join(found)
    served = {operation for operation, codes in statuses.items()
              if any(200 <= code < 300 for code in codes)}
    assert REACHED <= served, f"never served: {sorted(REACHED - served)}"


def test_the_internals_check_catches_what_it_should():
    """The check fails on a traceback, a driver name or a database URL (so it can fail)."""
    for text in ['Traceback (most recent call last):\n  File "x.py", line 1',
                 "(psycopg.errors.NumericValueOutOfRange)", "postgresql+psycopg://postgres@h/db",
                 "connection to server at \"127.0.0.1\", port 5432 failed"]:
        assert INTERNALS.search(text), text
    assert not INTERNALS.search('{"detail": "No run has id \'x\'"}')


# -- the edges the fuzzing may miss: each known way in to a 5xx, tried on purpose ------------

PROBLEM = "application/problem+json"


@pytest.fixture
def client(fuzz_app: flask.Flask):
    return fuzz_app.test_client()


@pytest.fixture
def waiting_run(fuzz_system: System) -> str:
    return fuzz_system.engine.start("signed", {"order_id": "o-1", "amount_cents": 100})[0]


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status
    assert not INTERNALS.search(response.get_data(as_text=True))
    return body


@pytest.mark.parametrize("payload, field", [
    ({"carrier": "ups", "tracking": "a\u0000b"}, "payload.tracking"),
    ({"carrier": "ups", "tracking": "\ud800"}, "payload.tracking"),
    ({"carrier": "ups", "note\u0000": 1}, "payload.note\u0000"),
])
def test_signal_payload_text_postgresql_cannot_store_is_a_422(client, api_headers, waiting_run,
                                                              payload, field):
    """Given a NUL or a lone surrogate in a signal payload, When sent, Then 422 naming it."""
    response = client.post(f"/v1/runs/{waiting_run}/signals/label", json={"payload": payload},
                           headers=api_headers)
    assert field in problem(response, 422)["errors"]


@pytest.mark.parametrize("payload, field", [
    ({"note": "a\u0000b"}, "payload.note"),
    ({"note": ["\udfff"]}, "payload.note[0]"),
])
def test_schemaless_signal_payload_postgresql_cannot_store_is_a_422(client, api_headers,
                                                                    fuzz_system, payload, field):
    """Given a signal without a schema, When its payload holds NUL or a surrogate, Then 422."""
    run_id = fuzz_system.engine.start("plain", {})[0]
    response = client.post(f"/v1/runs/{run_id}/signals/poke", json={"payload": payload},
                           headers=api_headers)
    assert field in problem(response, 422)["errors"]


@pytest.mark.parametrize("order_id", ["a\u0000b", "\ud800", "x\udc00y"])
def test_order_ids_postgresql_cannot_store_are_a_422(client, api_headers, order_id):
    """Given an order id with a NUL or a lone surrogate, When a run is started, Then 422."""
    response = client.post("/v1/sagas/signed/runs", headers=api_headers,
                           json={"input": {"order_id": order_id, "amount_cents": 1}})
    assert "input.order_id" in problem(response, 422)["errors"]


@pytest.mark.parametrize("query, field", [
    ("started_after=10000-01-01T00:00:00Z", "started_after"),
    ("started_before=9999-12-31T23:59:59-23:59", "started_before"),
    ("finished_after=0001-01-01T00:00:00%2B23:59", "finished_after"),
    ("finished_before=2024-01-01T00:00:00%2B99:00", "finished_before"),
    ("started_after=-2024-01-01T00:00:00Z", "started_after"),
    ("cursor=" + base64.urlsafe_b64encode(b"10000-01-01T00:00:00+00:00|x").decode(), "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b"0001-01-01T00:00:00+23:59|x").decode(), "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b"9999-12-31T23:59:59-23:59|x").decode(), "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|" + b"x" * 400).decode(),
     "cursor"),
    ("version=2147483648&saga=signed", "version"),
    ("version=9223372036854775808&saga=signed", "version"),
    ("version=" + "9" * 30 + "&saga=signed", "version"),
    ("limit=18446744073709551616", "limit"),
])
def test_times_and_numbers_beyond_range_are_a_422_naming_them(client, api_headers, query, field):
    """Given a time or number past what PostgreSQL or Python holds, When listed, Then 422."""
    response = client.get(f"/v1/runs?{query}", headers=api_headers)
    assert field in problem(response, 422)["errors"]


@pytest.mark.parametrize("version", [2**31, 2**63, 2**64, 10**40])
def test_versions_beyond_64_bits_are_a_4xx(client, api_headers, version):
    """Given a version past 32 or 64 bits, When a run is started, Then a 4xx naming it."""
    response = client.post("/v1/sagas/signed/runs", headers=api_headers, json={
        "input": {"order_id": "o", "amount_cents": 1}, "version": version})
    assert "version" in problem(response, 422)["errors"]


@pytest.mark.parametrize("body, field", [
    ({"inputs": [{}], "max_running": 2**63}, "max_running"),
    ({"inputs": [{"key": "k" * 300, "input": {}}]}, "inputs[0]"),
    ({"inputs": [{"key": True, "input": {}}]}, "inputs[0]"),
    ({"inputs": [{"key": "k", "input": {"n": "\u0000"}}]}, "inputs[0].input.n"),
    ({"from": "10000-01-01T00:00:00Z", "to": "10000-01-02T00:00:00Z"}, "from"),
    ({"inputs": "not a list"}, "inputs"),
    ({"inputs": [], "dry_run": "yes please"}, "inputs"),
    ({"inputs": [{}], "surprise": 1}, "surprise"),
    ([], "body"),
])
def test_a_malformed_backfill_is_a_documented_4xx(client, api_headers, body, field):
    """Given a backfill body the API refuses, When POSTed, Then 422 naming the field."""
    response = client.post("/v1/sagas/plain/backfills", json=body, headers=api_headers)
    errors = problem(response, 422).get("errors") or {}
    assert any(name.startswith(field) for name in errors), errors


def test_a_backfill_body_that_is_not_json_is_a_400(client, api_headers):
    response = client.post("/v1/sagas/plain/backfills", data=b'{"inputs": [', headers=api_headers,
                           content_type="application/json")
    assert "JSON" in problem(response, 400)["detail"]


def test_a_10_kb_idempotency_key_is_a_400_naming_the_header(client, api_headers, waiting_run):
    """Given a 10 KB Idempotency-Key (the column holds 255), When used, Then 400 naming it."""
    headers = {**api_headers, "Idempotency-Key": "k" * 10_000}
    for path, body in [("/v1/sagas/signed/runs", {"input": {"order_id": "o"}}),
                       (f"/v1/runs/{waiting_run}/signals/label", {"payload": {"carrier": "ups"}})]:
        response = client.post(path, json=body, headers=headers)
        assert "Idempotency-Key" in problem(response, 400)["errors"]


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, 900, 5000, 100_000])
def test_json_nested_deeper_than_the_limit_is_a_400(client, api_headers, fuzz_system, depth):
    """Given JSON nested past MAX_DEPTH, When sent as input or payload, Then 400 saying so;
    up to the limit it is stored."""
    run_id = fuzz_system.engine.start("plain", {})[0]
    nested = "[" * depth + "]" * depth  # inside {"input": {"n": ...}}: two levels more
    for path, raw in [("/v1/sagas/plain/runs", '{"input": {"n": ' + nested + "}}"),
                      (f"/v1/runs/{run_id}/signals/poke", '{"payload": {"n": ' + nested + "}}")]:
        response = client.post(path, data=raw, content_type="application/json",
                               headers=api_headers)
        if depth + 2 <= MAX_DEPTH:
            assert response.status_code in (201, 202), response.get_data(as_text=True)
        else:
            assert "nested" in problem(response, 400)["detail"]


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" + "0" * 5000])
def test_numbers_json_holds_but_postgresql_cannot_are_a_400(client, api_headers, number):
    """Given 1e400 (a float overflow) or 5000 digits, When sent as input, Then 400."""
    response = client.post("/v1/sagas/plain/runs", data='{"input": {"n": ' + number + "}}",
                           content_type="application/json", headers=api_headers)
    assert "JSON" in problem(response, 400)["detail"]


def chunked(client, path: str, raw: bytes, headers: dict[str, str], *, terminated: bool):
    """POST `raw` with no Content-Length, as a chunked request reaches the app; `terminated`:
    the server de-chunked it (gunicorn and werkzeug's server do, and say so in the environ)."""
    return client.post(path, input_stream=io.BytesIO(raw),
                       environ_overrides={"wsgi.input_terminated": terminated},
                       headers={**headers, "Content-Type": "application/json",
                                "Transfer-Encoding": "chunked"})


def test_a_chunked_body_over_the_limit_is_a_413_never_truncated(client, fuzz_app, fuzz_system,
                                                                api_headers):
    """Given a chunked body (no Content-Length) over max_body_bytes, When POSTed, Then 413
    and no run; under the limit, the run starts with the whole input."""
    limit = fuzz_app.config["MAX_CONTENT_LENGTH"]
    whole = b'{"input": {"order_id": "o"}}'
    # Valid JSON when cut at the limit: a server that read only what fits would start a run.
    for big in (whole.ljust(limit) + b'"more"', whole + b"x" * limit):
        response = chunked(client, "/v1/sagas/plain/runs", big, api_headers, terminated=True)
        assert "limit" in problem(response, 413)["detail"]
    at_limit = chunked(client, "/v1/sagas/plain/runs", whole.ljust(limit), api_headers,
                       terminated=True)
    assert at_limit.status_code == 201, at_limit.get_data(as_text=True)
    assert len(fuzz_system.store.list_runs("plain")[0]) == 1  # the one at the limit
    small = b'{"input": {"order_id": "o", "pad": "' + b"y" * 1000 + b'"}}'
    response = chunked(client, "/v1/sagas/plain/runs", small, api_headers, terminated=True)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["input"]["pad"] == "y" * 1000


def test_a_chunked_body_the_server_did_not_dechunk_is_a_411_not_an_empty_body(
        client, fuzz_system, api_headers):
    """Given a chunked signal the WSGI server left undelimited, When POSTed, Then 411, and
    no signal with an empty payload is delivered."""
    run_id = fuzz_system.engine.start("plain", {})[0]
    response = chunked(client, f"/v1/runs/{run_id}/signals/poke", b'{"payload": {"n": 1}}',
                       api_headers, terminated=False)
    assert "Content-Length" in problem(response, 411)["detail"]
    events = fuzz_system.store.events(run_id, None, "signal")
    assert events == [], events


# -- the demo services validate like the API ---------------------------------------------

@pytest.fixture
def services(database_url: str) -> Iterator[flask.testing.FlaskClient]:
    engine = sa.create_engine(database_url)
    create_tables(engine)
    app = flask.Flask("demo-services")
    app.register_blueprint(make_demo_services(engine))
    yield app.test_client()
    engine.dispose()


GOOD = {"order_id": "o-1", "items": [{"sku": "a", "qty": 1}], "amount_cents": 500,
        "card": "visa", "address": "1 Main St"}
DEMO_POSTS = ["/demo/inventory/reserve", "/demo/inventory/release", "/demo/payment/charge",
              "/demo/payment/refund", "/demo/shipping/create", "/demo/shipping/cancel"]


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[1, 2]", b'{"order_id": NaN}', b'{"n": 1e400}', b"[" * 100_000,
    b'{"order_id": ' + b"9" * 5000 + b"}", b"\xff\xfe", b'"just a string"',
    b'{"order_id": "o", "items": ' + b"[" * 50 + b"]" * 50 + b"}",
])
def test_demo_services_refuse_bodies_that_are_not_json_objects_with_a_400(services, raw):
    """Given a body that is not a JSON object, When POSTed to any demo service, Then 400."""
    for path in DEMO_POSTS:
        response = services.post(path, data=raw, content_type="application/json",
                                 headers={"Idempotency-Key": str(uuid.uuid4())})
        assert response.status_code == 400, (path, response.get_data(as_text=True))
        assert response.headers["Content-Type"] == PROBLEM


@pytest.mark.parametrize("field, value", [
    ("order_id", "a\u0000b"), ("order_id", "\ud800"), ("order_id", "o" * 101), ("order_id", ""),
    ("order_id", 7), ("amount_cents", 2**31), ("amount_cents", 2**64), ("amount_cents", True),
    ("amount_cents", 0), ("amount_cents", 1.5), ("items", [{"sku": "a\u0000"}]),
    ("items", ["\udfff"]), ("items", "a"), ("card", "\u0000"), ("address", "x\ud800"),
    ("address", "a" * 1001),
])
def test_demo_services_never_answer_a_bad_field_with_a_5xx(services, field, value):
    """Given a field of the wrong type, range or text, When POSTed to each service, Then a
    400 problem where the service reads that field, and never a 5xx."""
    for path in DEMO_POSTS:
        response = services.post(path, json={**GOOD, field: value},
                                 headers={"Idempotency-Key": str(uuid.uuid4())})
        assert response.status_code < 500, (path, response.get_data(as_text=True))
        if response.status_code >= 400:
            assert response.headers["Content-Type"] == PROBLEM


@pytest.mark.parametrize("path, field, value", [
    ("/demo/inventory/reserve", "order_id", "a\u0000b"),
    ("/demo/payment/charge", "amount_cents", 2**31),
    ("/demo/payment/charge", "amount_cents", True),
    ("/demo/inventory/reserve", "items", [{"sku": "a\u0000"}]),
    ("/demo/shipping/create", "address", "x\ud800"),
])
def test_demo_services_name_the_bad_field(services, path, field, value):
    response = services.post(path, json={**GOOD, field: value},
                             headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert field in response.get_json(force=True)["detail"]


@pytest.mark.parametrize("key", ["k\u0000", "k" * 10_000, "k\x7f\x01"])
def test_demo_services_refuse_an_idempotency_key_the_log_cannot_hold(services, key):
    response = services.post("/demo/inventory/reserve", json=GOOD,
                             headers={"Idempotency-Key": key})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "Idempotency-Key" in response.get_json(force=True)["detail"]


@pytest.mark.parametrize("query", ["order_id=a%00b", "order_id=" + "x" * 5000, "order_id=%ff"])
def test_demo_effects_listing_never_fails_on_a_strange_order_id(services, query):
    response = services.get(f"/demo/effects?{query}")
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    if response.status_code == 200:
        assert response.get_json() == {"effects": []}
