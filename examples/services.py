"""The demo inventory, payment and shipping services that the order-fulfillment saga calls.

Every POST takes an `Idempotency-Key` header and goes through `saga.helpers.idempotent`, so a
repeated key replays the first response and applies its effect once, and a `Saga-Fence` below
one already seen for the key (a superseded attempt) is a 409. A step's `ctx.http` sends both
headers. Each applied effect
is a `demo_effects` row, which `GET /demo/effects?order_id=` lists for tests and the demo.

Requests are read as strictly as the orchestrator's API reads them: a body that is not a
JSON object, a field of the wrong type or range, or text PostgreSQL cannot store (NUL, a
lone surrogate) is a 400 problem naming what is wrong, never a 500.

Cards: "declined" is refused for good (402); "flaky" fails with 503 on its first
`FLAKY_FAILURES` attempts per order, then charges. Address "nowhere" is undeliverable (422).
An undo (release, refund, cancel) applies at most once per order, whatever its key: a
second one, even with another key, answers 200 with {"released"/"refunded"/"cancelled": false}.

    create_tables(engine)
    app.register_blueprint(make_demo_services(engine))
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import flask
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from saga.helpers.idempotent import PROBLEM_JSON, IdempotentRequests, idempotent, problem
from saga.helpers.idempotent import create_tables as create_idempotency_tables
from saga.store.text import unstorable

__all__ = ["DECLINED_CARD", "FLAKY_CARD", "FLAKY_FAILURES", "UNDELIVERABLE_ADDRESS",
           "create_tables", "demo_effects", "make_demo_services", "metadata"]

DECLINED_CARD = "declined"
FLAKY_CARD = "flaky"
FLAKY_FAILURES = 2
UNDELIVERABLE_ADDRESS = "nowhere"
UNDO_ACTIONS = ("release", "refund", "cancel")
MAX_ORDER_ID = 100  # demo_effects.order_id
MAX_TEXT = 1000
MAX_CENTS = 2**31 - 1  # demo_effects.amount_cents is a PostgreSQL integer
MAX_DEPTH = 20

metadata = sa.MetaData()

demo_effects = sa.Table(
    "demo_effects", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("service", sa.String(20), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("order_id", sa.String(100), nullable=False),
    sa.Column("amount_cents", sa.Integer),
    sa.Column("detail", sa.JSON, nullable=False, default=dict),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False,
              default=lambda: datetime.now(UTC)),
    sa.Index("demo_effects_order", "order_id", "id"),
)
# One undo per order: a concurrent second undo waits on this index, then does nothing.
_undo_where = demo_effects.c.action.in_(UNDO_ACTIONS)
sa.Index("demo_effects_one_undo", demo_effects.c.order_id, demo_effects.c.action, unique=True,
         postgresql_where=_undo_where, sqlite_where=_undo_where)

# Committed apart from the charge, so a failed attempt still counts.
demo_charge_attempts = sa.Table(
    "demo_charge_attempts", metadata,
    sa.Column("order_id", sa.String(100), primary_key=True),
    sa.Column("attempts", sa.Integer, nullable=False),
)

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def create_tables(engine: sa.Engine) -> None:
    """Create the demo tables and the idempotency table they rely on."""
    metadata.create_all(engine)
    create_idempotency_tables(engine)


class InvalidBody(Exception):
    """The request is not one these services read: the message says what is wrong."""


def make_demo_services(engine: sa.Engine) -> flask.Blueprint:
    """The demo services as one blueprint under /demo, keeping their state in `engine`."""
    requests = IdempotentRequests(engine)
    bp = flask.Blueprint("demo_services", __name__, url_prefix="/demo")

    @bp.errorhandler(InvalidBody)
    def invalid_body(error: InvalidBody) -> flask.Response:
        body, status = problem(400, "invalid-body", "Invalid request", str(error))
        return flask.Response(flask.json.dumps(body), status, mimetype=PROBLEM_JSON)

    @bp.before_request
    def read_strictly() -> flask.Response | None:
        # Before the idempotency helper, which stores the key and hashes the body.
        try:
            _check_request(flask.request)
        except InvalidBody as error:
            return invalid_body(error)
        return None

    @bp.post("/inventory/reserve")
    @idempotent(requests, "inventory.reserve")
    def reserve(db: sa.Connection) -> tuple[dict[str, Any], int]:
        order_id, items = _fields(order_id=str, items=list)
        effect_id = _apply(db, "inventory", "reserve", order_id, detail={"items": items})
        return {"reservation_id": f"res-{effect_id}"}, 200

    @bp.post("/inventory/release")
    @idempotent(requests, "inventory.release")
    def release(db: sa.Connection) -> tuple[dict[str, Any], int]:
        (order_id,) = _fields(order_id=str)
        return {"released": _undo(db, "inventory", "release", order_id, of="reserve")}, 200

    @bp.post("/payment/charge")
    def charge() -> flask.Response:
        (order_id,) = _fields(order_id=str)
        return charge_once(attempt=_count_charge_attempt(engine, order_id))

    @idempotent(requests, "payment.charge")
    def charge_once(db: sa.Connection, attempt: int) -> tuple[dict[str, Any], int]:
        order_id, amount_cents, card = _fields(order_id=str, amount_cents=int, card=str)
        if card == DECLINED_CARD:
            return problem(402, "card-declined", "Card declined",
                           "the card was declined; another attempt will not change that")
        if card == FLAKY_CARD and attempt <= FLAKY_FAILURES:
            return problem(503, "gateway-unavailable", "Payment gateway unavailable",
                           f"attempt {attempt} failed; try again")
        effect_id = _apply(db, "payment", "charge", order_id, amount_cents, detail={"card": card})
        return {"charge_id": f"ch-{effect_id}", "amount_cents": amount_cents}, 200

    @bp.post("/payment/refund")
    @idempotent(requests, "payment.refund")
    def refund(db: sa.Connection) -> tuple[dict[str, Any], int]:
        (order_id,) = _fields(order_id=str)
        return {"refunded": _undo(db, "payment", "refund", order_id, of="charge")}, 200

    @bp.post("/shipping/create")
    @idempotent(requests, "shipping.create")
    def create_shipment(db: sa.Connection) -> tuple[dict[str, Any], int]:
        order_id, address = _fields(order_id=str, address=str)
        if address == UNDELIVERABLE_ADDRESS:
            return problem(422, "undeliverable", "Undeliverable address",
                           f"no carrier delivers to {address!r}")
        effect_id = _apply(db, "shipping", "ship", order_id, detail={"address": address})
        return {"shipment_id": f"shp-{effect_id}"}, 200

    @bp.post("/shipping/cancel")
    @idempotent(requests, "shipping.cancel")
    def cancel_shipment(db: sa.Connection) -> tuple[dict[str, Any], int]:
        (order_id,) = _fields(order_id=str)
        return {"cancelled": _undo(db, "shipping", "cancel", order_id, of="ship")}, 200

    @bp.get("/effects")
    def list_effects() -> dict[str, Any]:
        query = sa.select(demo_effects).order_by(demo_effects.c.id)
        if order_id := flask.request.args.get("order_id"):
            query = query.where(demo_effects.c.order_id == order_id)
        with engine.connect() as conn:
            return {"effects": [_effect_json(row) for row in conn.execute(query).mappings()]}

    return bp


def _check_request(request: flask.Request) -> None:
    """The Idempotency-Key, the order_id filter and a POST's body: text the tables can hold."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not key.isprintable():
        raise InvalidBody("Idempotency-Key must not contain control characters")
    if "order_id" in request.args:
        _check_field("order_id", request.args["order_id"], str)
    if request.method == "POST":
        flask.g.body = _json_object(request.get_data(cache=True))


def _json_object(raw: bytes) -> dict[str, Any]:
    """RFC 8259 JSON only (no NaN, no 1e400), an object, at most MAX_DEPTH deep."""
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise InvalidBody(f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as error:
        raise InvalidBody(f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidBody("the body must be a JSON object")
    _check_nested(body)
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _check_nested(body: dict[str, Any]) -> None:
    """Every key and string, however deep: no NUL, no lone surrogate; no deeper than MAX_DEPTH."""
    pending: list[tuple[str, Any, int]] = [("", body, 1)]
    while pending:  # a loop, not recursion: the depth is the client's choice
        path, value, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise InvalidBody(f"the body is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, child in value.items():
                where = f"{path}.{key}" if path else key
                _check_text(where, key)
                pending.append((where, child, depth + 1))
        elif isinstance(value, list):
            pending.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(value))
        elif isinstance(value, str):
            _check_text(path, value)


def _check_text(where: str, text: str) -> None:
    if unstorable(text):
        raise InvalidBody(f"{where!r}: text must not contain NUL or unpaired surrogates")


def _fields(**types: type) -> list[Any]:
    """The named fields of the JSON body, in order, each checked against its type and range."""
    body = flask.g.body
    for name, kind in types.items():
        _check_field(name, body.get(name), kind)
    return [body[name] for name in types]


def _check_field(name: str, value: Any, kind: type) -> None:
    if kind is str:
        limit = MAX_ORDER_ID if name == "order_id" else MAX_TEXT
        if not (isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()):
            raise InvalidBody(f"{name}: must be 1 to {limit} printable characters")
    elif kind is int:  # bool is an int to Python, not to a client
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CENTS:
            raise InvalidBody(f"{name}: must be a whole number from 1 to {MAX_CENTS}")
    elif not isinstance(value, kind):
        raise InvalidBody(f"{name}: must be a JSON {'array' if kind is list else kind.__name__}")


def _apply(db: sa.Connection, service: str, action: str, order_id: str,
           amount_cents: int | None = None, detail: dict[str, Any] | None = None) -> int | None:
    """Record one effect under the request's key; None if an undo for the order exists."""
    return db.execute(
        _INSERTS[db.dialect.name](demo_effects)
        .values(service=service, action=action, order_id=order_id, amount_cents=amount_cents,
                idempotency_key=flask.request.headers["Idempotency-Key"], detail=detail or {})
        .on_conflict_do_nothing()
        .returning(demo_effects.c.id)).scalar_one_or_none()


def _undo(db: sa.Connection, service: str, action: str, order_id: str, of: str) -> bool:
    """Apply `action` once per order, only after an `of` effect; whether it applied now."""
    done = db.execute(sa.select(demo_effects.c.amount_cents).where(
        demo_effects.c.order_id == order_id, demo_effects.c.action == of)
        .order_by(demo_effects.c.id).limit(1)).first()
    if done is None:
        return False
    return _apply(db, service, action, order_id, amount_cents=done.amount_cents) is not None


def _count_charge_attempt(engine: sa.Engine, order_id: str) -> int:
    """Count one more charge attempt for the order, in its own transaction; return the count."""
    table = demo_charge_attempts
    with engine.begin() as conn:
        return conn.execute(
            _INSERTS[conn.dialect.name](table).values(order_id=order_id, attempts=1)
            .on_conflict_do_update(index_elements=[table.c.order_id],
                                   set_={"attempts": table.c.attempts + 1})
            .returning(table.c.attempts)).scalar_one()


def _effect_json(row: Any) -> dict[str, Any]:
    applied_at = row["applied_at"]
    if applied_at.tzinfo is None:  # SQLite keeps no zone; we stored UTC
        applied_at = applied_at.replace(tzinfo=UTC)
    return {"id": row["id"], "service": row["service"], "action": row["action"],
            "idempotency_key": row["idempotency_key"], "order_id": row["order_id"],
            "amount_cents": row["amount_cents"], "applied_at": applied_at.isoformat()}
