"""The sagas pages: each loaded saga and version with its graph and how its runs do (/ui/sagas),
and one version's definition (/ui/sagas/<name>/<version>).

A version's runs in flight say when it can retire: once its count is 0 and no new run
takes it (new runs take the newest), its definition can be unloaded. A version with runs
in the log but not loaded here is listed too, since its runs wait for it (parked).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import flask

from saga.api.console import charts
from saga.api.console.blueprint import console
from saga.api.console.graph import graph_svg
from saga.api.console.overview import WINDOWS, bad_window, window_named
from saga.api.console.session import signed_in
from saga.api.system import current
from saga.definitions import Saga, Signal, Step, Timer
from saga.definitions.retry import Retry
from saga.errors import UnknownSaga
from saga.registry import Registry
from saga.store.insights import VersionStats
from saga.timeline import duration

DEFAULT_WINDOW = "day"


@console.get("/sagas")
@signed_in("read")
def sagas() -> Any:
    window = window_named(flask.request.args.get("window") or DEFAULT_WINDOW)
    if window is None:
        return bad_window()
    system = current()
    stats = system.store.version_stats(WINDOWS[window])
    return flask.render_template("console/sagas.html", sagas=listed(system.registry, stats),
                                 window=window, windows=WINDOWS, charts=charts)


@console.get("/sagas/<name>/<int:version>")
@signed_in("read")
def saga_version(name: str, version: int) -> Any:
    window = window_named(flask.request.args.get("window") or DEFAULT_WINDOW)
    if window is None:
        return bad_window()
    system = current()
    try:
        saga = system.registry.get(name, version)
    except UnknownSaga as exc:
        return flask.render_template("console/error.html", title="No such saga version",
                                     message=str(exc)), 404
    stats = system.store.version_stats(WINDOWS[window], name, version).get(
        (name, version), VersionStats())
    newest = system.registry.get(name).version
    return flask.render_template(
        "console/saga.html", saga=saga, newest=newest, stats=stats, graph=graph_svg(saga),
        facts=saga_facts(saga), steps=[step_facts(saga, n) for n in saga.order],
        inputs=input_fields(saga.input), window=window, windows=WINDOWS, charts=charts)


def listed(registry: Registry, stats: dict[tuple[str, int], VersionStats]) -> list[dict[str, Any]]:
    """Each saga, by name: its loaded versions (newest first) with their numbers, its newest
    version's graph, and the versions with runs in the log that are not loaded here."""
    by_name: dict[str, list[Saga]] = {}
    for saga in registry:
        by_name.setdefault(saga.name, []).append(saga)
    for name, _ in stats:
        by_name.setdefault(name, [])
    found = []
    for name in sorted(by_name):
        loaded = {s.version: s for s in by_name[name]}
        numbers = sorted({*loaded, *(v for n, v in stats if n == name)}, reverse=True)
        newest = max(loaded) if loaded else None
        found.append({
            "name": name, "newest": newest,
            "graph": graph_svg(loaded[newest]) if newest is not None else None,
            "schedule": _schedule(loaded[newest]) if newest is not None else None,
            "versions": [{"version": v, "loaded": v in loaded, "newest": v == newest,
                          "stats": stats.get((name, v), VersionStats())} for v in numbers],
        })
    return found


def saga_facts(saga: Saga) -> list[tuple[str, str]]:
    """The saga-wide options, as (name, value) lines."""
    return [("Steps", str(len(saga.order))), ("Timeout", _span(saga.timeout) or "none"),
            ("Schedule", _schedule(saga) or "none"),
            ("Pivot", saga.pivot or "none (any failure compensates)"),
            ("Shape", saga.shape_hash)]


def step_facts(saga: Saga, name: str) -> dict[str, Any]:
    """One step's definition, as the version page shows it."""
    step = saga.by_name[name]
    options = [(label, text) for label, text in _options(step) if text]
    return {"name": name, "after": sorted(saga.graph[name]), "kind": _kind(step),
            "action": _action(step.action), "compensate": _action(step.compensate),
            "verify": _action(step.verify), "pivot": step.pivot, "options": options}


def input_fields(schema: Any) -> list[dict[str, Any]]:
    """The input schema's fields (name, type, required, sensitive); empty without a schema."""
    if schema is None:
        return []
    instance = schema() if isinstance(schema, type) else schema
    return [{"name": field.data_key or key, "type": type(field).__name__,
             "required": field.required, "sensitive": bool(field.metadata.get("sensitive"))}
            for key, field in instance.fields.items()]


def _options(step: Step) -> list[tuple[str, str | None]]:
    wait = step.wait
    if isinstance(wait, Timer):
        return [("waits", _span(wait.duration) if wait.duration is not None
                 else f"until {_action(wait.until)}")]
    if isinstance(wait, Signal):
        return [("signal", wait.name), ("timeout", _span(wait.timeout)),
                ("on timeout", str(wait.on_timeout) if wait.timeout else None),
                ("payload schema", _action(wait.schema) if wait.schema is not None else None)]
    return [
        ("retry", _retry(step.retry)),
        ("timeout", _span(step.timeout)),
        ("heartbeat timeout", _span(step.heartbeat_timeout)),
        ("schedule to start", _span(step.schedule_to_start)),
        ("on timeout", str(step.on_timeout) if _timed(step) else None),
        ("compensation retry", _retry(step.compensate_retry) if step.compensate else None),
        ("compensate if it failed", None if step.compensate is None or step.compensate_failed
         else "no: a raised failure had no effect"),
        ("queue", step.queue),
    ]


def _timed(step: Step) -> bool:
    return any((step.timeout, step.heartbeat_timeout, step.schedule_to_start))


def _retry(policy: Retry) -> str:
    if policy.attempts == 1:
        return "1 attempt"
    text = (f"{policy.attempts} attempts, waiting {_span(policy.first_delay)}, "
            f"×{policy.multiplier:g} each retry, at most {_span(policy.max_delay)}")
    if policy.non_retryable:
        names = ", ".join(k if isinstance(k, str) else k.__qualname__
                          for k in policy.non_retryable)
        text += f"; not retried: {names}"
    return text


def _kind(step: Step) -> str:
    if isinstance(step.wait, Timer):
        return "timer"
    if isinstance(step.wait, Signal):
        return "signal"
    return "action"


def _action(action: Any) -> str | None:
    """How a definition names an action: `module:function`, `task:name`, or the string."""
    if action is None:
        return None
    if isinstance(action, str):
        return action
    name = getattr(action, "name", None)
    if isinstance(name, str) and not callable(action):
        return f"task:{name}"  # a RemoteTask
    if isinstance(action, type) or callable(action):
        return f"{getattr(action, '__module__', '?')}:{getattr(action, '__qualname__', '?')}"
    return type(action).__name__  # a schema instance


def _schedule(saga: Saga) -> str | None:
    schedule = saga.schedule
    if schedule is None:
        return None
    return f"{schedule.cron} {schedule.timezone} (catch up: {schedule.catch_up})"


def _span(value: timedelta | None) -> str | None:
    return duration(value) if value is not None else None

