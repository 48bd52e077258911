"""Health: do the saga log and the broker answer, and is the log's schema the newest?"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import saga.migrations as migrations
from saga.api.auth import public
from saga.api.parsing import Blueprint
from saga.api.problems import Problem, ProblemSchema
from saga.api.schemas import HealthSchema
from saga.api.system import current

log = logging.getLogger("saga.api.health")
blp = Blueprint("health", __name__, description="Liveness of the database and the broker")

# A load balancer's probe gives up after a few seconds; answer before it does.
CHECK_TIMEOUT_S = 3.0


@blp.get("/health")
@public
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=ProblemSchema, content_type="application/problem+json",
                  description="The database or the broker does not answer, or the database's "
                              "schema is not the newest (run `saga migrate`); `errors` names which")
def health():
    """Whether the database and the broker answer, and the schema is migrated (within 3 s)"""
    system = current()
    failures = _failures({"database": lambda: _database(system.store),
                          "broker": lambda: system.dispatcher.ping()})
    if failures:
        raise Problem(503, "; ".join(f"{name}: {text}" for name, text in sorted(failures.items())),
                      errors={name: [text] for name, text in failures.items()})
    return {"database": "ok", "broker": "ok"}


def _database(store: Any) -> str | None:
    """None if the saga log answers and its schema is the newest, else what is wrong."""
    store.ping()
    at, newest = migrations.current(store.engine), migrations.head()
    if at != newest:
        return (f"schema is at revision {at or 'none (not migrated)'}, newest is {newest}: "
                "run `saga migrate`")
    return None


def _failures(checks: dict[str, Callable[[], str | None]]) -> dict[str, str]:
    """Run the checks in parallel; a check still running at the deadline has failed.

    The answer is generic ("did not answer"): an exception's text names hosts, ports and
    users, so it goes to the log, not to whoever can reach the health check.
    """
    results: dict[str, str | None] = {}

    def run(name: str, check: Callable[[], str | None]) -> None:
        try:
            results[name] = check()
        except Exception as exc:
            log.warning("health: the %s did not answer: %s: %s", name, type(exc).__name__, exc)
            results[name] = "did not answer"

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
            failures[name] = f"did not answer within {CHECK_TIMEOUT_S:g} s"
        elif (failed := results[name]) is not None:
            failures[name] = failed
    return failures
