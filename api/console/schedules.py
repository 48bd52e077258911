"""The schedules pages: next firings, pause and resume (/ui/schedules), backfills with their
progress (/ui/backfills/<id>), and a backfill's dry run before it starts.

Every change goes through the `Scheduler` the API and CLI call, as the signed-in token and
with the API's scopes: pausing, resuming and backfilling need `admin` (the API asks
`admin` for a backfill's dry run too, so the console does), and a backfill or its dry run
counts against the token's rate limit, as it does under /v1. A dry run writes nothing; its
confirm button re-plans and starts at most the number of runs it showed, as the API's
`max_runs` does, so a window that appeared in between is not started unseen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

import flask

from saga.api.auth import actor
from saga.api.console import charts
from saga.api.console.blueprint import console
from saga.api.console.masking import masked
from saga.api.console.session import rate_limited, signed_in
from saga.api.system import current
from saga.errors import InvalidBackfill, UnknownSaga
from saga.schedules.backfill import DEFAULT_MAX_RUNNING, MAX_RUNNING, BackfillPlan, parse_lines
from saga.schedules.firing import scheduled

FIRINGS = 5  # next firings listed per schedule
BACKFILLS = 20  # newest backfills listed
SHOWN = 100  # windows listed per part of a dry run


@console.get("/schedules")
@signed_in("read")
def schedules() -> Any:
    system = current()
    return flask.render_template(
        "console/schedules.html", schedules=schedule_rows(), form=BackfillForm(),
        backfills=system.store.backfill_progress(BACKFILLS), charts=charts,
        sagas=_saga_choices(), max_running=MAX_RUNNING)


@console.post("/schedules/<name>/pause")
@signed_in("admin")
def pause_schedule(name: str) -> Any:
    return _change(name, "paused", "was paused already",
                   lambda: current().scheduler.pause(name, by=actor()))


@console.post("/schedules/<name>/resume")
@signed_in("admin")
def resume_schedule(name: str) -> Any:
    return _change(name, "resumed", "was not paused",
                   lambda: current().scheduler.resume(name, by=actor()))


@console.get("/backfills/<backfill_id>")
@signed_in("read")
def backfill(backfill_id: str) -> Any:
    found = None if "\x00" in backfill_id else current().store.backfill(backfill_id)
    if found is None:
        return _error(404, "No such backfill", f"No backfill has id {backfill_id!r}.")
    return flask.render_template("console/backfill.html", backfill=found, charts=charts,
                                 live=not found.done)


@console.post("/backfills/plan")
@signed_in("admin")
@rate_limited  # as the API's backfills, dry runs too
def plan_backfill() -> Any:
    """A dry run: what the backfill would start and how the windows that ran differ."""
    form = BackfillForm.read(flask.request.form)
    plan = form.plan()
    if plan is None:
        return _form_again(form, 422)
    return flask.render_template("console/backfill_plan.html", form=form, plan=plan,
                                 **_plan_view(plan))


@console.post("/backfills")
@signed_in("admin")
@rate_limited  # as the API's backfills, dry runs too
def start_backfill() -> Any:
    """Start a planned backfill: re-planned now, refused if it would start more than shown."""
    form = BackfillForm.read(flask.request.form)
    plan = form.plan()
    if plan is None:
        return _form_again(form, 422)
    confirmed = form.max_runs
    if confirmed is None or len(plan.items) > confirmed:
        form.errors["confirm"] = (
            f"This backfill would now start {len(plan.items)} runs, more than the "
            f"{confirmed or 0} you confirmed; nothing was started. Check the new dry run.")
        return flask.render_template("console/backfill_plan.html", form=form, plan=plan,
                                     **_plan_view(plan)), 409
    backfill_id = current().scheduler.start_backfill(plan, created_by=actor())
    flask.flash(f"Backfill of {plan.saga} stored: {len(plan.items)} runs to start, at most "
                f"{plan.max_running} at once.", "info")
    return flask.redirect(flask.url_for("console.backfill", backfill_id=backfill_id))


# -- schedules ------------------------------------------------------------------------------

def schedule_rows() -> list[dict[str, Any]]:
    """Each loaded schedule's state and its next firings (none while paused), soonest first."""
    system = current()
    found = scheduled(system.registry)
    now = system.store.now()
    rows = []
    for state in system.scheduler.states():
        schedule = found[state["saga"]]
        first = state["next_fire_at"]
        if first is None and not state["paused"]:
            first = schedule.next_after(now)  # no sweeper stored it yet: as it will
        upcoming = [] if state["paused"] or first is None else list(
            islice(schedule.times(first), FIRINGS))
        zone = ZoneInfo(schedule.timezone)
        rows.append({**state, "due_now": bool(upcoming) and upcoming[0] <= now,
                     "firings": [(t, t.astimezone(zone)) for t in upcoming]})
    rows.sort(key=lambda r: (not r["firings"], r["firings"][0][0] if r["firings"] else now,
                             r["saga"]))
    return rows


def _change(name: str, done: str, unchanged: str, change: Any) -> Any:
    try:
        changed = change()
    except UnknownSaga as exc:
        return _error(404, "No such schedule", str(exc))
    flask.flash(f"Schedule of {name} {done if changed else unchanged}.", "info")
    return flask.redirect(flask.url_for("console.schedules"))


def _saga_choices() -> list[tuple[str, bool]]:
    """(saga name, has a schedule) of each loaded saga, by name."""
    registry = current().registry
    names = sorted({saga.name for saga in registry})
    with_schedule = scheduled(registry)
    return [(name, name in with_schedule) for name in names]


def _error(status: int, title: str, message: str) -> Any:
    return flask.render_template("console/error.html", title=title, message=message), status


# -- backfills ------------------------------------------------------------------------------

@dataclass
class BackfillForm:
    """The new-backfill form as sent: a saga and a range of its schedule, or JSON lines."""

    saga: str = ""
    start: str = ""
    end: str = ""
    inputs: str = ""
    max_running: str = str(DEFAULT_MAX_RUNNING)
    max_runs: int | None = None  # the count a dry run showed, sent back by its confirm button
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, form: Any) -> BackfillForm:
        confirmed = form.get("max_runs", "").strip()
        return cls(saga=form.get("saga", "").strip(), start=form.get("from", "").strip(),
                   end=form.get("to", "").strip(), inputs=form.get("inputs", ""),
                   max_running=form.get("max_running", "").strip() or str(DEFAULT_MAX_RUNNING),
                   max_runs=int(confirmed) if confirmed.isdigit() else None)

    def plan(self) -> BackfillPlan | None:
        """The scheduler's plan of this backfill, or None with `errors` saying what is wrong."""
        if not self.saga:
            self.errors["saga"] = "Choose a saga."
        if not self.max_running.isdigit() or not 1 <= int(self.max_running) <= MAX_RUNNING:
            self.errors["max_running"] = f"A whole number from 1 to {MAX_RUNNING}."
        ranged = bool(self.start or self.end)
        if ranged and self.inputs.strip():
            self.errors["inputs"] = "Give either a range (from, to) or inputs, not both."
        if not ranged and not self.inputs.strip():
            self.errors["from"] = "Give a range of the saga's schedule, or inputs."
        if self.errors:
            return None
        try:
            entries = parse_lines(self.inputs.splitlines()) if not ranged else None
            return current().scheduler.plan_backfill(
                self.saga, start=self.start or None, end=self.end or None, inputs=entries,
                max_running=int(self.max_running))
        except UnknownSaga as exc:
            self.errors["saga"] = str(exc)
        except InvalidBackfill as exc:
            for where, texts in (exc.errors or {"saga": [str(exc)]}).items():
                text = " ".join(map(str, texts)) if isinstance(texts, list) else str(texts)
                name = _field_of(where)
                said = text if where == name else f"{where}: {text}"  # "line 3: not JSON"
                self.errors[name] = f"{self.errors.get(name, '')} {said}".strip()
        return None


def _field_of(where: str) -> str:
    """The form field an error of `plan_backfill` is about ("line 3" is in the inputs)."""
    return where if where in ("from", "to", "max_running", "saga") else "inputs"


def _form_again(form: BackfillForm, status: int) -> Any:
    return flask.render_template(
        "console/schedules.html", schedules=schedule_rows(), form=form,
        backfills=current().store.backfill_progress(BACKFILLS), charts=charts,
        sagas=_saga_choices(), max_running=MAX_RUNNING), status


def _plan_view(plan: BackfillPlan) -> dict[str, Any]:
    """The dry run as the page lists it: inputs masked, each part cut at SHOWN windows."""
    try:
        saga = current().registry.get(plan.saga)
    except UnknownSaga:
        saga = None  # masks every value
    start = [{"key": key, "input": masked(saga, value)}
             for key, value in islice(plan.items, SHOWN)]
    ran = [{"key": w.key, "input": masked(saga, w.input), "difference": str(w.difference),
            "run": w.earlier, "earlier_input": masked(saga, w.earlier.input)
            if w.earlier is not None else None}
           for w in islice(plan.ran, SHOWN)]
    return {"start": start, "ran": ran, "counts": {str(d): n for d, n in plan.counts().items()},
            "shown": SHOWN}
