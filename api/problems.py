"""Every error the API returns, as one `application/problem+json` shape (RFC 9457)."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import flask
import marshmallow as ma
from werkzeug.exceptions import HTTPException

from saga.errors import (
    IdempotencyConflict,
    InvalidInput,
    RunNotFound,
    RunParked,
    RunStateConflict,
    SagaError,
    UnknownSaga,
    UnknownSignal,
)
from saga.store import DatabaseError, unreachable

log = logging.getLogger("api")

MEDIA_TYPE = "application/problem+json"
# RFC 9457 §3.1.1 allows non-resolvable type URIs and suggests tag URIs for them.
TYPE_PREFIX = "tag:saga,2025:"
_LOCATIONS = {"json": "body"}  # webargs' name for where a request part was read from
# A restarting PostgreSQL is usually back within seconds; clients wait this long, then retry.
RETRY_AFTER_S = 5
UNAVAILABLE = "The saga log is unavailable; try again shortly."

# The orchestrator's own errors: HTTP status and problem type (None: "about:blank").
SAGA_ERRORS: dict[type[SagaError], tuple[int, str | None]] = {
    UnknownSaga: (404, "unknown-saga"),
    RunNotFound: (404, "run-not-found"),
    IdempotencyConflict: (422, "idempotency-conflict"),
    InvalidInput: (422, "invalid-input"),
    UnknownSignal: (404, "unknown-signal"),
    RunParked: (409, "run-parked"),
    RunStateConflict: (409, "run-state-conflict"),
}


class ProblemSchema(ma.Schema):
    """A problem detail: what went wrong, and under `errors` each field at fault."""

    type = ma.fields.String(metadata={"description": "URI naming the kind of problem"})
    title = ma.fields.String(metadata={"description": "short summary of the kind"})
    status = ma.fields.Integer(metadata={"description": "the HTTP status code"})
    detail = ma.fields.String(metadata={"description": "what went wrong this time"})
    errors = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.List(ma.fields.String()),
                            metadata={"description": "messages by field path, e.g. input.amount_cents"})


# How an operation documents a problem answer: `@blp.alt_response(404, ..., **PROBLEM)`.
PROBLEM = {"schema": ProblemSchema, "content_type": MEDIA_TYPE}


class Problem(Exception):
    """Raised by a view to answer with a problem."""

    def __init__(self, status: int, detail: str, kind: str | None = None,
                 errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.kind, self.errors = status, detail, kind, errors


def response(status: int, detail: str, kind: str | None = None,
             errors: dict[str, list[str]] | None = None,
             headers: dict[str, str] | None = None) -> flask.Response:
    phrase = HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + kind if kind else "about:blank",
        "title": kind.replace("-", " ").capitalize() if kind else phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return flask.current_app.response_class(json.dumps(body), status=status, mimetype=MEDIA_TYPE,
                                            headers=headers)


def flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Marshmallow's nested messages as {"a.b": [messages]}; `_schema` names its parent."""
    found: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            path = prefix if key == "_schema" else _join(prefix, str(key))
            for name, texts in flatten(value, path).items():
                found.setdefault(name, []).extend(texts)
    elif isinstance(messages, (list, tuple)):
        for item in messages:
            for name, texts in flatten(item, prefix).items():
                found.setdefault(name, []).extend(texts)
    else:
        found.setdefault(prefix, []).append(str(messages))
    return found


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    return prefix + key if key.startswith("[") else f"{prefix}.{key}"  # inputs[0], not inputs.[0]


def describe(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{name}: {' '.join(texts)}" for name, texts in sorted(errors.items()))


def from_http_exception(error: HTTPException) -> flask.Response:
    """Werkzeug's and webargs' errors (404, 405, 413, 422 from the schemas...) as problems."""
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    errors: dict[str, list[str]] = {}
    for location, messages in (data.get("messages") or {}).items():
        for name, texts in flatten(messages).items():
            # An error about the whole body or query string names its location.
            errors[name or _LOCATIONS.get(location, location)] = texts
    detail = data.get("message") or (describe(errors) if errors else error.description)
    if status == 413:
        limit = flask.current_app.config.get("MAX_CONTENT_LENGTH")
        detail = f"The request body is larger than the limit of {limit} bytes."
    # Keep headers such as Allow (405), never werkzeug's text/html content type.
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    headers.update(data.get("headers") or {})
    return response(status, detail or HTTPStatus(status).phrase, errors=errors or None,
                    headers=headers)


def from_problem(error: Problem) -> flask.Response:
    return response(error.status, error.detail, error.kind, error.errors)


def from_saga_error(error: SagaError) -> flask.Response:
    for cls in type(error).__mro__:
        if cls in SAGA_ERRORS:
            status, kind = SAGA_ERRORS[cls]
            kind = getattr(error, "kind", None) or kind  # a finer type the error names itself
            return response(status, str(error), kind, flatten(getattr(error, "errors", {})))
    return from_unexpected(error)


def from_database_error(error: DatabaseError) -> flask.Response:
    """A 503 with Retry-After while the database is unreachable; any other SQL error is a bug."""
    if not unreachable(error):
        return from_unexpected(error)
    # One line, not a traceback: an outage makes every request fail the same way.
    log.warning("database unavailable in %s %s: %s", flask.request.method, flask.request.path,
                type(getattr(error, "orig", None) or error).__name__)
    return response(503, UNAVAILABLE, "database-unavailable",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


def from_unexpected(error: Exception) -> flask.Response:
    log.exception("unhandled error in %s %s", flask.request.method, flask.request.path,
                  exc_info=error)
    return response(500, "The server failed to answer this request; the error is logged.")


def install(app: flask.Flask) -> None:
    """Answer every error with a problem; HTTPException is the Api's (see api.ProblemApi)."""
    app.register_error_handler(Problem, from_problem)
    app.register_error_handler(SagaError, from_saga_error)
    app.register_error_handler(DatabaseError, from_database_error)
    app.register_error_handler(Exception, from_unexpected)
