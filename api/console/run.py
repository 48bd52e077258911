"""The Run page: one run's timeline, graph, input, steps and history, and what may be done to it.

    GET  /ui/runs/<id>                    the page (read)
    GET  /ui/runs/<id>/live?seen=…        its live parts, while the run is not over (read)
    GET  /ui/runs/<id>/retry|cancel       a confirmation page (the no-script way to confirm)
    POST /ui/runs/<id>/retry|cancel       admin, as POST /v1/runs/<id>/retry|cancel
    GET  /ui/runs/<id>/signal?name=…      the signal's form
    POST /ui/runs/<id>/signal             operate, as POST /v1/runs/<id>/signals/<name>:
                                          first a review of the payload, then (confirmed) sent

Actions call the engine exactly as the API does (`engine.retry/cancel/signal` with the
token's name as actor), behind the same scopes; a button the token's scope does not allow
is not offered, and its POST is refused (403) anyway. What the engine refuses is shown on
the page, naming why; what it did is in the history the page redirects back to.

While the run is not over the page refreshes itself: htmx asks `live` every 2 s with the
version of the run it shows (`seen`); the answer is 204 while nothing changed, else the
head, actions and body again, swapped in out of band (run.js keeps open details, scroll
places and a dialog or a half-filled form as they were).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import flask
import marshmallow as ma
from marshmallow import fields, validate

from saga import state
from saga.api.auth import actor
from saga.api.console.blueprint import console
from saga.api.console.graph import graph_svg
from saga.api.console.masking import masked
from saga.api.console.session import can, rate_limited, signed_in
from saga.api.parsing import storable
from saga.api.runs import _checked
from saga.api.system import current
from saga.definitions import Saga, Signal
from saga.errors import (
    InvalidInput,
    RunNotFound,
    RunStateConflict,
    SagaError,
    UnknownSaga,
    UnknownSignal,
)
from saga.run import RunStatus, StepStatus
from saga.timeline import duration
from saga.timeline_bars import Timeline, layout

__all__ = ["FormField", "SignalForm", "signal_form", "read_payload"]

# The timeline's drawing, in SVG user units (the picture scales to the page's width).
LABEL_W, PLOT_W, RIGHT, ROW_H, TOP, MIN_BAR = 180, 760, 24, 22, 34, 2.0
ACTIONS = {"retry": "admin", "cancel": "admin"}  # as POST /v1/runs/<id>/retry|cancel
SIGNAL_SCOPE = "operate"  # as POST /v1/runs/<id>/signals/<name>
STATUS_OF = {RunNotFound: 404, UnknownSignal: 404, InvalidInput: 422, RunStateConflict: 409}
EVENT_DETAIL = ("error", "reason", "message", "answer")
REFRESH_S = 2  # how often an open Run page asks whether the run changed


# -- the page -------------------------------------------------------------------------------

@console.get("/runs/<run_id>", endpoint="run")
@signed_in("read")
def run_page(run_id: str) -> Any:
    return _page(run_id)


def _page(run_id: str, *, error: str | None = None, status: int = 200,
          form: SignalForm | None = None) -> Any:
    try:
        run = current().store.get_run(_checked(run_id))
    except RunNotFound:
        return _not_found(run_id)
    return flask.render_template("console/run.html", error=error,
                                 **_shown(run, form=form)), status


@console.get("/runs/<run_id>/live", endpoint="run_live")
@signed_in("read")
def run_live(run_id: str) -> Any:
    """The page's live parts, out of band; 204 while the run is as the page saw it (`seen`)."""
    store = current().store
    try:
        run = store.get_run(_checked(run_id))
    except RunNotFound:
        return "", 286  # pruned while the page was open: htmx stops asking
    version = _version(run, store.last_event_id(run_id))
    if flask.request.args.get("seen") == version:
        return "", 204
    return flask.render_template("console/run_live.html",
                                 **_shown(run, version=version, oob=True))


def _shown(run: dict[str, Any], *, form: SignalForm | None = None, version: str | None = None,
           oob: bool = False) -> dict[str, Any]:
    """What the page's templates read of the run: its history laid out, its actions; `oob`:
    each live part marked to be swapped in out of band."""
    store = current().store
    events = store.events(run["id"])
    saga = _definition(run)
    signal_steps = {name: [s.name for s in saga.signal_steps(name)]
                    for name in _signal_names(saga)} if saga else None
    over = RunStatus(run["status"]).terminal
    timeline = layout(events, now=store.now(), signal_steps=signal_steps, finished=over)
    forms = _signal_forms(saga, run)
    if form is not None:  # the form sent, with its values and errors, in place of the blank
        forms = [form if f.name == form.name else f for f in forms]
    if version is None:
        version = _version(run, events[-1]["id"] if events else 0)
    return dict(
        run=run, saga=saga, events=events, input=masked(saga, run["input"]),
        timeline=timeline, drawing=_drawing(timeline),
        graph=graph_svg(saga, _graph_states(run)) if saga else None,
        actions=_actions(saga, run), signal_forms=forms, detail=_detail, clock=_clock,
        since=lambda at: _since(run["created_at"], at), as_json=_as_json, took=_took(run),
        live_url=None if over else flask.url_for("console.run_live", run_id=run["id"],
                                                 seen=version),
        refresh_s=REFRESH_S, oob=oob)


def _version(run: dict[str, Any], last_event: int) -> str:
    """The run as the page shows it, in a few characters: its newest event and a digest of
    its row and steps (a change without an event, such as a step's worker, shows too)."""
    digest = hashlib.blake2b(json.dumps(run, sort_keys=True, default=str).encode(),
                             digest_size=8).hexdigest()
    return f"{last_event}-{digest}"


def _not_found(run_id: str) -> Any:
    return flask.render_template("console/error.html", title="No such run", message=(
        f"No run has id {run_id!r}. It may have been pruned, or the id is mistyped.")), 404


def _definition(run: dict[str, Any]) -> Saga | None:
    """The definition the run started on, if this process has it loaded."""
    try:
        return current().registry.get(run["saga"], run["version"])
    except UnknownSaga:
        return None


def _signal_names(saga: Saga) -> list[str]:
    return sorted({s.wait.name for s in saga.by_name.values() if isinstance(s.wait, Signal)})


def _graph_states(run: dict[str, Any]) -> dict[str, str]:
    """Each step's state for the graph: its own status, or how its compensation stands."""
    states = {s["name"]: s["status"] for s in run["steps"]}
    for undo in run["compensations"]:
        status = StepStatus(undo["status"])
        states[undo["name"]] = ("compensated" if status is StepStatus.SUCCEEDED else
                                "compensating" if status.active else "compensation_failed")
    return states


@dataclass(frozen=True)
class Actions:
    """What the page offers the signed-in token, and why something is not offered."""

    retry: bool
    cancel: bool
    why_not_cancel: str | None = None


def _actions(saga: Saga | None, run: dict[str, Any]) -> Actions:
    status = RunStatus(run["status"])
    retry = (status is RunStatus.FAILED or bool(run["parked"])) and can(ACTIONS["retry"])
    cancel, why_not = False, None
    if status is RunStatus.RUNNING and not run["cancel_requested"] and can(ACTIONS["cancel"]):
        reached = (state.pivot_reached(saga, current().store.load_run(run["id"]))
                   if saga is not None and saga.pivot is not None else None)
        cancel, why_not = reached is None, reached and (
            f"Cancel is not offered: {reached}; past its pivot nothing may be undone.")
    return Actions(retry, cancel, why_not)


# -- the timeline's drawing -----------------------------------------------------------------

@dataclass(frozen=True)
class Drawn:
    """A bar's rectangles: the queued part (qx..x) and the running part (x..x+w), on row y."""

    bar: Any
    y: float
    x: float
    w: float
    qx: float | None


def _drawing(timeline: Timeline) -> dict[str, Any]:
    def x(at: datetime) -> float:
        return LABEL_W + timeline.x(at, PLOT_W)

    bars = []
    for bar in timeline.bars:
        left = x(bar.started_at)
        queued = x(bar.queued_at) if bar.queued_at is not None and bar.kind == "attempt" else None
        bars.append(Drawn(bar, TOP + bar.row * ROW_H, left,
                          round(max(MIN_BAR, x(bar.ended_at) - left), 2), queued))
    height = TOP + len(timeline.rows) * ROW_H + 8
    return {"bars": bars, "x": x, "width": LABEL_W + PLOT_W + RIGHT, "height": height,
            "label_w": LABEL_W, "plot_w": PLOT_W, "row_h": ROW_H, "top": TOP}


# -- the history ----------------------------------------------------------------------------

def _detail(event: dict[str, Any]) -> str:
    """What an event's data says, in a few words (the `by` and `fence` have their own place)."""
    data = event.get("data") or {}
    parts = [f"{key}: {data[key]}" for key in EVENT_DETAIL if data.get(key)]
    if data.get("signal"):
        parts.append(f"signal {data['signal']}")
    if data.get("next_attempt_at"):
        parts.append(f"next attempt due {data['next_attempt_at']}")
    if data.get("wake_at"):
        parts.append(f"wakes at {data['wake_at']}")
    if data.get("in_doubt"):
        parts.append("in doubt")
    return "; ".join(parts)


def _clock(at: datetime | None) -> str:
    if at is None:
        return "–"
    return f"{at:%Y-%m-%d %H:%M:%S}.{at.microsecond // 1000:03d}"


def _since(start: datetime, at: datetime) -> str:
    return "+" + duration(at - start) if at >= start else "-" + duration(start - at)


def _took(run: dict[str, Any]) -> str | None:
    return duration(run["finished_at"] - run["created_at"]) if run.get("finished_at") else None


def _as_json(value: Any) -> str:
    """JSON to read: one line when short (the C encoder: hundreds of outputs stay cheap),
    indented when long."""
    line = json.dumps(value, ensure_ascii=False, default=str)
    if len(line) <= 80:
        return line
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# -- retry and cancel -----------------------------------------------------------------------

def _confirm(run_id: str, action: str) -> Any:
    try:
        run = current().store.get_run(_checked(run_id))
    except RunNotFound:
        return _not_found(run_id)
    return flask.render_template("console/run_confirm.html", run=run, action=action)


@console.get("/runs/<run_id>/retry")
@signed_in(ACTIONS["retry"])
def confirm_retry(run_id: str) -> Any:
    return _confirm(run_id, "retry")


@console.get("/runs/<run_id>/cancel")
@signed_in(ACTIONS["cancel"])
def confirm_cancel(run_id: str) -> Any:
    return _confirm(run_id, "cancel")


@console.post("/runs/<run_id>/retry")
@signed_in(ACTIONS["retry"])
def retry(run_id: str) -> Any:
    """As POST /v1/runs/<id>/retry."""
    def do() -> None:
        current().engine.retry(_checked(run_id), actor=actor())

    return _act(run_id, do, "Retry requested: the run resumes from where it stopped.")


@console.post("/runs/<run_id>/cancel")
@signed_in(ACTIONS["cancel"])
def cancel(run_id: str) -> Any:
    """As POST /v1/runs/<id>/cancel."""
    def do() -> None:
        current().engine.cancel(_checked(run_id), actor=actor())

    return _act(run_id, do, "Cancel requested: running steps settle, then what was done is "
                            "compensated.")


def _act(run_id: str, do: Callable[[], str | None], done: str,
         form: SignalForm | None = None) -> Any:
    """Do it; then back to the run, whose history shows it; or the page, saying what's wrong.

    `do` may return a message to show instead of `done`."""
    try:
        said = do()
    except SagaError as exc:
        status = next((code for kind, code in STATUS_OF.items() if isinstance(exc, kind)), None)
        if status is None:
            raise
        if isinstance(exc, RunNotFound):
            return _not_found(run_id)
        message = str(exc)
        if isinstance(exc, InvalidInput) and form is not None:
            form = form.with_errors(exc.errors)
            message = f"The payload does not match the schema of signal {form.name!r}."
        return _page(run_id, error=message, status=status, form=form)
    flask.flash(said or done, "info")
    return flask.redirect(flask.url_for("console.run", run_id=run_id) + "#history", 303)


# -- signals --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FormField:
    """One input of a signal's form, from one field of its marshmallow schema."""

    name: str  # the payload's key
    label: str
    input: str  # text, email, url, date, number, checkbox, select, json
    required: bool
    step: str | None = None  # a number input's step: "1" for whole numbers
    choices: tuple[Any, ...] = ()
    hint: str | None = None
    value: str = ""
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class SignalForm:
    """The form to send signal `name` to the step(s) waiting for it."""

    name: str
    steps: tuple[str, ...]
    fields: tuple[FormField, ...]
    schema: Any = None  # None: any JSON object
    errors: tuple[str, ...] = ()
    key: str = field(default_factory=lambda: str(uuid.uuid4()))  # sent twice, applied once

    def with_values(self, form: Any) -> SignalForm:
        filled = tuple(replace(f, value=_raw(f, form)) for f in self.fields)
        return replace(self, fields=filled, key=form.get("idempotency_key") or self.key)

    def with_errors(self, errors: dict[str, Any]) -> SignalForm:
        """The form with each field's errors (marshmallow's, or read_payload's) shown at it."""
        mine = {f.name for f in self.fields}
        fields_ = tuple(replace(f, errors=tuple(_texts(errors.get(f.name))))
                        for f in self.fields)
        rest = [f"{k}: {'; '.join(_texts(v))}" for k, v in errors.items() if k not in mine]
        return replace(self, fields=fields_, errors=tuple(rest))


def _texts(errors: Any) -> list[str]:
    if errors is None:
        return []
    if isinstance(errors, str):
        return [errors]
    if isinstance(errors, dict):
        return [f"{k}: {t}" for k, v in errors.items() for t in _texts(v)]
    return [t for item in errors for t in _texts(item)]


def _signal_forms(saga: Saga | None, run: dict[str, Any]) -> list[SignalForm]:
    """A form per signal a waiting step declares, if the token may send signals."""
    if saga is None or run["status"] != RunStatus.RUNNING or run["parked"] or not can(SIGNAL_SCOPE):
        return []
    waiting = [s["name"] for s in run["steps"] if s["status"] == StepStatus.WAITING]
    names = []
    for name in waiting:
        wait = saga.by_name[name].wait if name in saga.by_name else None
        if isinstance(wait, Signal) and wait.name not in names:
            names.append(wait.name)
    return [signal_form(saga, name) for name in names]


def signal_form(saga: Saga, name: str) -> SignalForm:
    """The blank form of signal `name`: one input per field of its schema (the first
    waiting step's, as the engine validates), or one JSON object without a schema."""
    steps = saga.signal_steps(name)
    if not steps:
        raise UnknownSignal(f"saga {saga.name!r} v{saga.version} declares no signal {name!r}")
    wait = steps[0].wait
    schema = wait.schema if isinstance(wait, Signal) else None
    schema = schema() if isinstance(schema, type) else schema
    names = tuple(s.name for s in steps)
    if schema is None:
        return SignalForm(name, names, (FormField("payload", "Payload (a JSON object)", "json",
                                                  False, value="{}"),))
    return SignalForm(name, names, tuple(_form_field(key, f) for key, f in _schema_fields(schema)),
                      schema)


def _schema_fields(schema: ma.Schema) -> list[tuple[str, fields.Field]]:
    return [(f.data_key or name, f) for name, f in schema.fields.items()
            if not f.dump_only and not isinstance(f, fields.Constant)]


def _form_field(key: str, f: fields.Field) -> FormField:
    hint = f.metadata.get("description")
    choices = next((tuple(v.choices) for v in f.validators if isinstance(v, validate.OneOf)), ())
    label = key.replace("_", " ").capitalize()
    if choices:
        return FormField(key, label, "select", f.required, choices=choices, hint=hint)
    kind: str
    step = None
    if isinstance(f, fields.Boolean):
        kind = "checkbox"
    elif isinstance(f, fields.Integer):
        kind, step = "number", "1"
    elif isinstance(f, fields.Number):
        kind, step = "number", "any"
    elif isinstance(f, fields.Email):
        kind = "email"
    elif isinstance(f, fields.Url):
        kind = "url"
    elif isinstance(f, fields.Date) and not isinstance(f, fields.DateTime):
        kind = "date"
    elif isinstance(f, fields.DateTime):
        kind, hint = "text", hint or "ISO 8601, e.g. 2025-05-01T12:00:00+00:00"
    elif isinstance(f, fields.String | fields.UUID | fields.Time | fields.TimeDelta):
        kind = "text"
    else:  # Nested, List, Dict, Raw…: typed as JSON
        kind, hint = "json", hint or "JSON"
    return FormField(key, label, kind, f.required, step=step, hint=hint)


def _raw(f: FormField, form: Any) -> str:
    if f.input == "checkbox":
        return "on" if form.get(f.name) else ""
    return str(form.get(f.name, ""))


def read_payload(form: SignalForm) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The payload the filled `form` gives, and what is wrong with it: each value read as
    its input's type, then the whole checked by the signal's schema (as the engine will)."""
    payload: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for f in form.fields:
        try:
            value = _value(f)
        except ValueError as exc:
            errors[f.name] = [str(exc)]
            continue
        if value is not _OMITTED:
            payload[f.name] = value
    if form.schema is None:
        payload = payload.get("payload", {})
        if not isinstance(payload, dict):
            errors.setdefault("payload", []).append("must be a JSON object")
    try:
        storable(payload)
    except ma.ValidationError as exc:
        errors.setdefault("_schema", []).extend(_texts(exc.messages))
    if form.schema is not None and not errors:
        for key, texts in form.schema.validate(payload).items():
            errors[key] = _texts(texts)
    return payload, errors


_OMITTED = object()


def _value(f: FormField) -> Any:
    text = f.value
    if f.input == "checkbox":
        return bool(text)
    if not text.strip():
        return _OMITTED  # left empty: the schema says whether it was required
    if f.input == "number":
        try:
            return int(text) if f.step == "1" else float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a {'whole ' if f.step == '1' else ''}"
                             "number") from None
    if f.input == "select":
        return next((c for c in f.choices if str(c) == text), text)
    if f.input == "json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"is not valid JSON: {exc}") from None
    return text


@console.get("/runs/<run_id>/signal")
@signed_in(SIGNAL_SCOPE)
def signal_page(run_id: str) -> Any:
    """The form of one signal (the run page shows the same form for each waiting signal)."""
    found = _run_and_form(run_id, flask.request.args.get("name", ""))
    if isinstance(found, flask.Response):
        return found
    run, form = found
    return flask.render_template("console/run_signal.html", run=run, form=form, review=None)


@console.post("/runs/<run_id>/signal")
@signed_in(SIGNAL_SCOPE)
@rate_limited  # as the API's signals: against the token's SAGA_RATE_LIMIT
def signal(run_id: str) -> Any:
    """As POST /v1/runs/<id>/signals/<name>: first a review of the payload; confirmed, sent."""
    found = _run_and_form(run_id, flask.request.form.get("name", ""))
    if isinstance(found, flask.Response):
        return found
    run, blank = found
    form = blank.with_values(flask.request.form)
    if flask.request.form.get("edit") == "yes":  # back from the review, to change it
        return flask.render_template("console/run_signal.html", run=run, form=form, review=None)
    payload, errors = read_payload(form)
    if errors:
        return flask.render_template("console/run_signal.html", run=run,
                                     form=form.with_errors(errors), review=None), 422
    if flask.request.form.get("confirmed") != "yes":
        return flask.render_template("console/run_signal.html", run=run, form=form,
                                     review=_as_json(payload))

    def send() -> str | None:
        _, new = current().engine.signal(_checked(run_id), form.name, payload, form.key,
                                         actor=actor())
        return None if new else (f"Signal {form.name!r} was sent before from this form; it "
                                 "was applied once.")

    return _act(run_id, send, f"Signal {form.name!r} sent.", form=form)


def _run_and_form(run_id: str, name: str) -> tuple[dict[str, Any], SignalForm] | flask.Response:
    """(run, blank form of signal `name`), or the page saying why there is none."""
    try:
        run = current().store.get_run(_checked(run_id))
    except RunNotFound:
        return flask.make_response(_not_found(run_id))
    saga = _definition(run)
    if saga is None:
        return flask.make_response(_page(run_id, status=409, error=(
            f"Saga {run['saga']} v{run['version']} is not loaded in this API process, so "
            "its signals are unknown here.")))
    try:
        return run, signal_form(saga, name)
    except UnknownSignal as exc:
        return flask.make_response(_page(run_id, status=404, error=str(exc)))
