"""What a step's `ctx` holds: the loaded input, the forward step's outcome, keys and `ctx.http`.

The HTTP tests call real servers on 127.0.0.1 (a header echo, and a Flask service built
with `saga.helpers.idempotent` on a SQLite file); the worker tests run a saga on an
embedded SQLite log with a recording dispatcher, as tests/unit/test_engine.py does.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import flask
import pytest
import requests
import sqlalchemy as sa
from marshmallow import Schema, fields
from werkzeug.serving import make_server

from saga import NonRetryable, RemoteTask, Retry, Saga, Step, StepContext
from saga.engine import Engine
from saga.helpers.idempotent import IdempotentRequests, create_tables, idempotent
from saga.observe.ids import traceparent
from saga.registry import Registry
from saga.store import Store
from saga.testing.dispatch import RecordingDispatcher
from saga.worker.runner import Worker

RUN_ID = "0b6f2a54-3c1e-4c57-9d2a-6f1c2e7d9a10"


class BookingInput(Schema):
    guest = fields.Str(required=True)
    nights = fields.Int(load_default=1)
    arrives = fields.Date(required=True)


def context(role: str = "forward", schema: Any = None, raw: Any = None, **extra: Any) -> StepContext:
    return StepContext(run_id=RUN_ID, step="book", role=role, attempt=2, fence=7,
                       raw_input={"guest": "ada", "arrives": "2025-03-01"} if raw is None else raw,
                       outputs={}, saga="booking", version=3, input_schema=schema, **extra)


# -- the input --------------------------------------------------------------------------

@pytest.mark.parametrize("schema", [BookingInput, BookingInput()], ids=["class", "instance"])
def test_input_is_loaded_by_the_schema_and_the_raw_input_stays_as_sent(schema: Any) -> None:
    """Given a saga whose input schema has a default and a date (as a class or an instance),
    Then ctx.input holds the default and a date, and ctx.raw_input the JSON as sent."""
    ctx = context(schema=schema)
    assert ctx.input == {"guest": "ada", "nights": 1, "arrives": dt.date(2025, 3, 1)}
    assert ctx.raw_input == {"guest": "ada", "arrives": "2025-03-01"}


def test_without_a_schema_the_input_is_the_raw_input() -> None:
    ctx = context()
    assert ctx.input is ctx.raw_input


def test_an_input_the_schema_no_longer_loads_fails_for_good_naming_the_saga() -> None:
    """Given a run whose input the (changed) schema refuses, Then reading ctx.input raises
    NonRetryable naming the saga, its version and the field."""
    ctx = context(schema=BookingInput, raw={"guest": "ada"})
    with pytest.raises(NonRetryable, match=r"booking v3.*arrives"):
        _ = ctx.input


# -- keys ----------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["forward", "compensate"])
def test_the_forward_key_is_the_key_the_forward_step_called_under(role: str) -> None:
    ctx = context(role)
    assert ctx.idempotency_key == f"{RUN_ID}:book:{role}"
    assert ctx.forward_key == f"{RUN_ID}:book:forward"


# -- ctx.http --------------------------------------------------------------------------

class Echo(BaseHTTPRequestHandler):
    """Answers every GET with the request's headers as lines `name: value`."""

    def do_GET(self) -> None:
        body = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                     daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def headers_seen(response: requests.Response) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in response.text.splitlines())


def test_every_call_carries_the_key_the_fence_and_the_traceparent(echo: str) -> None:
    """Given a forward attempt, When it calls out twice through ctx.http, Then each request
    carries its step's key, its fence and its attempt's traceparent."""
    with context() as ctx:
        seen = [headers_seen(ctx.http.get(echo)) for _ in range(2)]
    for headers in seen:
        assert headers["idempotency-key"] == f"{RUN_ID}:book:forward"
        assert headers["saga-fence"] == "7"
        assert headers["traceparent"] == traceparent(RUN_ID, "book", "forward", 2)


def test_headers_the_caller_sets_win_and_none_sends_none(echo: str) -> None:
    with context("compensate") as ctx:
        mine = headers_seen(ctx.http.get(echo, headers={"idempotency-key": "mine"}))
        none = headers_seen(ctx.http.get(echo, headers={"Saga-Fence": None}))
    assert mine["idempotency-key"] == "mine" and mine["saga-fence"] == "7"
    assert "saga-fence" not in none and none["idempotency-key"] == f"{RUN_ID}:book:compensate"


def test_the_session_is_made_on_first_use_and_closed_after_the_attempt(echo: str) -> None:
    ctx = context()
    with ctx:
        assert ctx._http is None  # no session for a step that never calls out
        session = ctx.http
        assert ctx.http is session
        session.get(echo)
        assert session.adapters["http://"].poolmanager.pools
    assert ctx._http is None and not session.adapters["http://"].poolmanager.pools


def test_a_call_naming_no_timeout_still_times_out() -> None:
    """Given a server that accepts and never answers, When a step calls it through
    ctx.http without a timeout, Then the call gives up after the session's timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with context() as ctx:
            ctx.http.timeout = 0.2
            with pytest.raises(requests.Timeout):
                ctx.http.get(f"http://127.0.0.1:{silent.getsockname()[1]}/")


# -- a service built with saga.helpers.idempotent, called as a step -----------------

@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    """POST /charge applies one `charges` row per key; it runs on a real server."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/service.db")
    create_tables(engine)
    charges = sa.Table("charges", sa.MetaData(), sa.Column("key", sa.String(255)))
    charges.create(engine)
    app = flask.Flask(__name__)

    @app.post("/charge")
    @idempotent(IdempotentRequests(engine), "charge")
    def charge(db: sa.Connection) -> tuple[dict[str, Any], int]:
        db.execute(charges.insert().values(key=flask.request.headers["Idempotency-Key"]))
        return {"charged": True}, 200

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                     daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", engine
    server.shutdown()
    engine.dispose()


def attempt(number: int) -> StepContext:
    return StepContext(run_id=RUN_ID, step="charge", role="forward", attempt=number,
                       fence=number, raw_input={}, outputs={})


def test_a_retried_call_is_applied_once_and_a_superseded_attempt_is_refused(service) -> None:
    """Given a service built with saga.helpers.idempotent,
    When attempt 1 of a step charges, attempt 2 charges again, then attempt 1 calls once more,
    Then the charge is applied once, attempt 2 gets the first answer replayed, and the
    superseded attempt 1 is refused with a 409 naming both fences."""
    base, engine = service
    with attempt(1) as first, attempt(2) as second:
        applied = first.http.post(f"{base}/charge", json={"cents": 100})
        retried = second.http.post(f"{base}/charge", json={"cents": 100})
        stale = first.http.post(f"{base}/charge", json={"cents": 100})
    assert applied.status_code == 200 and "Idempotent-Replayed" not in applied.headers
    assert retried.status_code == 200 and retried.headers["Idempotent-Replayed"] == "true"
    assert stale.status_code == 409, stale.text
    assert stale.json()["type"] == "/problems/stale-fence"
    assert "fence 2" in stale.json()["detail"] and "fence 1" in stale.json()["detail"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT key FROM charges")).scalars().all() == [
            f"{RUN_ID}:charge:forward"]


@pytest.mark.parametrize("fence", ["-1", "one", "1" * 19, "²"])
def test_a_fence_that_is_not_a_whole_number_is_a_400(service, fence: str) -> None:
    base, _ = service
    response = requests.post(f"{base}/charge", json={}, timeout=10,
                             headers={"Idempotency-Key": "k", "Saga-Fence": fence.encode()})
    assert response.status_code == 400 and response.json()["type"] == "/problems/invalid-fence"


def test_a_call_without_a_fence_is_not_fenced(service) -> None:
    base, _ = service
    with attempt(3) as later:
        assert later.http.post(f"{base}/charge", json={}).status_code == 200
    again = requests.post(f"{base}/charge", json={}, timeout=10,
                          headers={"Idempotency-Key": f"{RUN_ID}:charge:forward"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"


# -- what the worker hands a compensation ----------------------------------------------

SEEN: dict[str, dict[str, Any]] = {}


def remember(ctx: StepContext) -> dict[str, Any]:
    SEEN[f"{ctx.step}:{ctx.role}"] = {
        "output": ctx.output, "forward_error": ctx.forward_error, "forward_key": ctx.forward_key,
        "input": ctx.input, "raw_input": ctx.raw_input}
    return {"step": ctx.step}


def decline(ctx: StepContext) -> None:
    remember(ctx)
    raise NonRetryable("card declined")


BOOKING = Saga("booking", input=BookingInput, steps=[
    Step("book", remember, compensate=remember),
    Step("charge", decline, compensate=remember, retry=Retry(attempts=1)),
    Step("ship", remember),
])
REMOTE_UNDO = Saga("remote_undo", steps=[
    Step("book", remember, compensate=RemoteTask("hotel.cancel")),
    Step("charge", decline),
])


@pytest.fixture
def worker(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from saga import migrations

    template = tmp_path_factory.getbasetemp() / "context-log.db"
    if not template.exists():
        migrations.upgrade(f"sqlite:///{template}")
    shutil.copy(template, tmp_path / "saga.db")
    store = Store(f"sqlite:///{tmp_path / 'saga.db'}")
    registry = Registry([BOOKING, REMOTE_UNDO])
    dispatcher = RecordingDispatcher()
    engine = Engine(registry, store, dispatcher, lease_s=30)
    SEEN.clear()

    def deliver() -> None:
        runner = Worker(engine, registry, dispatcher, inline_steps=50)
        while sent := dispatcher.take():
            for hint in sent:
                runner.run_step(hint.run_id, hint.command.step, hint.command.role, hint.saga,
                                hint.version, worker="w")

    yield engine, dispatcher, deliver
    store.close()


def test_a_compensation_sees_what_its_forward_step_did(worker) -> None:
    """Given a booking that succeeded and a charge that failed for good,
    When the run compensates,
    Then the booking's compensation sees the booking's output and no error, the charge's
    sees no output and the charge's error, each its own forward key, and every step the
    input as the schema loads it (the default filled in)."""
    engine, _, deliver = worker
    run_id, _ = engine.start("booking", {"guest": "ada", "arrives": "2025-03-01"})
    deliver()
    assert engine.store.get_run(run_id)["status"] == "compensated"
    assert SEEN["book:compensate"]["output"] == {"step": "book"}
    assert SEEN["book:compensate"]["forward_error"] is None
    assert SEEN["book:compensate"]["forward_key"] == f"{run_id}:book:forward"
    assert SEEN["charge:compensate"]["output"] is None
    assert SEEN["charge:compensate"]["forward_error"] == "NonRetryable: card declined"
    assert SEEN["charge:compensate"]["forward_key"] == f"{run_id}:charge:forward"
    assert SEEN["book:forward"]["output"] is None and SEEN["book:forward"]["forward_error"] is None
    for seen in SEEN.values():
        assert seen["input"] == {"guest": "ada", "nights": 1, "arrives": dt.date(2025, 3, 1)}
        assert seen["raw_input"] == {"guest": "ada", "arrives": "2025-03-01"}
    assert engine.store.get_run(run_id)["input"] == {"guest": "ada", "arrives": "2025-03-01"}


def test_a_remote_compensation_gets_the_forward_outcome_in_its_payload(worker) -> None:
    engine, dispatcher, deliver = worker
    payloads: list[dict[str, Any]] = []
    dispatcher.remote["hotel.cancel"] = lambda payload: payloads.append(payload) or {}
    run_id, _ = engine.start("remote_undo", {"guest": "ada"})
    deliver()
    [payload] = payloads
    assert payload["role"] == "compensate"
    assert payload["output"] == {"step": "book"} and payload["forward_error"] is None
    assert payload["forward_key"] == f"{run_id}:book:forward"
    assert payload["idempotency_key"] == f"{run_id}:book:compensate"
    assert payload["input"] == {"guest": "ada"}
