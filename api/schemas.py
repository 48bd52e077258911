"""The marshmallow schemas that validate requests and document and serialize responses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from saga.api.parsing import printable, storable
from saga.run import Role, RunStatus, StepStatus

MAX_PAGE = 200
MAX_VERSION = 2**31 - 1  # runs.version is a PostgreSQL integer


class StartSchema(ma.Schema):
    input = fields.Dict(required=True, validate=storable,
                        metadata={"description": "the run's input, checked by the saga's schema"})
    version = fields.Integer(strict=True, allow_none=True,
                             validate=validate.Range(min=1, max=MAX_VERSION),
                             metadata={"description": "a loaded version; default the newest"})


class IdempotencySchema(ma.Schema):
    idempotency_key = fields.String(
        data_key="Idempotency-Key", validate=[validate.Length(min=1, max=255), printable],
        metadata={"description": "repeat a start safely: the same key and body return the "
                                 "first run (200); the same key with another body is a 422"})


def in_utc_range(moment: datetime) -> None:
    """Python cannot hold 9999-12-31T23:59-01:00 in UTC, where the saga log compares it."""
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ma.ValidationError("is out of range: it must fall between years 1 and 9999 "
                                 "in UTC") from None


def _moment(description: str) -> fields.AwareDateTime:
    return fields.AwareDateTime(default_timezone=UTC, validate=in_utc_range, metadata={
        "description": f"{description}; ISO 8601, UTC unless it carries an offset"})


class RunQuerySchema(ma.Schema):
    """Filters of the runs listing; they combine, and time ranges are half-open."""

    saga = fields.String(validate=[validate.Length(max=200), printable])
    version = fields.Integer(validate=validate.Range(min=1, max=MAX_VERSION),
                             metadata={"description": "the pinned version; needs `saga`"})
    status = fields.String(validate=validate.OneOf([s.value for s in RunStatus]))
    started_after = _moment("runs created at or after this")
    started_before = _moment("runs created before this")
    finished_after = _moment("runs finished at or after this")
    finished_before = _moment("runs finished before this")
    step = fields.String(validate=[validate.Length(min=1, max=200), printable],
                         metadata={"description": "runs with a (forward) step of this name"})
    step_status = fields.String(validate=validate.OneOf([s.value for s in StepStatus]),
                                metadata={"description": "with `step`: where it has this status"})
    error = fields.String(validate=[validate.Length(min=1, max=200), printable], metadata={
        "description": "runs whose error, or one of whose steps' errors, contains this text "
                       "(ignoring case)"})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_PAGE))
    cursor = fields.String(validate=[validate.Length(max=500), printable],
                           metadata={"description": "next_cursor of the previous page"})

    @ma.validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        if "version" in data and "saga" not in data:
            raise ma.ValidationError("needs saga: versions are numbered per saga", "version")
        if "step_status" in data and "step" not in data:
            raise ma.ValidationError("needs step", "step_status")
        for start, end in (("started_after", "started_before"),
                           ("finished_after", "finished_before")):
            if start in data and end in data and data[end] < data[start]:
                raise ma.ValidationError(f"is before {start}", end)


class EventQuerySchema(ma.Schema):
    step = fields.String(validate=[validate.Length(min=1, max=200), printable],
                         metadata={"description": "only this step's (and its compensation's) events"})
    type = fields.String(validate=[validate.Length(min=1, max=60), printable], metadata={
        "description": "an event type (`step.failed`) or a family of them (`compensation.`)"})


class StepSchema(ma.Schema):
    name = fields.String()
    status = fields.String(validate=validate.OneOf([s.value for s in StepStatus]))
    attempts = fields.Integer()
    queued_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    wake_at = fields.DateTime(allow_none=True, metadata={
        "description": "a waiting timer fires, or a signal wait times out, at this time"})
    worker = fields.String(allow_none=True)
    output = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    in_doubt = fields.Boolean(metadata={
        "description": "an attempt ended with its outcome unknown (lease ran out, timed out) "
                       "and nothing has said since whether it took effect"})
    checked = fields.String(allow_none=True, metadata={
        "description": "the step's verify check answer for this attempt: done, not_done "
                       "or unknown"})


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
    parked = fields.String(allow_none=True, metadata={
        "description": "why no worker can go on with the run (its version is not loaded)"})
    cancel_requested = fields.Boolean()


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
    role = fields.String(allow_none=True, validate=validate.OneOf([r.value for r in Role]),
                         metadata={"description": "forward, or compensate for a compensation"})
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
    pivot = fields.Boolean(metadata={"description": "the saga's point of no return: once it "
                                     "succeeds, later steps are never compensated"})
    verify = fields.String(allow_none=True, metadata={
        "description": "the check asked first when an attempt's outcome is unknown"})
    compensate_failed = fields.Boolean(metadata={
        "description": "whether a step whose forward attempts all failed is compensated"})


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
