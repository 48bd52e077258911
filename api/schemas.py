"""The marshmallow schemas that validate requests and document and serialize responses."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from api.parsing import printable, storable
from saga.status import Kind, RunStatus, StepStatus

MAX_PAGE = 200


class StartSchema(ma.Schema):
    input = fields.Dict(required=True, validate=storable,
                        metadata={"description": "the run's input, checked by the saga's schema"})
    version = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1),
                             metadata={"description": "a loaded version; default the newest"})


class IdempotencySchema(ma.Schema):
    idempotency_key = fields.String(
        data_key="Idempotency-Key", validate=[validate.Length(min=1, max=255), printable],
        metadata={"description": "repeat a start safely: the same key and body return the "
                                 "first run (200); the same key with another body is a 422"})


class RunQuerySchema(ma.Schema):
    saga = fields.String(validate=[validate.Length(max=200), printable])
    status = fields.String(validate=validate.OneOf([s.value for s in RunStatus]))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_PAGE))
    cursor = fields.String(validate=[validate.Length(max=500), printable],
                           metadata={"description": "next_cursor of the previous page"})


class StepSchema(ma.Schema):
    name = fields.String()
    status = fields.String(validate=validate.OneOf([s.value for s in StepStatus]))
    attempts = fields.Integer()
    queued_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    worker = fields.String(allow_none=True)
    output = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)


class RunSummarySchema(ma.Schema):
    id = fields.String()
    saga = fields.String()
    version = fields.Integer()
    status = fields.String(validate=validate.OneOf([s.value for s in RunStatus]))
    input = fields.Raw()
    error = fields.String(allow_none=True)
    idempotency_key = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)
    deadline_at = fields.DateTime(allow_none=True,
                                  metadata={"description": "past this, the run fails and compensates"})


class RunSchema(RunSummarySchema):
    steps = fields.List(fields.Nested(StepSchema))
    compensations = fields.List(fields.Nested(StepSchema))


class RunPageSchema(ma.Schema):
    runs = fields.List(fields.Nested(RunSummarySchema))
    next_cursor = fields.String(allow_none=True)


class EventSchema(ma.Schema):
    id = fields.Integer()
    at = fields.DateTime()
    type = fields.String(metadata={"description": "e.g. run.started, step.succeeded"})
    step = fields.String(allow_none=True)
    kind = fields.String(allow_none=True, validate=validate.OneOf([k.value for k in Kind]))
    attempt = fields.Integer(allow_none=True)
    worker = fields.String(allow_none=True)
    data = fields.Raw()


class EventListSchema(ma.Schema):
    events = fields.List(fields.Nested(EventSchema))


class StepDefinitionSchema(ma.Schema):
    name = fields.String()
    after = fields.List(fields.String())
    action = fields.String(allow_none=True)
    compensate = fields.String(allow_none=True)
    retry_attempts = fields.Integer()
    timeout_s = fields.Float(allow_none=True)


class SagaVersionSchema(ma.Schema):
    name = fields.String()
    version = fields.Integer()
    steps = fields.List(fields.Nested(StepDefinitionSchema))
    runs_in_flight = fields.Integer()


class SagaSchema(ma.Schema):
    name = fields.String()
    latest = fields.Integer()
    versions = fields.List(fields.Nested(SagaVersionSchema))


class SagaListSchema(ma.Schema):
    sagas = fields.List(fields.Nested(SagaSchema))


class HealthSchema(ma.Schema):
    database = fields.String(metadata={"example": "ok"})
    broker = fields.String(metadata={"example": "ok"})
