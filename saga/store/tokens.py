"""API tokens in the saga log: create one, resolve a presented token, list and revoke them.

    tokens = TokenStore(system.store.engine)
    secret = tokens.create("ci", "operate")     # shown once; only its hash is stored
    tokens.resolve(secret)                       # Principal(name="ci", scope="operate")
    tokens.revoke("ci")                          # refused at once here, within CACHE_S elsewhere

A live token's principal is remembered for CACHE_S (1 s) in each process: a start through
the API then costs no lookup (a pooled connection, its ping, a query and a rollback, about
a quarter of the database round trips of a start). A revocation is seen at once by the
process that made it and within CACHE_S by every other; an unknown or revoked token is
never remembered, so it is looked up on each request as before.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from saga.clock import utcnow
from saga.errors import TokenError
from saga.store.tables import tokens

__all__ = ["SCOPES", "Principal", "TokenError", "TokenStore", "hash_token", "new_token"]

SCOPES = ("read", "operate", "admin")  # each includes the ones before it
PREFIX = "saga_"  # makes a leaked token recognisable to people and secret scanners
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,99}")
MAX_TOKEN_CHARS = 200  # ours are 48; anything much longer is not worth hashing
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token
CACHE_S = 1.0  # a live token is looked up again after this: how late another process sees a revocation
MAX_CACHED = 1000  # live tokens remembered per process; past it, all are forgotten at once


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name (None with SAGA_AUTH=off) and its scope."""

    name: str | None
    scope: str

    def allows(self, needed: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def new_token() -> str:
    """256 random bits, URL-safe, with the recognisable prefix."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # A plain sha256 is enough: a token has 256 bits of entropy, so unlike a password it
    # cannot be guessed from its hash, and a slow KDF would only slow every request.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# (database, token hash) -> (monotonic time it is looked up again, principal): one per
# process, so that a revocation through any TokenStore of this process forgets it at once.
_live: dict[tuple[sa.URL, str], tuple[float, Principal]] = {}
_revocations = [0]  # revocations made by this process: a lookup older than one is not kept
_lock = threading.Lock()  # keeping a lookup and forgetting a token exclude each other


class TokenStore:
    """The `tokens` table; `resolve` remembers a live token for `cache_s` (0: never)."""

    def __init__(self, engine: sa.Engine, cache_s: float = CACHE_S) -> None:
        self.engine = engine
        self.cache_s = cache_s

    def create(self, name: str, scope: str) -> str:
        """Store a new token's hash and return the token itself (it is never stored)."""
        if not NAME.fullmatch(name):
            raise TokenError(f"token name {name!r} must be 1 to 100 letters, digits or . _ @ : - "
                             "starting with a letter or digit")
        if scope not in SCOPES:
            raise TokenError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
        token = new_token()
        try:
            with self.engine.begin() as conn:
                conn.execute(tokens.insert().values(
                    name=name, scope=scope, token_hash=hash_token(token),
                    created_at=utcnow()))
        except sa.exc.IntegrityError:
            raise TokenError(f"a token named {name!r} exists already (a revoked token keeps "
                             "its name, so that the name in a run's events means one token)"
                             ) from None
        return token

    def resolve(self, token: str) -> Principal | None:
        """The principal of a live token; None for an unknown, malformed or revoked one."""
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = hash_token(token)
        key = (self.engine.url, digest)
        remembered = _live.get(key)
        if remembered is not None and remembered[0] > time.monotonic():
            return remembered[1]
        revocations = _revocations[0]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(
                tokens.c.name, tokens.c.scope, tokens.c.token_hash, tokens.c.revoked_at,
                tokens.c.last_used_at).where(tokens.c.token_hash == digest)).first()
        # The index finds the row by equality; the final check is constant-time anyway.
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        if row.revoked_at is not None:
            _live.pop(key, None)
            return None
        self._touch(row.name, _aware(row.last_used_at))
        principal = Principal(row.name, row.scope)
        if self.cache_s > 0:
            with _lock:
                if revocations == _revocations[0]:
                    if len(_live) >= MAX_CACHED:
                        _live.clear()
                    _live[key] = (time.monotonic() + self.cache_s, principal)
        return principal

    def listing(self) -> list[dict[str, Any]]:
        """Every token, live and revoked, by name; no hash, no secret."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(
                tokens.c.name, tokens.c.scope, tokens.c.created_at, tokens.c.last_used_at,
                tokens.c.revoked_at).order_by(tokens.c.name)).mappings().all()
        return [{key: _aware(value) if isinstance(value, datetime) else value
                 for key, value in row.items()} for row in rows]

    def revoke(self, name: str) -> bool:
        """Revoke the token; False if it was revoked already. TokenError if there is none."""
        with self.engine.begin() as conn:
            done = conn.execute(tokens.update().where(
                tokens.c.name == name, tokens.c.revoked_at.is_(None)).values(
                    revoked_at=utcnow()))
            exists = done.rowcount or conn.execute(
                sa.select(tokens.c.name).where(tokens.c.name == name)).first()
        if done.rowcount:
            self._forget(name)  # after the commit: a lookup meanwhile may have kept it
            return True
        if exists is None:
            raise TokenError(f"no token is named {name!r}")
        return False

    def _forget(self, name: str) -> None:
        """This process refuses the token from now on (others within CACHE_S)."""
        with _lock:
            _revocations[0] += 1
            for key, (_, principal) in list(_live.items()):
                if key[0] == self.engine.url and principal.name == name:
                    del _live[key]

    def _touch(self, name: str, last_used_at: datetime | None) -> None:
        # A write per request would cost more than the lookup: one a minute is enough to
        # tell a token in use from a forgotten one.
        now = utcnow()
        if last_used_at is not None and now - last_used_at < TOUCH_EVERY:
            return
        with self.engine.begin() as conn:
            conn.execute(tokens.update().where(tokens.c.name == name).values(last_used_at=now))


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; they were stored in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
