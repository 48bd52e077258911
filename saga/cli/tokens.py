"""`saga token`: create, list and revoke the API's bearer tokens in SAGA_DATABASE_URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import click

from saga.cli.common import settings as _settings
from saga.errors import TokenError
from saga.store.tokens import SCOPES, TokenStore


@contextmanager
def _tokens() -> Iterator[TokenStore]:
    from saga.store import Store

    store = Store(_settings().database_url)
    try:
        yield TokenStore(store.engine)
    finally:
        store.close()


@click.group()
def token() -> None:
    """API tokens: each has a name, shown in the events it causes, and a scope.

    \b
    read     runs, events, sagas, schedules and backfills
    operate  read, and start runs and send signals
    admin    operate, and cancel, retry, backfill, pause schedules, manage tokens
    """


@token.command()
@click.argument("name")
@click.option("--scope", required=True, type=click.Choice(SCOPES),
              help="what the token may do (each scope includes the ones before it)")
def create(name: str, scope: str) -> None:
    """Create a token NAME and print it, as the last line, this once.

    Only its hash is stored: a lost token cannot be shown again; revoke it and create
    another (under a new name).
    """
    with _tokens() as tokens:
        try:
            secret = tokens.create(name, scope)
        except TokenError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"token {name!r} created with scope {scope!r}; it is shown only now. "
               "Send it as `Authorization: Bearer <token>`:", err=True)
    click.echo(secret)


@token.command(name="list")
def list_tokens() -> None:
    """List the tokens: name, scope, created, last used and revoked (never the secrets)."""
    with _tokens() as tokens:
        rows = tokens.listing()
    if not rows:
        click.echo("no tokens; create one with `saga token create NAME --scope admin`", err=True)
        return
    width = max(len("NAME"), *(len(r["name"]) for r in rows))
    click.echo(f"{'NAME':<{width}}  {'SCOPE':<7}  {'CREATED':<20}  {'LAST USED':<20}  REVOKED")
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['scope']:<7}  {_when(r['created_at']):<20}  "
                   f"{_when(r['last_used_at']):<20}  {_when(r['revoked_at'])}")


@token.command()
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke the token NAME: every API process refuses it from its next request on."""
    with _tokens() as tokens:
        try:
            revoked = tokens.revoke(name)
        except TokenError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"token {name!r} {'revoked' if revoked else 'was revoked already'}")


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"
