"""Idempotent endpoints for services: store the Idempotency-Key and replay the first response.

The key row and the service's own effect commit in one transaction, so an effect is applied
once per key even when duplicates arrive together or a process dies half-way:

    requests = IdempotentRequests(engine)      # create_tables(engine) once, or migrate `metadata`

    @bp.post("/payment/charge")
    @idempotent(requests, scope="payment.charge")
    def charge(db):                            # db: the connection of the key's transaction
        db.execute(charges.insert().values(...))
        return {"charged": True}, 200          # stored, and replayed for the same key

Only responses below 500 are stored: a 5xx (or an exception) rolls back the key with the
effect, so the caller's next attempt with the same key runs again. The same key with
another body is a 422. PostgreSQL makes a concurrent duplicate wait on the key's unique
index until the first commits (READ COMMITTED, its default); SQLite, having one writer,
takes its write lock up front with `BEGIN IMMEDIATE`.

A request may also carry `Saga-Fence: <n>` (a saga step's `ctx.http` sends it: the fence
grows with every attempt of the step). The highest fence seen per key is kept in
`idempotency_fences`, beside the response; a request with a lower one comes from an
attempt the orchestrator has already replaced, and is refused with a 409 before the view
runs. A request without the header is not fenced.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple

import flask
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from saga.errors import IdempotencyConflict, SagaError

__all__ = ["IdempotentRequests", "Replay", "Slot", "StaleFence", "create_tables", "idempotent",
           "idempotency_fences", "idempotency_responses", "metadata", "problem"]

PROBLEM_JSON = "application/problem+json"
MAX_KEY_LENGTH = 255
MAX_FENCE_DIGITS = 18  # below 2**63: a BIGINT holds it
View = Callable[..., Any]

metadata = sa.MetaData()

idempotency_responses = sa.Table(
    "idempotency_responses", metadata,
    sa.Column("scope", sa.String(100), primary_key=True),
    sa.Column("key", sa.String(MAX_KEY_LENGTH), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    # Null only inside the transaction that inserted the key: a row commits with its response.
    sa.Column("status_code", sa.Integer),
    sa.Column("body", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              default=lambda: datetime.now(UTC)),
)

# The newest attempt's fence per key. A table of its own, so a database that already holds
# idempotency_responses gains it from create_tables (create_all) without an ALTER.
idempotency_fences = sa.Table(
    "idempotency_fences", metadata,
    sa.Column("scope", sa.String(100), primary_key=True),
    sa.Column("key", sa.String(MAX_KEY_LENGTH), primary_key=True),
    sa.Column("fence", sa.BigInteger, nullable=False),
)

# Each dialect's INSERT, for its ON CONFLICT DO NOTHING.
_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def create_tables(engine: sa.Engine) -> None:
    """Create `idempotency_responses` and `idempotency_fences` where missing (no migrations)."""
    metadata.create_all(engine)


class StaleFence(SagaError):
    """A later attempt of this step has called already: this one was superseded."""

    def __init__(self, fence: int, newest: int) -> None:
        super().__init__(f"a later attempt of this step (fence {newest}) has called already; "
                         f"this one (fence {fence}) was superseded")
        self.fence, self.newest = fence, newest


class Replay(NamedTuple):
    status_code: int
    body: Any


class Slot:
    """One key inside its transaction: replay the stored response, or apply and `respond`."""

    def __init__(self, connection: sa.Connection, scope: str, key: str,
                 replay: Replay | None) -> None:
        self.connection, self.scope, self.key, self.replay = connection, scope, key, replay
        self.responded = False

    def respond(self, status_code: int, body: Any) -> None:
        """Store the response that every later request with this key gets back."""
        if self.replay is not None or self.responded:
            raise RuntimeError(f"key {self.key!r} already has its response")
        self.connection.execute(
            idempotency_responses.update()
            .where(idempotency_responses.c.scope == self.scope,
                   idempotency_responses.c.key == self.key)
            .values(status_code=status_code, body=json.dumps(body)))
        self.responded = True


class IdempotentRequests:
    """Idempotency keys kept in `engine`'s database (PostgreSQL or SQLite)."""

    def __init__(self, engine: sa.Engine) -> None:
        if engine.dialect.name not in _INSERTS:
            raise ValueError(f"needs PostgreSQL or SQLite, not {engine.dialect.name}")
        self.engine = engine

    @contextmanager
    def begin(self, scope: str, key: str, request_hash: str,
              fence: int | None = None) -> Iterator[Slot]:
        """Open one transaction holding `key`; commit on exit, roll back (key too) on error.

        Raises IdempotencyConflict if the key was first used with another request_hash,
        StaleFence if `fence` is lower than one already seen for the key.
        """
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            # pysqlite starts no transaction before our first statement, and an engine
            # carrying SQLAlchemy's BEGIN IMMEDIATE recipe (as saga.store's does) has begun one.
            if conn.dialect.name == "sqlite" and not getattr(raw, "in_transaction", True):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            inserted = conn.execute(
                _INSERTS[conn.dialect.name](idempotency_responses)
                .values(scope=scope, key=key, request_hash=request_hash)
                .on_conflict_do_nothing()
                .returning(idempotency_responses.c.key)).first() is not None
            if fence is not None:  # after the key's insert, which serialises its requests
                _raise_fence(conn, scope, key, fence)
            if inserted:
                slot = Slot(conn, scope, key, replay=None)
                yield slot
                if not slot.responded:
                    raise RuntimeError(f"no response stored for key {key!r}: call slot.respond()")
                return
            row = conn.execute(sa.select(idempotency_responses).where(
                idempotency_responses.c.scope == scope,
                idempotency_responses.c.key == key)).one()
            if row.request_hash != request_hash:
                raise IdempotencyConflict()
            yield Slot(conn, scope, key, replay=Replay(row.status_code, json.loads(row.body)))


def idempotent(requests: IdempotentRequests, scope: str) -> Callable[[View], View]:
    """Make a Flask view idempotent on its `Idempotency-Key` header.

    The view gets the key's transaction as keyword `db` and returns (body, status);
    a status of 400 or more is sent as application/problem+json (see `problem`).
    """
    def decorate(view: View) -> View:
        @functools.wraps(view)
        def handle(*args: Any, **kwargs: Any) -> flask.Response:
            key = flask.request.headers.get("Idempotency-Key", "")
            if not key or len(key) > MAX_KEY_LENGTH:
                return _send(*problem(
                    400, "idempotency-key-required", "Idempotency-Key required",
                    f"send an Idempotency-Key header of 1 to {MAX_KEY_LENGTH} characters"))
            fence = flask.request.headers.get("Saga-Fence")
            if fence is not None and not (fence.isascii() and fence.isdigit()
                                          and len(fence) <= MAX_FENCE_DIGITS):
                return _send(*problem(
                    400, "invalid-fence", "Invalid Saga-Fence",
                    f"Saga-Fence must be a whole number of 1 to {MAX_FENCE_DIGITS} digits"))
            try:
                with requests.begin(scope, key, _request_hash(flask.request),
                                    None if fence is None else int(fence)) as slot:
                    if slot.replay is not None:
                        return _send(slot.replay.body, slot.replay.status_code, replayed=True)
                    body, status = view(*args, db=slot.connection, **kwargs)
                    if status >= 500:
                        raise _NotStored(body, status)
                    slot.respond(status, body)
            except IdempotencyConflict as error:
                return _send(*problem(422, "idempotency-key-reused", "Idempotency-Key reused",
                                      str(error)))
            except StaleFence as error:
                return _send(*problem(409, "stale-fence", "Superseded attempt", str(error)))
            except _NotStored as failure:
                return _send(failure.body, failure.status)
            return _send(body, status)
        return handle
    return decorate


def problem(status: int, slug: str, title: str, detail: str) -> tuple[dict[str, Any], int]:
    """An RFC 9457 problem body and its status, e.g. `return problem(402, "card-declined", ...)`."""
    return {"type": f"/problems/{slug}", "title": title, "status": status, "detail": detail}, status


def _raise_fence(conn: sa.Connection, scope: str, key: str, fence: int) -> None:
    """Keep `fence` as the key's newest; StaleFence if a higher one was seen."""
    table = idempotency_fences
    insert = _INSERTS[conn.dialect.name](table).values(scope=scope, key=key, fence=fence)
    kept = conn.execute(
        insert.on_conflict_do_update(index_elements=[table.c.scope, table.c.key],
                                     set_={"fence": insert.excluded.fence},
                                     where=table.c.fence <= insert.excluded.fence)
        .returning(table.c.fence)).first()
    if kept is None:
        newest = conn.execute(sa.select(table.c.fence).where(
            table.c.scope == scope, table.c.key == key)).scalar_one()
        raise StaleFence(fence, newest)


class _NotStored(Exception):
    def __init__(self, body: Any, status: int) -> None:
        super().__init__(status)
        self.body, self.status = body, status


def _request_hash(request: flask.Request) -> str:
    # The same JSON with other spacing or key order is the same request; a body that is not
    # JSON (or nested too deep to parse) is hashed as the bytes it is.
    try:
        payload = request.get_json(silent=True)
        data = request.get_data() if payload is None else json.dumps(
            payload, sort_keys=True, separators=(",", ":")).encode()
    except RecursionError:
        data = request.get_data()
    return hashlib.sha256(data).hexdigest()


def _send(body: Any, status: int, replayed: bool = False) -> flask.Response:
    response = flask.Response(json.dumps(body), status=status,
                              mimetype=PROBLEM_JSON if status >= 400 else "application/json")
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response
