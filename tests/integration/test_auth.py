"""Access control on real PostgreSQL: bearer tokens, scopes, revocation seen by every API
process, the per-token rate limit, the backfill cap, and who did what in a run's events.

Most tests run the app in-process (Kombu's in-memory broker: the API only publishes);
revocation, the shared rate limit and the logs are checked on real `saga api` processes.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from saga import NonRetryable, Retry, Saga, Step, WaitForSignal
from saga.api import create_app
from saga.cli import main
from saga.embedded import embedded
from saga.registry import Registry
from saga.settings import Settings
from saga.store.tokens import CACHE_S, SCOPES
from saga.system import build
from tests.auth import bearer, create_token
from tests.conftest import BROKERS, need
from tests.stack import ROOT, Stack, free_port, wait_for

PROBLEM = "application/problem+json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
# Every operation's least scope. An operation added to the API fails
# test_the_openapi_document_declares_the_scheme_and_each_scope until it is added here.
SCOPE_OF = {
    ("get", "/v1/runs"): "read",
    ("get", "/v1/runs/{run_id}"): "read",
    ("get", "/v1/runs/{run_id}/events"): "read",
    ("get", "/v1/sagas"): "read",
    ("get", "/v1/schedules"): "read",
    ("get", "/v1/backfills/{backfill_id}"): "read",
    ("post", "/v1/sagas/{name}/runs"): "operate",
    ("post", "/v1/runs/{run_id}/signals/{name}"): "operate",
    ("post", "/v1/runs/{run_id}/cancel"): "admin",
    ("post", "/v1/runs/{run_id}/retry"): "admin",
    ("post", "/v1/sagas/{name}/backfills"): "admin",
    ("post", "/v1/schedules/{saga}/pause"): "admin",
    ("post", "/v1/schedules/{saga}/resume"): "admin",
    ("get", "/v1/tokens"): "admin",
    ("post", "/v1/tokens"): "admin",
    ("delete", "/v1/tokens/{name}"): "admin",
}
LIMITED = {("post", "/v1/sagas/{name}/runs"), ("post", "/v1/runs/{run_id}/signals/{name}"),
           ("post", "/v1/sagas/{name}/backfills")}
PUBLIC = {("get", "/v1/health")}


# -- the sagas under test ----------------------------------------------------------------

def ok(ctx):
    return {"done": ctx.step}


def decline(ctx):
    raise NonRetryable("card declined")


def broken_undo(ctx):
    raise RuntimeError("warehouse API gone")


SAGAS = [
    Saga("plain", steps=[Step("only", ok)]),
    Saga("parcel", steps=[Step("pack", ok), WaitForSignal("label", timeout=timedelta(minutes=5)),
                          Step("send", ok)]),
    # Its compensation gives up at once, so the run ends `failed`: one to retry.
    Saga("brittle", steps=[Step("hold", ok, compensate=broken_undo,
                                compensate_retry=Retry(attempts=1)),
                           Step("charge", decline)]),
]


# -- fixtures and helpers ----------------------------------------------------------------

class Api:
    """An in-process app on this test's database, and its system."""

    def __init__(self, database_url: str, **changes: Any) -> None:
        self.settings = Settings(database_url=database_url, broker_url="memory://",
                                 inline_steps=0, **changes)
        self.system = build(self.settings, Registry(SAGAS))
        self.app = create_app(self.settings, self.system)
        self.client = self.app.test_client()

    def token(self, scope: str, name: str | None = None) -> str:
        return create_token(self.system.store.engine, scope, name)

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any):
        headers = {**(bearer(token) if token else {}), **kwargs.pop("headers", {})}
        return self.client.open(path, method=method.upper(), headers=headers, **kwargs)

    def close(self) -> None:
        self.system.store.close()


@pytest.fixture
def make_api(database_url: str) -> Iterator[Any]:
    made: list[Api] = []

    def make(**changes: Any) -> Api:
        made.append(Api(database_url, **changes))
        return made[-1]

    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api) -> Api:
    return make_api()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


def concrete(path: str) -> str:
    """A URL for a templated path: every parameter names nothing that exists."""
    return re.sub(r"\{[^}]+\}", "nothing-here", path)


def spec_of(api: Api) -> dict[str, Any]:
    response = api.client.get("/v1/openapi.json")  # no token: it lists no data
    assert response.status_code == 200
    return response.get_json()


def assert_unauthorized(response, challenge: str) -> dict[str, Any]:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"] == challenge
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["status"] == 401
    return body


def started_by(api: Api, saga: str, token: str) -> str:
    response = api.call("post", f"/v1/sagas/{saga}/runs", token, json={"input": {}})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


# -- who may call -------------------------------------------------------------------------

def test_every_operation_needs_a_token_except_health_and_the_document(api):
    """Given the API's own OpenAPI document, When each operation is called with no token, a
    token that does not exist, or another scheme, Then each is a 401 problem challenging for
    a bearer token; health and the document itself answer without one."""
    seen = 0
    for method, path, operation in operations(spec_of(api)):
        if operation.get("security") == []:
            assert api.call(method, concrete(path)).status_code != 401, path
            continue
        seen += 1
        url = concrete(path)
        assert_unauthorized(api.call(method, url, json={}), 'Bearer realm="saga"')
        assert_unauthorized(api.call(method, url, json={}, headers={
            "Authorization": "Basic dXNlcjpwYXNz"}), 'Bearer realm="saga"')
        assert_unauthorized(api.call(method, url, "saga_" + secrets.token_urlsafe(32), json={}),
                            'Bearer realm="saga", error="invalid_token"')
    assert seen == len(SCOPE_OF)


def test_a_revoked_token_gets_the_same_401_as_one_that_never_existed(api):
    token = api.token("admin", "leaver")
    assert api.call("get", "/v1/runs", token).status_code == 200
    from saga.store.tokens import TokenStore

    TokenStore(api.system.store.engine).revoke("leaver")
    revoked = api.call("get", "/v1/runs", token)
    unknown = api.call("get", "/v1/runs", "saga_" + secrets.token_urlsafe(32))
    challenge = 'Bearer realm="saga", error="invalid_token"'
    assert assert_unauthorized(revoked, challenge) == assert_unauthorized(unknown, challenge)


def test_the_openapi_document_declares_the_scheme_and_each_scope(api):
    spec = spec_of(api)
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    declared, public = {}, set()
    for method, path, operation in operations(spec):
        if operation.get("security") == []:
            public.add((method, path))
            continue
        assert operation["security"] == [{"bearerAuth": []}], path
        declared[(method, path)] = operation.get("x-required-scope")
        assert {"401", "403"} <= set(operation["responses"]), path
        assert ("429" in operation["responses"]) == ((method, path) in LIMITED), path
    assert public == PUBLIC
    assert declared == SCOPE_OF


def test_each_scope_can_do_exactly_what_it_should(api):
    """Given a token of each scope, When each calls every operation, Then a scope below the
    operation's gets a 403 naming the scope needed, and one at or above it gets past auth."""
    tokens = {scope: api.token(scope) for scope in SCOPES}
    for (method, path), needed in SCOPE_OF.items():
        for scope, token in tokens.items():
            response = api.call(method, concrete(path), token, json={})
            if SCOPES.index(scope) < SCOPES.index(needed):
                assert response.status_code == 403, (method, path, scope)
                assert response.headers["WWW-Authenticate"] == (
                    f'Bearer realm="saga", error="insufficient_scope", scope="{needed}"')
                assert f"{needed!r} scope" in response.get_json()["detail"]
            else:
                assert response.status_code not in (401, 403), (method, path, scope)


def test_read_cannot_start_operate_cannot_cancel_admin_can_both(api):
    reader, operator, admin = api.token("read"), api.token("operate"), api.token("admin")
    refused = api.call("post", "/v1/sagas/plain/runs", reader, json={"input": {}})
    assert refused.status_code == 403
    assert api.call("get", "/v1/runs", reader).get_json()["runs"] == []  # nothing started
    run_id = started_by(api, "plain", operator)
    assert api.call("post", f"/v1/runs/{run_id}/cancel", operator).status_code == 403
    assert api.call("get", f"/v1/runs/{run_id}", reader).get_json()["cancel_requested"] is False
    assert api.call("post", f"/v1/runs/{run_id}/cancel", admin).status_code == 202
    started_by(api, "plain", admin)


# -- limits -------------------------------------------------------------------------------

def test_the_rate_limit_per_token_answers_429_with_retry_after(make_api):
    """Given SAGA_RATE_LIMIT=3/minute, When one token starts a fourth run or sends a signal,
    Then 429 with Retry-After; its reads, and another token's starts, go on."""
    api = make_api(rate_limit="3/minute")
    burst, calm = api.token("operate", "burst"), api.token("operate", "calm")
    runs = [started_by(api, "parcel", burst) for _ in range(3)]
    for method, path, body in [("post", "/v1/sagas/parcel/runs", {"input": {}}),
                               ("post", f"/v1/runs/{runs[0]}/signals/label", {"payload": {}})]:
        response = api.call(method, path, burst, json=body)
        assert response.status_code == 429, response.get_json()
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert response.mimetype == PROBLEM
        problem = response.get_json()
        assert problem["status"] == 429
        assert "'burst'" in problem["detail"] and "3/minute" in problem["detail"]
    assert api.call("get", f"/v1/runs/{runs[0]}", burst).status_code == 200
    started_by(api, "parcel", calm)
    assert len(api.call("get", "/v1/runs", calm).get_json()["runs"]) == 4


def test_a_backfill_over_the_cap_is_a_400_naming_it_unless_max_runs_says_so(make_api):
    api = make_api(backfill_cap=3)
    admin = api.token("admin", "backfiller")
    inputs = [{"key": f"k{i}", "input": {}} for i in range(5)]

    over = api.call("post", "/v1/sagas/plain/backfills", admin, json={"inputs": inputs})
    assert over.status_code == 400, over.get_json()
    problem = over.get_json()
    assert "cap of 3 (SAGA_BACKFILL_CAP)" in problem["detail"]
    assert '"max_runs": 5' in problem["detail"] and "max_runs" in problem["errors"]
    short = api.call("post", "/v1/sagas/plain/backfills", admin,
                     json={"inputs": inputs, "max_runs": 4})
    assert short.status_code == 400 and "max_runs of 4" in short.get_json()["detail"]
    assert api.call("get", "/v1/runs", admin).get_json()["runs"] == []  # nothing written

    small = api.call("post", "/v1/sagas/plain/backfills", admin, json={"inputs": inputs[:3]})
    assert small.status_code == 201, small.get_json()
    meant = api.call("post", "/v1/sagas/plain/backfills", admin,
                     json={"inputs": inputs, "max_runs": 5})
    assert meant.status_code == 201, meant.get_json()
    assert meant.get_json()["items"]["total"] == 2  # three ran already, by key

    # Its runs are started by the sweeper's feed (here: the first, at once) as their asker.
    runs = api.call("get", "/v1/runs", admin).get_json()["runs"]
    assert len(runs) == 5
    for run in runs:
        events = api.call("get", f"/v1/runs/{run['id']}/events", admin).get_json()["events"]
        assert events[0]["data"].get("by") == "backfiller", events[0]


# -- who did it ---------------------------------------------------------------------------

def test_cancel_signal_and_retry_record_the_token_name_in_the_events(database_url):
    """Given a worker and the sweeper running, When `ops-bot` signals a run and `alice`
    cancels one and retries a failed one, Then each change's events say `by` whom, in
    GET /v1/runs/{id}/events and in `saga show --events`."""
    settings = Settings(database_url=database_url, broker_url="memory://",
                        sweep_interval_s=0.1, worker_concurrency=2)
    with embedded(settings, Registry(SAGAS)) as system:
        client = create_app(settings, system).test_client()
        engine = system.store.engine
        ops, alice = create_token(engine, "operate", "ops-bot"), create_token(engine, "admin", "alice")

        def call(method: str, path: str, token: str, **kwargs: Any):
            return client.open(path, method=method, headers=bearer(token), **kwargs)

        def start(saga: str) -> str:
            response = call("POST", f"/v1/sagas/{saga}/runs", ops, json={"input": {}})
            assert response.status_code == 201, response.get_json()
            return response.get_json()["id"]

        def reaches(run_id: str, done) -> dict:
            return wait_for(lambda: done(call("GET", f"/v1/runs/{run_id}", ops).get_json()),
                            30, f"run {run_id} to move on")

        def waiting(run: dict) -> bool:
            return any(s["status"] == "waiting" for s in run["steps"])

        signalled, cancelled, failed = start("parcel"), start("parcel"), start("brittle")
        reaches(signalled, waiting)
        assert call("POST", f"/v1/runs/{signalled}/signals/label", ops,
                    json={"payload": {"tracking": "1Z"}}).status_code == 202
        reaches(cancelled, waiting)
        assert call("POST", f"/v1/runs/{cancelled}/cancel", alice).status_code == 202
        reaches(failed, lambda run: run["status"] == "failed")
        retried = call("POST", f"/v1/runs/{failed}/retry", alice)
        assert retried.status_code == 200, retried.get_json()
        reaches(signalled, lambda run: run["status"] == "succeeded")
        reaches(cancelled, lambda run: run["status"] in ("cancelled", "compensated"))

        for run_id, who, what in ((signalled, "ops-bot", "signal.received"),
                                  (cancelled, "alice", "run.cancelled"),
                                  (failed, "alice", "compensation.queued")):  # resumed
            events = call("GET", f"/v1/runs/{run_id}/events", ops).get_json()["events"]
            asked = [e["type"] for e in events if e["data"].get("by") == who]
            assert what in asked, f"no {what} of {run_id} is by {who}: {events}"
            shown = CliRunner().invoke(main, ["show", run_id, "--events"],
                                       env={"SAGA_DATABASE_URL": database_url})
            assert shown.exit_code == 0, shown.output
            assert f"by {who}" in shown.output
        signal_events = [e for e in call("GET", f"/v1/runs/{signalled}/events",
                                         ops).get_json()["events"] if e["data"].get("by")]
        assert {e["data"]["by"] for e in signal_events} == {"ops-bot"}  # the start and signal


def test_the_token_is_never_logged_nor_stored(api, caplog):
    """Given every logger at DEBUG (SQLAlchemy's statements and parameters too), When a
    token is created and used, accepted and refused, Then no log line holds it, and its row
    holds only its hash."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # statements and parameters
    token = api.token("read", "quiet")
    api.call("get", "/v1/runs", token)
    api.call("post", "/v1/sagas/plain/runs", token, json={"input": {}})  # a 403
    api.call("get", "/v1/runs", token + "x")  # a 401
    # The lookup's parameter was logged: the check below would see a token there.
    assert hashlib.sha256(token.encode()).hexdigest() in caplog.text
    assert token not in caplog.text
    with api.system.store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT * FROM tokens").all()
    assert rows and not any(token in str(value) for row in rows for value in row)
    assert hashlib.sha256(token.encode()).hexdigest() in {row.token_hash for row in rows}


# -- real API processes ------------------------------------------------------------------

def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saga.cli", *args], env=stack.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def second_api(stack: Stack, env: dict[str, str] | None = None) -> str:
    """Another `saga api` on the same database; returns its base URL."""
    port = free_port()
    stack.api(env, port=port)
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def redis_stack(database_url: str, tmp_path) -> Iterator[Stack]:
    """Real processes on Redis, where the rate limit's counters live too."""
    need("redis", BROKERS["redis"])
    with Stack(database_url, BROKERS["redis"], tmp_path, sagas="examples.fulfillment") as stack:
        yield stack


def test_revocation_is_seen_by_every_api_process_within_the_token_cache(redis_stack):
    """Given two `saga api` processes (of two gunicorn workers each) on one database, When a
    token made with `saga token create` is revoked with `saga token revoke`, Then every
    request to either is a 401 once CACHE_S has passed since (a process remembers a live
    token that long); and neither process nor the CLI ever logged it."""
    stack = redis_stack
    stack.api()
    bases = [stack.base, second_api(stack)]
    created = cli(stack, "token", "create", "ci-reader", "--scope", "read")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("saga_") and token not in created.stderr
    for base in bases:
        for _ in range(4):  # the workers of a gunicorn take turns
            response = requests.get(f"{base}/v1/runs", headers=bearer(token), timeout=10)
            assert response.status_code == 200, response.text

    revoked = cli(stack, "token", "revoke", "ci-reader")
    assert (revoked.returncode, revoked.stdout.strip()) == (0, "token 'ci-reader' revoked")
    committed = time.monotonic()  # the revocation committed before the command returned
    wait_for(lambda: time.monotonic() >= committed + CACHE_S, CACHE_S + 1, "CACHE_S to pass")
    for base in bases:
        for _ in range(4):
            response = requests.get(f"{base}/v1/runs", headers=bearer(token), timeout=10)
            assert response.status_code == 401, response.text
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="saga", error="invalid_token"'

    listed = cli(stack, "token", "list")
    assert listed.returncode == 0, listed.stderr
    [line] = [row for row in listed.stdout.splitlines() if row.startswith("ci-reader")]
    assert " read " in line and not line.rstrip().endswith("-")  # revoked at a time
    stored = stack.query("SELECT name, scope, token_hash, created_at FROM tokens")
    assert not any(token in str(value) for row in stored for value in row)
    for process in stack.processes:
        assert token not in process.output(), process.name
        assert "SAGA_AUTH=off" not in process.output()
    assert token not in listed.stdout + listed.stderr + revoked.stdout + revoked.stderr


def test_the_rate_limit_is_counted_across_api_processes_on_redis(redis_stack):
    """Given SAGA_RATE_LIMIT=4/minute and two API processes on Redis, When one token starts
    runs through both in turn, Then the fifth start is a 429, whichever process gets it."""
    stack = redis_stack
    stack.env["SAGA_RATE_LIMIT"] = "4/minute"
    stack.api()
    bases = [stack.base, second_api(stack)]
    token = create_token(stack.db, "operate", "busy")
    statuses = []
    for n in range(6):
        response = requests.post(f"{bases[n % 2]}/v1/sagas/order_fulfillment/runs",
                                 json={"input": {"order_id": f"o-{n}", "items": [
                                     {"sku": "s", "qty": 1}], "amount_cents": 100,
                                     "card": "ok", "address": "1 Main St",
                                     "email": "b@example.com"}},
                                 headers=bearer(token), timeout=10)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
    assert statuses == [201] * 4 + [429] * 2


def test_auth_off_on_postgresql_warns_in_one_line_and_needs_no_token(redis_stack):
    stack = redis_stack
    api = stack.api(env={"SAGA_AUTH": "off"})
    assert requests.get(f"{stack.base}/v1/runs", timeout=10).status_code == 200
    # create_app logs it before gunicorn starts serving, so it is in the log by now.
    warned = [line for line in api.output().splitlines() if "SAGA_AUTH=off" in line]
    assert len(warned) == 1 and "WARNING" in warned[0], api.output()
