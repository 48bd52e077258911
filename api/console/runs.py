"""The runs page, /ui/runs: filters, a search box, counts per status, cursor pages, live refresh.

    /ui/runs?saga=order&status=waiting&q=o-1042&from=2025-05-01T00:00

Times in the form and on the page are UTC. The page's list is a fragment that htmx asks
for again every few seconds (the same URL, with `HX-Target: runs-live`), so the filters
stay as they are and the form keeps its focus. The counts per status are a fragment of
their own (`HX-Target: runs-counts`), asked for less often: they count every run the
filters leave, where the list reads one page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import flask

from saga.api.console.blueprint import console
from saga.api.console.masking import masked
from saga.api.console.session import signed_in
from saga.api.system import current
from saga.errors import UnknownSaga
from saga.store.search import STATUSES, RunFilter

PAGE_SIZE = 50
MAX_SEARCH_CHARS = 200
INPUT_CHARS = 160  # of a run's input, shown in one table cell
LIVE_TARGET = "runs-live"  # the list and its pager
COUNTS_TARGET = "runs-counts"  # the counts per status
REFRESH_S = 3
COUNTS_REFRESH_S = 15
FILTER_ARGS = ("saga", "version", "status", "from", "to", "q")


@dataclass
class Query:
    """The page's query string, read: the filter, the cursor, and what was wrong with it."""

    args: dict[str, str]
    where: RunFilter = field(default_factory=RunFilter)
    cursor: str | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def url(self, **changes: str | None) -> str:
        """This page's URL with some arguments changed (None drops one)."""
        args = {**self.args, **changes}
        kept = {k: v for k, v in args.items() if v}
        return flask.url_for("console.runs") + (f"?{urlencode(kept)}" if kept else "")


@console.get("/runs")
@signed_in("read")
def runs() -> Any:
    """Runs newest first; with `HX-Target: runs-live` or `runs-counts`, only that part (the
    live refresh)."""
    query = read_query(flask.request.args)
    target = flask.request.headers.get("HX-Target")
    page: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    next_cursor = None
    if not query.errors:
        try:
            page, next_cursor, counts = _read(query, target)
        except ValueError:  # a cursor this console did not make
            query.errors["cursor"] = ("This page link is out of date or broken; start again "
                                      "from the first page.")
    context = {"query": query, "rows": [_row(run) for run in page], "counts": counts,
               "statuses": STATUSES, "next_url": query.url(cursor=next_cursor)
               if next_cursor else None, "refresh_s": REFRESH_S, "live_target": LIVE_TARGET,
               "counts_refresh_s": COUNTS_REFRESH_S, "counts_target": COUNTS_TARGET,
               "now": datetime.now(UTC)}
    status = 400 if query.errors else 200
    if target in (LIVE_TARGET, COUNTS_TARGET):
        part = "runs_list" if target == LIVE_TARGET else "runs_counts"
        response = flask.make_response(
            flask.render_template(f"console/{part}.html", **context), status)
    else:
        sagas = sorted({saga.name for saga in current().registry} | (
            {query.where.saga} if query.where.saga else set()))
        response = flask.make_response(
            flask.render_template("console/runs.html", sagas=sagas, **context), status)
    response.vary.add("HX-Target")
    return response


def _read(query: Query, target: str | None) -> tuple[list[dict[str, Any]], str | None,
                                                    dict[str, int]]:
    """(page, next cursor, counts) as the request shows them: each refresh reads its own
    part alone, but a search reads its matches once for both."""
    store = current().store
    if target == COUNTS_TARGET:
        return [], None, store.count_runs(query.where)
    if target == LIVE_TARGET and not query.where.text:
        return (*store.search_runs(query.where, PAGE_SIZE, query.cursor), {})
    shown = store.runs_page(query.where, PAGE_SIZE, query.cursor)
    return shown.runs, shown.cursor, shown.counts


def read_query(args: Any) -> Query:
    """The filters from a query string; each bad one named in `errors`, by its field."""
    raw = {name: args.get(name, "").strip() for name in FILTER_ARGS}
    query = Query({k: v for k, v in raw.items() if v}, cursor=args.get("cursor") or None)
    errors = query.errors
    version = None
    if raw["version"]:
        try:
            version = int(raw["version"])
            if version < 1:
                raise ValueError
        except ValueError:
            errors["version"] = f"Version must be a whole number from 1, not {raw['version']!r}."
    if raw["status"] and raw["status"] not in STATUSES:
        errors["status"] = f"Status must be one of {', '.join(STATUSES)}."
    after, before = _when(raw["from"], "from", errors), _when(raw["to"], "to", errors)
    if after and before and after >= before:
        errors["to"] = "The end of the time range must come after its start."
    if len(raw["q"]) > MAX_SEARCH_CHARS:
        errors["q"] = f"Search for at most {MAX_SEARCH_CHARS} characters."
    for name, value in raw.items():
        if "\x00" in value:  # PostgreSQL takes no NUL in text
            errors[name] = "This field holds a NUL character."
    if not errors:
        query.where = RunFilter(saga=raw["saga"] or None, version=version,
                                status=raw["status"] or None, started_after=after,
                                started_before=before, text=raw["q"] or None)
    if query.cursor:
        query.args["cursor"] = query.cursor
    return query


def _when(value: str, name: str, errors: dict[str, str]) -> datetime | None:
    """A time from the form (`datetime-local`, read as UTC) or an ISO 8601 time with an offset."""
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        errors[name] = f"{value!r} is not a time such as 2025-05-01T09:30 (UTC)."
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _row(run: dict[str, Any]) -> dict[str, Any]:
    """One run as the table shows it: its input masked and cut short, its times in UTC."""
    try:
        saga = current().registry.get(run["saga"], run["version"])
    except UnknownSaga:
        saga = None  # not loaded: nothing says which fields are sensitive, so all are masked
    shown = json.dumps(masked(saga, run["input"]), ensure_ascii=False, separators=(", ", ": "))
    end = run["finished_at"] or datetime.now(UTC)
    return dict(run, input_text=shown if len(shown) <= INPUT_CHARS
                else shown[:INPUT_CHARS - 1] + "…",
                input_full=shown, duration=_duration((end - run["created_at"]).total_seconds()))


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"
