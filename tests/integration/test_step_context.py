"""A step's `ctx` across real processes: PostgreSQL, RabbitMQ and Redis, `saga api`, `worker`
and `sweeper`.

This module is also what those processes load (SAGA_SAGAS names it): the `ctx_trip` saga, and,
through `init_app`, a small hotel service on the API built with `saga.helpers.idempotent`.
Each step reports what it saw in its output, so the run itself is the record:

- `book` calls the hotel through `ctx.http` and loses the answer of its first attempt,
  so its second attempt repeats the call: the hotel must apply it once.
- `hold_room` either kills its own worker child after its effect (its attempt never
  returns; the lease runs out) or declines for good, as the input says. It has one
  attempt, so the run compensates either way.
- `undo` (both compensations) reports `ctx.output`, `ctx.forward_error` and
  `ctx.forward_key`, and cancels whatever the hotel did under that key.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import flask
import sqlalchemy as sa
from marshmallow import Schema, fields

from saga import NonRetryable, Retry, Saga, Step, StepContext
from saga.helpers.idempotent import IdempotentRequests, create_tables, idempotent
from saga.observe.ids import traceparent
from tests.stack import Stack

SAGAS = f"examples.fulfillment,{__name__}"


# -- the saga the worker runs --------------------------------------------------------------

class TripInput(Schema):
    traveller = fields.Str(required=True)
    departs = fields.Date(required=True)
    nights = fields.Int(load_default=2)
    then = fields.Str(load_default="die")  # what hold_room does: "die" or "decline"


def hotel(ctx: StepContext, path: str, body: dict[str, Any]) -> Any:
    response = ctx.http.post(f"{os.environ['SAGA_DEMO_SERVICES_URL']}/ctxtest/{path}", json=body)
    response.raise_for_status()
    return response


def book(ctx: StepContext) -> dict[str, Any]:
    echoed = hotel(ctx, "echo", {}).json()
    booked = hotel(ctx, "book", {"traveller": ctx.input["traveller"]})
    if ctx.attempt == 1:
        raise ConnectionError("the hotel's answer was lost")  # so attempt 2 calls again
    return {"booking": booked.json()["booking"], "replayed": "Idempotent-Replayed" in booked.headers,
            "headers": echoed, "fence": ctx.fence, "attempt": ctx.attempt,
            "nights": ctx.input["nights"], "departs": type(ctx.input["departs"]).__name__}


def hold_room(ctx: StepContext) -> dict[str, Any]:
    if ctx.input["then"] == "decline":
        raise NonRetryable("no rooms left")
    hotel(ctx, "book", {"traveller": ctx.input["traveller"], "room": True})
    os.kill(os.getpid(), signal.SIGKILL)  # mid-way: the effect is done, no answer ever comes
    raise AssertionError("unreachable")


def undo(ctx: StepContext) -> dict[str, Any]:
    cancelled = hotel(ctx, "cancel", {"key": ctx.forward_key}).json()["cancelled"]
    return {"output": ctx.output, "forward_error": ctx.forward_error,
            "forward_key": ctx.forward_key, "cancelled": cancelled, "nights": ctx.input["nights"]}


QUICK = Retry(attempts=3, first_delay=timedelta(milliseconds=50), max_delay=timedelta(seconds=1))

ctx_trip = Saga("ctx_trip", input=TripInput, steps=[
    Step("book", book, compensate=undo, retry=QUICK, compensate_retry=QUICK),
    Step("hold_room", hold_room, compensate=undo, retry=Retry(attempts=1),
         compensate_retry=QUICK, heartbeat_timeout=timedelta(seconds=1)),
])


# -- the hotel, mounted on the API ---------------------------------------------------------

bookings = sa.Table(
    "ctxtest_bookings", sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("fence", sa.String(20), nullable=False),
    sa.Column("cancelled", sa.Boolean, nullable=False, default=False),
)


def init_app(app: flask.Flask, system: Any) -> None:
    engine = system.store.engine
    create_tables(engine)
    bookings.metadata.create_all(engine)
    requests = IdempotentRequests(engine)
    bp = flask.Blueprint("ctxtest", __name__, url_prefix="/ctxtest")

    @bp.post("/echo")
    def echo() -> dict[str, Any]:
        return {name: flask.request.headers.get(name)
                for name in ("Idempotency-Key", "Saga-Fence", "traceparent")}

    @bp.post("/book")
    @idempotent(requests, "ctxtest.book")
    def book(db: sa.Connection) -> tuple[dict[str, Any], int]:
        headers = flask.request.headers
        booking = db.execute(bookings.insert().values(
            key=headers["Idempotency-Key"], fence=headers["Saga-Fence"])).inserted_primary_key
        return {"booking": booking[0]}, 200

    @bp.post("/cancel")
    @idempotent(requests, "ctxtest.cancel")
    def cancel(db: sa.Connection) -> tuple[dict[str, Any], int]:
        key = flask.request.get_json()["key"]
        done = db.execute(bookings.update().where(bookings.c.key == key, ~bookings.c.cancelled)
                          .values(cancelled=True)).rowcount
        return {"cancelled": done}, 200

    app.register_blueprint(bp)


# -- the test ------------------------------------------------------------------------------

def test_steps_see_their_input_keys_and_what_the_forward_step_did(
        database_url: str, broker_url: str, tmp_path: Any) -> None:
    """Given the ctx_trip saga on a real stack, and two trips: one whose hold_room kills its
    worker child after its effect, one whose hold_room declines for good,
    When both run,
    Then `book` saw the input with the schema's default and a date, called the hotel with
    its key, fence and traceparent, and the call its second attempt repeated was applied
    once; both trips compensate, each compensation seeing its forward step's output (None
    when the step never returned), the forward error (None when it succeeded at last) and
    the forward key, under which it cancels what the killed attempt did."""
    with Stack(database_url, broker_url, tmp_path, sagas=SAGAS) as stack:
        stack.sweeper()  # fires the retries and expires the killed attempt's lease
        with ThreadPoolExecutor(1) as pool:  # the API starts while the worker does
            api = pool.submit(stack.api)
            stack.worker()
            api.result()
        inputs = {"died": {"traveller": "ada", "departs": "2025-03-01"},
                  "declined": {"traveller": "bob", "departs": "2025-03-02", "then": "decline"}}
        ids = {case: stack.post_run("ctx_trip", given) for case, given in inputs.items()}
        runs = {case: stack.wait_terminal(run_id, 30) for case, run_id in ids.items()}
        rows = stack.query("SELECT key, fence, cancelled FROM ctxtest_bookings")

    for case, run in runs.items():
        run_id = ids[case]
        assert run["status"] == "compensated", run
        assert run["input"] == inputs[case]  # the log keeps the input as sent: no defaults
        booked = next(s for s in run["steps"] if s["name"] == "book")["output"]
        undone = {c["name"]: c["output"] for c in run["compensations"]}
        assert (booked["attempt"], booked["fence"], booked["replayed"]) == (2, 2, True)
        assert (booked["nights"], booked["departs"]) == (2, "date")
        assert booked["headers"] == {
            "Idempotency-Key": f"{run_id}:book:forward", "Saga-Fence": "2",
            "traceparent": traceparent(run_id, "book", "forward", 2)}
        assert undone["book"] == {"output": booked, "forward_error": None, "nights": 2,
                                  "forward_key": f"{run_id}:book:forward", "cancelled": 1}
        assert undone["hold_room"]["output"] is None
        assert undone["hold_room"]["forward_key"] == f"{run_id}:hold_room:forward"

    died, declined = ({c["name"]: c["output"] for c in runs[case]["compensations"]}["hold_room"]
                      for case in ("died", "declined"))
    assert "no heartbeat within the lease" in died["forward_error"], died
    assert died["cancelled"] == 1  # what the killed attempt did, found by its key
    assert declined["forward_error"] == "NonRetryable: no rooms left"
    assert declined["cancelled"] == 0

    # One booking per step that reached the hotel, made by its first attempt: the call that
    # book's second attempt repeated was applied once. Every one was cancelled by key.
    assert sorted(tuple(row) for row in rows) == sorted([
        (f"{ids['died']}:book:forward", "1", True),
        (f"{ids['died']}:hold_room:forward", "1", True),
        (f"{ids['declined']}:book:forward", "1", True)])
