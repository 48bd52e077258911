"""Health: does the saga log answer, and does the broker?"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import flask
from saga.api.auth import public
from saga.api.parsing import Blueprint
from saga.api.problems import Problem, ProblemSchema
from saga.api.schemas import HealthSchema

blp = Blueprint("health", __name__, description="Liveness of the database and the broker")

# A load balancer's probe gives up after a few seconds; answer before it does.
CHECK_TIMEOUT_S = 3.0


@blp.get("/health")
@public
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=ProblemSchema, content_type="application/problem+json",
                  description="The database or the broker does not answer; `errors` names it")
def health():
    """Whether the database and the broker answer (both checked at once, within 3 s)"""
    engine = flask.current_app.extensions["saga"].engine
    failures = _failures({"database": engine.store.ping, "broker": engine.dispatcher.ping})
    if failures:
        raise Problem(503, f"{' and '.join(sorted(failures))} did not answer.",
                      errors={name: [text] for name, text in failures.items()})
    return {"database": "ok", "broker": "ok"}


def _failures(checks: dict[str, Callable[[], Any]]) -> dict[str, str]:
    """Run the checks in parallel; a check still running at the deadline has failed."""
    results: dict[str, str | None] = {}

    def run(name: str, check: Callable[[], Any]) -> None:
        try:
            check()
            results[name] = None
        except Exception as exc:
            results[name] = f"{type(exc).__name__}: {exc}"

    # Daemon threads: a check hung on a dead host must not keep the process alive.
    threads = [threading.Thread(target=run, args=item, daemon=True) for item in checks.items()]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + CHECK_TIMEOUT_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    failures: dict[str, str] = {}
    for name in checks:
        if name not in results:
            failures[name] = f"no answer within {CHECK_TIMEOUT_S:g} s"
        elif results[name] is not None:
            failures[name] = results[name]
    return failures
