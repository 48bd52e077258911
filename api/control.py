"""Steering runs from outside: deliver a signal, cancel a run."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields

from saga.api.auth import actor, requires
from saga.api.parsing import Blueprint, storable
from saga.api.problems import PROBLEM, Problem, flatten
from saga.api.runs import _checked
from saga.api.schemas import IdempotencySchema, RunSchema
from saga.api.system import current
from saga.errors import InvalidInput

blp = Blueprint("control", __name__, description="Send signals to runs and cancel them")


class SignalSchema(ma.Schema):
    payload = fields.Dict(load_default=dict, validate=storable, metadata={
        "description": "becomes the waiting step's output; validated by its schema if it has one"})


class SignalReceiptSchema(ma.Schema):
    signal_id = fields.Integer()
    duplicate = fields.Boolean(metadata={"description": "true: this Idempotency-Key was seen"})
    run = fields.Nested(RunSchema)


@blp.post("/runs/<run_id>/signals/<name>")
@requires("operate", limited=True)
@blp.arguments(IdempotencySchema, location="headers", error_status_code=400)
@blp.arguments(SignalSchema)
@blp.response(202, SignalReceiptSchema, description="Recorded; consumed now or when the run "
                                                     "reaches its wait")
@blp.alt_response(200, schema=SignalReceiptSchema,
                  description="The same Idempotency-Key was already delivered")
@blp.alt_response(404, description="No such run, or its saga declares no such signal", **PROBLEM)
@blp.alt_response(409, description="The run is finished (or parked)", **PROBLEM)
@blp.alt_response(422, description="The payload fails the waiting step's schema", **PROBLEM)
def send_signal(headers: dict[str, Any], body: dict[str, Any], run_id: str, name: str):
    """Send a signal to a run

    A signal sent before the run reaches its wait is kept and consumed there; with an
    `Idempotency-Key`, the same signal sent twice is applied once.
    """
    engine = current().engine
    try:
        signal_id, new = engine.signal(_checked(run_id), name, body["payload"],
                                       headers.get("idempotency_key"), actor=actor())
    except InvalidInput as exc:
        raise Problem(422, f"The payload does not match the schema of signal {name!r}.",
                      "invalid-input", flatten(exc.errors, "payload")) from exc
    return ({"signal_id": signal_id, "duplicate": not new, "run": current().store.get_run(run_id)},
            202 if new else 200)


@blp.post("/runs/<run_id>/cancel")
@requires("admin")
@blp.response(202, RunSchema, description="Cancelling: running steps settle, then what was "
                                          "done is compensated; the run ends `cancelled`")
@blp.alt_response(404, description="No run has this id", **PROBLEM)
@blp.alt_response(409, description="The run is finished or already compensating", **PROBLEM)
def cancel_run(run_id: str):
    """Cancel a run"""
    engine = current().engine
    engine.cancel(_checked(run_id), actor=actor())
    return current().store.get_run(run_id)
