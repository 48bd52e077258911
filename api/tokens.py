"""API tokens over the API (admin): list them, create one (shown once), revoke one."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from saga.api.auth import requires
from saga.api.parsing import Blueprint
from saga.api.problems import PROBLEM, Problem
from saga.api.system import current
from saga.store.tokens import NAME, SCOPES, TokenError, TokenStore

blp = Blueprint("tokens", __name__, description="API tokens: list, create, revoke")
NAME_RULE = "1 to 100 letters, digits or . _ @ : - starting with a letter or digit"


def _token_name(name: str) -> None:
    # fullmatch, as the store checks it: a regex's `$` would let a final newline through.
    if not NAME.fullmatch(name):
        raise ma.ValidationError(f"must be {NAME_RULE}")


class TokenRequestSchema(ma.Schema):
    name = fields.String(required=True, validate=_token_name, metadata={
        "pattern": f"^{NAME.pattern}$",
        "description": "recorded on the events its calls write; never reused, even once revoked"})
    scope = fields.String(required=True, validate=validate.OneOf(SCOPES), metadata={
        "description": "read, operate or admin; each includes the ones before it"})


class TokenSchema(ma.Schema):
    name = fields.String()
    scope = fields.String()
    created_at = fields.DateTime()
    last_used_at = fields.DateTime(allow_none=True,
                                   metadata={"description": "written at most once a minute"})
    revoked = fields.Boolean()
    revoked_at = fields.DateTime(allow_none=True)


class TokenListSchema(ma.Schema):
    tokens = fields.List(fields.Nested(TokenSchema))


class CreatedTokenSchema(TokenSchema):
    token = fields.String(metadata={
        "description": "the secret, shown only in this answer: send it as "
                      "`Authorization: Bearer <token>`"})


def _tokens() -> TokenStore:
    # Stateless over the engine: every call reads the table, so a change counts at once.
    return TokenStore(current().store.engine)


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "revoked": row["revoked_at"] is not None}


@blp.get("/tokens")
@requires("admin")
@blp.response(200, TokenListSchema)
def list_tokens():
    """Every token, live and revoked, by name; never a secret nor its hash"""
    return {"tokens": [_shown(row) for row in _tokens().listing()]}


@blp.post("/tokens")
@requires("admin")
@blp.arguments(TokenRequestSchema)
@blp.response(201, CreatedTokenSchema, description="Created; `token` is shown only now")
@blp.alt_response(409, description="A token of this name exists, or existed (a revoked "
                                    "token keeps its name)", **PROBLEM)
@blp.alt_response(422, description="A bad name or scope", **PROBLEM)
def create_token(body: dict[str, Any]):
    """Create a token and show it, this once

    Only its SHA-256 is stored: a lost token cannot be shown again; revoke it and create
    another under a new name.
    """
    tokens = _tokens()
    try:
        secret = tokens.create(body["name"], body["scope"])
    except TokenError as exc:  # the name and scope were checked above: only a taken name
        raise Problem(409, str(exc), "token-exists", {"name": ["is taken"]}) from exc
    row = next(r for r in tokens.listing() if r["name"] == body["name"])
    return {**_shown(row), "token": secret}, 201


@blp.delete("/tokens/<name>")
@requires("admin")
@blp.response(204, description="Revoked (or revoked already): refused from the next request "
                               "on by this API process, within a second by every other")
@blp.alt_response(404, description="No token has this name", **PROBLEM)
def revoke_token(name: str):
    """Revoke a token

    It keeps its row, so its name is never reused and still names it in runs' events.
    """
    if not NAME.fullmatch(name):  # no such name can exist; and keep NUL away from SQL
        raise Problem(404, f"no token is named {name!r}", "token-not-found")
    try:
        _tokens().revoke(name)
    except TokenError as exc:
        raise Problem(404, str(exc), "token-not-found") from exc
