"""The console's overview (/ui/): runs per minute, the slowest and most failing steps, stuck runs.

Every number is one aggregate of the store's `Insights` over a window (the last hour, or
`?window=day`), read by an index on its time column, so the page costs what the window
holds, not the history.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import flask

from saga.api.console import charts
from saga.api.console.blueprint import console
from saga.api.console.session import signed_in
from saga.api.system import current
from saga.registry import Registry
from saga.store.insights import StepStats

WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
MINUTES = 60  # the runs-per-minute chart's span
TOP = 10  # rows in each step table
STARTED_ORDER = ("succeeded", "running", "compensating", "compensated", "cancelled", "failed")
ENDED_ORDER = ("succeeded", "compensated", "cancelled", "failed")


@console.get("/")
@signed_in("read")
def overview() -> Any:
    window = window_named(flask.request.args.get("window"))
    if window is None:
        return bad_window()
    store = current().store
    per_minute = store.runs_per_minute(MINUTES)
    labels = [_hhmm(per_minute.start + timedelta(minutes=i)) for i in range(MINUTES)]
    stats = without_waits(store.step_stats(WINDOWS[window]), current().registry)
    return flask.render_template(
        "console/overview.html", window=window, windows=WINDOWS, stuck=store.stuck(),
        started=charts.columns(per_minute.started, labels, order=STARTED_ORDER,
                               label="Runs started per minute, by status now"),
        ended=charts.lines(per_minute.finished, labels, order=ENDED_ORDER,
                           label="Runs ended per minute, by how they ended"),
        slowest=slowest(stats), failing=failing(stats), charts=charts, since=per_minute.start,
        minutes=MINUTES)


def window_named(name: str | None) -> str | None:
    """The window `?window=` names (the hour when absent), or None for a name it is not."""
    if not name:
        return "hour"
    return name if name in WINDOWS else None


def bad_window() -> Any:
    message = (f"window must be one of {', '.join(WINDOWS)}, not "
               f"{flask.request.args.get('window', '')!r}.")
    return flask.render_template("console/error.html", title="Unknown window",
                                 message=message), 400


def without_waits(stats: list[StepStats], registry: Registry) -> list[StepStats]:
    """The steps that run code: a timer or signal wait lasts as long as it is meant to."""
    waits = {(saga.name, name) for saga in registry
             for name, step in saga.by_name.items() if step.wait is not None}
    return [s for s in stats if (s.saga, s.step) not in waits]


def slowest(stats: list[StepStats]) -> list[StepStats]:
    """The steps whose successful attempts took longest on average, slowest first."""
    timed = [s for s in stats if s.mean_s is not None]
    return sorted(timed, key=lambda s: (-(s.mean_s or 0), s.saga, s.step))[:TOP]


def failing(stats: list[StepStats]) -> list[StepStats]:
    """The steps with the most failed attempts (then the most that failed for good)."""
    failed = [s for s in stats if s.failed_attempts or s.failed]
    return sorted(failed, key=lambda s: (-s.failed_attempts, -s.failed, s.saga,
                                         s.step))[:TOP]


def _hhmm(at: datetime) -> str:
    return at.strftime("%H:%M")
