"""The demo's web side: `POST /orders` and the demo services, mounted on the saga API."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from examples.services import create_tables, make_demo_services
from saga.errors import InvalidInput


def mount(app: Any, system: Any) -> None:
    engine = system.store.engine
    create_tables(engine)
    app.register_blueprint(make_demo_services(engine))
    app.register_blueprint(_orders(system))


def _orders(system: Any) -> Blueprint:
    orders = Blueprint("demo_orders", __name__)

    @orders.post("/orders")
    def place_order():
        """Start the fulfillment saga; the order id doubles as the idempotency key."""
        order = request.get_json(silent=True)
        if not isinstance(order, dict):
            return _problem(400, "Bad Request", "the body must be a JSON object (an order)")
        key = request.headers.get("Idempotency-Key") or f"order:{order.get('order_id')}"
        try:
            run_id, created = system.engine.start("order_fulfillment", order, key)
        except InvalidInput as exc:
            return _problem(422, "Invalid order", str(exc), errors=exc.errors)
        location = f"/v1/runs/{run_id}"
        body = {"order_id": order["order_id"], "run_id": run_id, "run": location}
        return jsonify(body), 201 if created else 200, {"Location": location}

    return orders


def _problem(status: int, title: str, detail: str, **extra: Any):
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return jsonify(body), status, {"Content-Type": "application/problem+json"}
