"""Reads request data strictly: RFC 8259 JSON only, and only text the saga log can store."""

from __future__ import annotations

import json
from typing import Any

import flask
import flask_smorest
import marshmallow as ma
from webargs import core
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


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()


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
