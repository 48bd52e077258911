"""Reads request data strictly: RFC 8259 JSON only, and only text the saga log can store."""

from __future__ import annotations

import json
from typing import Any

import flask
import flask_smorest
import marshmallow as ma
from webargs import core
from saga.api.problems import MEDIA_TYPE, ProblemSchema
from webargs.flaskparser import FlaskParser, abort, is_json_request


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


class StrictParser(FlaskParser):
    """webargs' parser, except that NaN, Infinity, deep nesting and huge numbers are a 400.

    The stdlib accepts NaN and Infinity, which PostgreSQL's JSONB refuses, and raises
    RecursionError or a plain ValueError (too many digits) that webargs would let
    through as a 500.
    """

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        raw = req.get_data(cache=True)
        if not raw:
            return core.missing
        try:
            return json.loads(raw, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            abort(400, exc=exc, message=f"The request body is not valid JSON: {exc}.")


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
BAD_BODY = _problem("The body is not RFC 8259 JSON (or a header is invalid); `errors` names it")
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
            responses.setdefault("413", TOO_LARGE)
        return doc


def storable(value: Any) -> None:
    """Refuse text JSON carries but PostgreSQL cannot store: NUL and lone surrogates."""
    problems: dict[str, list[str]] = {}
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:  # a loop, not recursion: the nesting depth is the client's choice
        path, item = pending.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                _check_text(problems, where, key)
                pending.append((where, child))
        elif isinstance(item, list):
            pending.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(problems, path, item)
    if problems:
        raise ma.ValidationError(problems)


def _check_text(problems: dict[str, list[str]], path: str, text: str) -> None:
    if "\x00" in text:
        problems.setdefault(path, []).append("text must not contain NUL (\\u0000) characters")
    elif not _encodable(text):
        problems.setdefault(path, []).append("text must not hold unpaired UTF-16 surrogates")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> None:
    """For names and keys that go into SQL: no NUL or other control characters."""
    if not text.isprintable():
        raise ma.ValidationError("must not contain control characters")
