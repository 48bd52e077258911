"""Reads request data strictly: RFC 8259 JSON only, and only text the saga log can store."""

from __future__ import annotations

import json
import math
from typing import Any

import flask
import flask_smorest
import marshmallow as ma
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request
from werkzeug.exceptions import RequestEntityTooLarge

from saga.api.problems import MEDIA_TYPE, ProblemSchema
from saga.store.text import unstorable_parts

# Deeper than this is no saga's input; past it, what breaks first (Python's recursion, a
# thread's stack, PostgreSQL's max_stack_depth) would depend on the deployment.
MAX_DEPTH = 100


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400 parses as inf, which JSONB cannot hold
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _depth(value: Any) -> int:
    deepest, pending = 0, [(value, 1)]
    while pending:  # a loop, not recursion: the nesting depth is the client's choice
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest


class StrictParser(FlaskParser):
    """webargs' parser, except that NaN, Infinity, out-of-range numbers, nesting deeper
    than MAX_DEPTH and a body the server could not read whole are a 4xx.

    The stdlib accepts NaN, Infinity and 1e400, which PostgreSQL's JSONB refuses, and
    raises RecursionError or a plain ValueError (too many digits) that webargs would let
    through as a 500.
    """

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        raw = _whole_body(req)
        if not raw:
            return core.missing
        too_deep = f"The request body's JSON is nested deeper than {MAX_DEPTH} levels."
        try:
            value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
        except RecursionError as exc:
            abort(400, exc=exc, message=too_deep)
        except ValueError as exc:
            abort(400, exc=exc, message=f"The request body is not valid JSON: {exc}.")
        if _depth(value) > MAX_DEPTH:
            abort(400, message=too_deep)
        return value


def _whole_body(req: flask.Request) -> bytes:
    """The body, all of it, or a 411 or 413: never the part of it that fits the limit."""
    _require_length(req)
    raw = req.get_data(cache=True)
    limit = req.max_content_length
    # Werkzeug stops reading a body of unknown length at the limit without saying whether
    # more followed; one byte more from the (de-chunked) input tells.
    if req.content_length is None and limit is not None and len(raw) >= limit \
            and req.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def _require_length(req: flask.Request) -> None:
    """Refuse a body of unknown length that the WSGI server did not de-chunk.

    Werkzeug reads such a body as empty (it cannot tell where it ends), so the request
    would go on without it: a signal would be delivered with no payload.
    """
    if req.content_length is None and req.headers.get("Transfer-Encoding") \
            and not req.environ.get("wsgi.input_terminated"):
        abort(411, message="The request body has no Content-Length and this server cannot "
                           "read it chunked; send a Content-Length header.")


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {MEDIA_TYPE: {"schema": ProblemSchema}}}
    if headers:
        response["headers"] = headers
    return response


# Answers any operation may give besides its own, documented on each of them.
UNAVAILABLE = _problem(
    "The database does not answer (down or restarting); retry after `Retry-After` seconds",
    {"Retry-After": {"description": "seconds to wait before retrying",
                     "schema": {"type": "integer"}}})
# And any operation that reads a JSON body.
BAD_BODY = _problem(f"The body is not RFC 8259 JSON, or is nested deeper than {MAX_DEPTH} "
                    "levels, or a header is invalid; `errors` names which")
NO_LENGTH = _problem("A chunked body this server cannot read whole: send Content-Length")
TOO_LARGE = _problem("The body is larger than the configured limit (`max_body_bytes`)")


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, strict in what it reads and exact in what it documents:
    every status an operation can answer is listed, and there is no catch-all `default`."""

    ARGUMENTS_PARSER = StrictParser()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.append(self._prepare_common_responses)

    @staticmethod
    def _prepare_common_responses(doc: dict[str, Any], doc_info: dict[str, Any],
                                  **_: Any) -> dict[str, Any]:
        responses = doc.setdefault("responses", {})
        responses.pop("default", None)  # it would make every status "documented"
        responses.setdefault("503", UNAVAILABLE)
        if "requestBody" in doc:
            responses.setdefault("400", BAD_BODY)
            responses.setdefault("411", NO_LENGTH)
            responses.setdefault("413", TOO_LARGE)
        return doc


def storable(value: Any) -> None:
    """Refuse text JSON carries but PostgreSQL cannot store: NUL and lone surrogates."""
    found = unstorable_parts(value)
    if found:
        raise ma.ValidationError(found)


def printable(text: str) -> None:
    """For names and keys that go into SQL: no NUL or other control characters."""
    if not text.isprintable():
        raise ma.ValidationError("must not contain control characters")
