"""Schedules and backfills of scheduled or event-driven sagas."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask
import marshmallow as ma
from marshmallow import fields, validate

from saga.api.auth import actor, requires
from saga.api.parsing import Blueprint, storable
from saga.api.problems import PROBLEM, Problem
from saga.api.system import current
from saga.errors import InvalidBackfill, UnknownSaga
from saga.run import RunStatus
from saga.schedules.backfill import (
    DEFAULT_MAX_RUNNING,
    MAX_ITEMS,
    MAX_RUNNING,
    BackfillPlan,
    Difference,
)

blp = Blueprint("schedules", __name__, description="Schedules and backfills")


class BackfillRequestSchema(ma.Schema):
    start = fields.String(data_key="from", validate=validate.Length(max=64), metadata={
        "description": "first logical time, ISO 8601; without an offset, in the schedule's "
                      "time zone"})
    end = fields.String(data_key="to", validate=validate.Length(max=64),
                        metadata={"description": "last logical time, included"})
    inputs = fields.List(fields.Raw(allow_none=True),
                         validate=[validate.Length(min=1, max=MAX_ITEMS), storable], metadata={
        "description": "for a saga without a schedule: one run each, "
                      "{\"key\": ..., \"input\": ...} or the input itself"})
    max_running = fields.Integer(strict=True, load_default=DEFAULT_MAX_RUNNING,
                                 validate=validate.Range(min=1, max=MAX_RUNNING))
    dry_run = fields.Boolean(load_default=False,
                             metadata={"description": "list the runs it would start; write nothing"})
    max_runs = fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_ITEMS), metadata={
        "description": "the most runs this backfill may start, or it is refused (400); needed "
                      "to start more than the server's cap (SAGA_BACKFILL_CAP, 1000 unless set)"})


class ItemCountsSchema(ma.Schema):
    total = fields.Integer()
    pending = fields.Integer(metadata={"description": "not started yet"})
    started = fields.Integer()
    running = fields.Integer(metadata={"description": "started, not finished"})
    finished = fields.Integer(metadata={"description": "their run ended, however it ended"})
    refused = fields.Integer(metadata={"description": "could not start (input or key refused)"})


class BackfillSchema(ma.Schema):
    id = fields.String()
    saga = fields.String()
    from_at = fields.DateTime(data_key="from", allow_none=True)
    to_at = fields.DateTime(data_key="to", allow_none=True)
    max_running = fields.Integer()
    existing = fields.Integer(metadata={"description": "asked for, but their run existed"})
    created_at = fields.DateTime()
    items = fields.Nested(ItemCountsSchema)
    done = fields.Boolean(metadata={"description": "every item started and finished"})


class PlannedRunSchema(ma.Schema):
    idempotency_key = fields.String()
    input = fields.Raw()


class EarlierRunSchema(ma.Schema):
    id = fields.String()
    status = fields.String(validate=validate.OneOf([s.value for s in RunStatus]))
    input = fields.Raw(metadata={"description": "the input it ran with"})
    error = fields.String(allow_none=True)


class SkippedRunSchema(PlannedRunSchema):
    difference = fields.String(validate=validate.OneOf([d.value for d in Difference]), metadata={
        "description": "how its run differs from what the backfill asks: input_changed (it "
                       "ran with another input), running (not finished), failed (ended "
                       "failed, compensated or cancelled), unchanged (succeeded with this input)"})
    run = fields.Nested(EarlierRunSchema, metadata={"description": "the run its key started"})


class DryRunSchema(ma.Schema):
    saga = fields.String()
    dry_run = fields.Boolean()
    would_start = fields.List(fields.Nested(PlannedRunSchema),
                              metadata={"description": "the runs it would start, in order"})
    existing = fields.Integer(metadata={"description": "windows whose key already started a run"})
    already_ran = fields.List(fields.Nested(SkippedRunSchema), metadata={
        "description": "those windows, in order: skipped by their key, and how they differ"})
    differences = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "how many of them differ in each way (zeros left out)",
        "example": {"failed": 1, "unchanged": 2}})


class ScheduleStateSchema(ma.Schema):
    saga = fields.String()
    cron = fields.String()
    timezone = fields.String()
    catch_up = fields.String()
    next_fire_at = fields.DateTime(allow_none=True, metadata={
        "description": "null while paused, or before a sweeper first saw the schedule"})
    last_fire_at = fields.DateTime(allow_none=True)
    paused = fields.Boolean(metadata={"description": "true: it starts no runs until resumed"})
    paused_at = fields.DateTime(allow_none=True)
    paused_by = fields.String(allow_none=True,
                              metadata={"description": "the token's name, or cli:<user>"})


class ScheduleListSchema(ma.Schema):
    schedules = fields.List(fields.Nested(ScheduleStateSchema))


def _within_cap(count: int, max_runs: int | None) -> None:
    """One request may start at most SAGA_BACKFILL_CAP runs, unless it says it means more."""
    cap = current().settings.backfill_cap
    if max_runs is not None and count > max_runs:
        raise Problem(400, f"This backfill would start {count} runs, more than its max_runs "
                      f"of {max_runs}; nothing was written.", "backfill-over-cap",
                      {"max_runs": [f"the backfill would start {count} runs"]})
    if max_runs is None and count > cap:
        raise Problem(400, f"This backfill would start {count} runs, more than the cap of {cap} "
                      f"(SAGA_BACKFILL_CAP); to mean it, send \"max_runs\": {count}. Nothing "
                      "was written.", "backfill-over-cap",
                      {"max_runs": [f"required to start more than {cap} runs"]})


@blp.post("/sagas/<name>/backfills")
@requires("admin", limited=True)
@blp.arguments(BackfillRequestSchema)
@blp.response(201, BackfillSchema, description="Stored; its first runs started",
              headers={"Location": {"description": "the backfill's URL",
                                    "schema": {"type": "string"}}})
@blp.alt_response(200, schema=DryRunSchema, description="A dry run: the runs it would start, and how "
                                                  "the windows that already ran differ")
@blp.alt_response(404, description="No saga of this name is loaded", **PROBLEM)
@blp.alt_response(422, description="A bad range or input; nothing was written", **PROBLEM)
@blp.alt_response(400, description="The body is not JSON, or the backfill would start more runs "
                                    "than the cap or its `max_runs`; nothing was written", **PROBLEM)
def create_backfill(body: dict[str, Any], name: str):
    """Start the missing runs of a past range of a schedule, or of a list of inputs

    Give `from` and `to` for a scheduled saga, or `inputs` for any saga. Runs that
    exist already (same logical time or key) are skipped, so repeating a backfill
    starts nothing twice. At most `max_running` of its runs are unfinished at once; the
    sweeper starts the rest as they finish. One backfill starts at most the server's cap
    of runs (SAGA_BACKFILL_CAP) unless `max_runs` says it means more. A dry run writes
    nothing and lists the runs it would start (`would_start`) and, for each window whose
    key already started a run, that run and how it differs (`already_ran`).
    """
    system = current()
    inputs = body.get("inputs")
    try:
        plan = system.scheduler.plan_backfill(
            name, start=body.get("start"), end=body.get("end"),
            inputs=None if inputs is None else [(f"inputs[{i}]", v) for i, v in enumerate(inputs)],
            max_running=body["max_running"])
    except InvalidBackfill as exc:
        raise Problem(422, str(exc), "invalid-backfill", exc.errors) from exc
    if body["dry_run"]:
        return flask.jsonify(DryRunSchema().dump(_dry_run(plan)))
    _within_cap(len(plan.items), body.get("max_runs"))
    backfill_id = system.scheduler.start_backfill(plan, created_by=actor())
    return (system.store.get_backfill(backfill_id), 201,
            {"Location": f"/v1/backfills/{backfill_id}"})


def _dry_run(plan: BackfillPlan) -> dict[str, Any]:
    return {
        "saga": plan.saga, "dry_run": True, "existing": plan.existing,
        "would_start": [{"idempotency_key": k, "input": v} for k, v in plan.items],
        "already_ran": [{"idempotency_key": w.key, "input": w.input,
                         "difference": w.difference, "run": w.earlier} for w in plan.ran],
        "differences": {str(d): n for d, n in plan.counts().items()}}


@blp.get("/backfills/<backfill_id>")
@requires("read")
@blp.response(200, BackfillSchema)
@blp.alt_response(404, description="No backfill has this id", **PROBLEM)
def get_backfill(backfill_id: str):
    """A backfill's progress: items total, started, running, finished"""
    found = None if "\x00" in backfill_id else current().store.get_backfill(backfill_id)
    if found is None:
        raise Problem(404, f"no backfill has id {backfill_id!r}", "backfill-not-found")
    return found


@blp.get("/schedules")
@requires("read")
@blp.response(200, ScheduleListSchema)
def list_schedules():
    """The loaded schedules with their next and last firing"""
    return {"schedules": current().scheduler.states()}


@blp.post("/schedules/<saga>/pause")
@requires("admin")
@blp.response(200, ScheduleStateSchema, description="Paused (or paused already: unchanged)")
@blp.alt_response(404, description="No saga of this name is loaded, or it has no schedule",
                  **PROBLEM)
def pause_schedule(saga: str):
    """Pause a schedule: it starts no runs until resumed

    Idempotent: pausing a paused schedule changes nothing (`paused_at` and `paused_by`
    stay those of the first pause). Runs already started go on; a firing a sweeper is
    starting at this very moment may still start.
    """
    scheduler = current().scheduler
    _on_schedule(lambda: scheduler.pause(saga, by=actor()))
    return scheduler.state(saga)


@blp.post("/schedules/<saga>/resume")
@requires("admin")
@blp.response(200, ScheduleStateSchema, description="Resumed (or not paused: unchanged)")
@blp.alt_response(404, description="No saga of this name is loaded, or it has no schedule",
                  **PROBLEM)
def resume_schedule(saga: str):
    """Resume a paused schedule from now

    Its next firing is the first after now: the firings due while it was paused are not
    started, whatever its `catch_up` (backfill the paused range to start them).
    Idempotent: resuming a schedule that is not paused changes nothing.
    """
    scheduler = current().scheduler
    _on_schedule(lambda: scheduler.resume(saga, by=actor()))
    return scheduler.state(saga)


def _on_schedule(change: Callable[[], bool]) -> None:
    try:
        change()
    except UnknownSaga as exc:
        raise Problem(404, str(exc), "schedule-not-found") from exc

