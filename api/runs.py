"""Runs: start one, read one with its steps, list them, and read one's history."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import flask

from saga.api import publisher
from saga.api.auth import actor, requires
from saga.api.parsing import Blueprint
from saga.api.problems import PROBLEM, Problem, flatten
from saga.api.schemas import (
    EventListSchema,
    EventQuerySchema,
    IdempotencySchema,
    RunPageSchema,
    RunQuerySchema,
    RunSchema,
    StartSchema,
)
from saga.api.system import current
from saga.errors import InvalidInput, RunNotFound
from saga.run import Role, Run
from saga.store.rows import run_view, step_view

blp = Blueprint("runs", __name__, description="Start, inspect and list saga runs")

CURSOR_ERROR = "not a cursor this API returned"
FILTERS = ("version", "started_after", "started_before", "finished_after", "finished_before",
           "step", "step_status", "error")


@blp.post("/sagas/<name>/runs")
@requires("operate", limited=True)
# Instances, not classes: webargs would make a schema (deep-copying its fields) per request.
@blp.arguments(IdempotencySchema(), location="headers", error_status_code=400)
@blp.arguments(StartSchema())
@blp.response(201, RunSchema, description="The run started",
              headers={"Location": {"description": "the run's URL",
                                    "schema": {"type": "string"}}})
@blp.alt_response(200, schema=RunSchema,
                  description="An earlier request with this Idempotency-Key and body started it")
@blp.alt_response(404, description="No saga of this name (or version) is loaded", **PROBLEM)
@blp.alt_response(422, description="The input fails the saga's schema, or the "
                                    "Idempotency-Key was used with another body", **PROBLEM)
def start_run(headers: dict[str, Any], body: dict[str, Any], name: str):
    """Start a run of a saga

    Validates everything before writing anything, so an error leaves no trace.
    """
    engine = current().engine
    key = headers.get("idempotency_key")
    try:
        run_id, started = engine.start_run(
            name, body["input"], key, body.get("version"), actor=actor(),
            after_commit=flask.current_app.extensions[publisher.KEY])
    except InvalidInput as exc:
        errors = flatten(exc.errors, "input")
        raise Problem(422, f"The input does not match the schema of saga {name!r}.", "invalid-input",
                      errors) from exc
    location = {"Location": f"/v1/runs/{run_id}"}
    if started is None:  # an earlier request with this key started it: as stored now
        return current().store.get_run(run_id), 200, location
    # The run as this request committed it: reading it back would cost a connection and
    # two queries per start for what the process holds already.
    return started_view(started, key), 201, location


def started_view(run: Run, idempotency_key: str | None) -> dict[str, Any]:
    """A run just inserted, as `Store.get_run` would read it (its rows hold these values)."""
    view = run_view({"id": run.id, "saga": run.saga, "version": run.version,
                     "status": str(run.status), "input": run.input, "error": run.error,
                     "idempotency_key": idempotency_key, "created_at": run.created_at,
                     "updated_at": run.created_at, "finished_at": run.finished_at,
                     "deadline_at": run.deadline_at, "parked": run.parked,
                     "cancel_requested": run.cancel_requested})
    # get_run's order: ORDER BY queued_at, name (PostgreSQL puts NULLs last)
    ordered = sorted(run.steps.values(), key=lambda s: (
        s.queued_at is None, s.queued_at or run.created_at, s.name))
    views = [(s.role, step_view({
        "name": s.name, "status": str(s.status), "attempt": s.attempt, "queued_at": s.queued_at,
        "started_at": s.started_at, "finished_at": s.finished_at,
        "next_attempt_at": s.next_attempt_at, "wake_at": s.wake_at, "lease_owner": s.lease_owner,
        "output": s.output, "error": s.error, "in_doubt": s.in_doubt,
        "checked": str(s.checked) if s.checked else None})) for s in ordered]
    view["steps"] = [v for role, v in views if role is Role.FORWARD]
    view["compensations"] = [v for role, v in views if role is Role.COMPENSATE]
    return view


@blp.get("/runs/<run_id>")
@requires("read")
@blp.response(200, RunSchema)
@blp.alt_response(404, description="No run has this id", **PROBLEM)
def get_run(run_id: str):
    """One run with its steps and compensations"""
    return current().store.get_run(_checked(run_id))


@blp.get("/runs")
@requires("read")
@blp.arguments(RunQuerySchema, location="query")
@blp.response(200, RunPageSchema)
@blp.alt_response(422, description="A filter's value is invalid; `errors` names it", **PROBLEM)
def list_runs(query: dict[str, Any]):
    """Runs, newest first, one page at a time, filtered

    Every filter narrows the list: `saga`, `version`, `status`; `started_after` /
    `started_before` (the run's `created_at`) and `finished_after` / `finished_before`,
    each range half-open (after ≤ t < before); `step` (runs with a step of that name,
    with `step_status` if given); `error` (text in the run's or any step's error,
    ignoring case). Pass `next_cursor` back as `cursor`, with the same filters, for the
    next page; it is null on the last page.
    """
    filters = {name: query[name] for name in FILTERS if name in query}
    try:
        page, cursor = current().store.list_runs(
            query.get("saga"), query.get("status"), query["limit"], _cursor(query.get("cursor")),
            **filters)
    except ValueError as exc:  # the store refuses a cursor it did not make
        raise Problem(422, str(exc), errors={"cursor": [CURSOR_ERROR]}) from exc
    return {"runs": page, "next_cursor": cursor}


@blp.post("/runs/<run_id>/retry")
@requires("admin")
@blp.response(200, RunSchema, description="The run resumed")
@blp.alt_response(404, description="No run has this id", **PROBLEM)
@blp.alt_response(409, description="The run is not failed, or has nothing to resume", **PROBLEM)
def retry_run(run_id: str):
    """Resume a failed run from where it stopped

    A run that ended `failed` (a compensation gave up) or is parked (a step timed out
    under `on_timeout="park"`) gets a fresh attempt budget for that compensation or step,
    once its cause is fixed.
    """
    current().engine.retry(_checked(run_id), actor=actor())
    return current().store.get_run(run_id)


@blp.get("/runs/<run_id>/events")
@requires("read")
@blp.arguments(EventQuerySchema, location="query")
@blp.response(200, EventListSchema)
@blp.alt_response(404, description="No run has this id", **PROBLEM)
def run_events(query: dict[str, Any], run_id: str):
    """A run's history, oldest first

    `step` keeps one step's events (its compensation's too); `type` keeps one event type
    (`step.failed`) or a family (`compensation.` or `compensation`).
    """
    return {"events": current().store.events(_checked(run_id), query.get("step"),
                                                   query.get("type"))}


def _cursor(cursor: str | None) -> str | None:
    # The store's cursor decoder lets through a NUL (PostgreSQL then fails the query) and
    # a time Python cannot convert to UTC (OverflowError): both would be a 500, and a
    # cursor the store made holds neither.
    try:
        raw = base64.urlsafe_b64decode((cursor or "") + "=" * (-len(cursor or "") % 4))
    except ValueError:
        return cursor  # the store refuses it with its own message
    if b"\x00" in raw or not _utc_time(raw.partition(b"|")[0]):
        raise Problem(422, f"cursor {cursor!r} is not one this API returned",
                      errors={"cursor": [CURSOR_ERROR]})
    return cursor


def _utc_time(text: bytes) -> bool:
    """False only for a time that parses but has no UTC equivalent Python can hold."""
    try:
        datetime.fromisoformat(text.decode()).astimezone(UTC)
    except (ValueError, UnicodeDecodeError):
        return True  # not a time at all: the store refuses it with its own message
    except OverflowError:
        return False
    return True


def _checked(run_id: str) -> str:
    # PostgreSQL refuses NUL in text; such an id can name no run, so it is a 404, not a 500.
    if "\x00" in run_id:
        raise RunNotFound(f"no run has id {run_id!r}")
    return run_id
