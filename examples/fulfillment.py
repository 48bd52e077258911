"""The demo saga: order fulfillment across inventory, payment and shipping services.

validate order → reserve inventory → charge card → (create shipment ‖ email warehouse),
and in version 2 → wait for the shipping label (up to two days) → email the user.
Each step calls a demo service through `ctx.http`, which sends the step's idempotency key,
its attempt's fence and a traceparent, so a retried or redelivered step applies its effect
once and a superseded attempt is refused. `init_app` mounts the demo services and
`POST /orders` on the saga API (`SAGA_SAGAS=examples.fulfillment saga api`); the steps find
them at SAGA_DEMO_SERVICES_URL (`saga dev` sets it to its own address).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import requests
from marshmallow import Schema, fields, validate

from saga import NonRetryable, Parallel, Retry, Saga, Step, StepContext, WaitForSignal

DEFAULT_SERVICES_URL = "http://127.0.0.1:8000"


class ItemSchema(Schema):
    sku = fields.Str(required=True, validate=validate.Length(min=1, max=100))
    qty = fields.Int(required=True, strict=True, validate=validate.Range(min=1))


class OrderSchema(Schema):
    order_id = fields.Str(required=True, validate=validate.Length(min=1, max=100))
    items = fields.List(fields.Nested(ItemSchema), required=True, validate=validate.Length(min=1))
    amount_cents = fields.Int(required=True, strict=True, validate=validate.Range(min=1))
    card = fields.Str(required=True, metadata={"sensitive": True})  # masked in the console
    address = fields.Str(required=True)
    email = fields.Email(required=True, metadata={"sensitive": True})


class ServiceUnavailable(Exception):
    """A demo service answered 5xx or could not be reached; worth another attempt."""


def call(ctx: StepContext, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to a demo service as this step (ctx.http adds the key, fence and traceparent);
    4xx is final, 5xx retries."""
    base = os.environ.get("SAGA_DEMO_SERVICES_URL") or DEFAULT_SERVICES_URL
    try:
        response = ctx.http.post(f"{base}{path}", json=body, timeout=10)
    except requests.RequestException as exc:
        raise ServiceUnavailable(f"{path}: {exc}") from None
    if response.status_code >= 500 or response.status_code in (409, 429):
        raise ServiceUnavailable(f"{path} answered {response.status_code}")
    payload = response.json() if response.content else {}
    if response.status_code >= 400:
        raise NonRetryable(f"{path} answered {response.status_code}: "
                           f"{payload.get('detail') or payload.get('title') or payload}")
    return payload


def validate_order(ctx: StepContext) -> dict[str, Any]:
    # ctx.input is the order as OrderSchema loads it: reading it checks it once more.
    return {"order_id": ctx.input["order_id"]}


def reserve_inventory(ctx: StepContext) -> dict[str, Any]:
    return call(ctx, "/demo/inventory/reserve",
                {"order_id": ctx.input["order_id"], "items": ctx.input["items"]})


def release_inventory(ctx: StepContext) -> dict[str, Any]:
    return call(ctx, "/demo/inventory/release", {"order_id": ctx.input["order_id"]})


def charge_card(ctx: StepContext) -> dict[str, Any]:
    return call(ctx, "/demo/payment/charge", {"order_id": ctx.input["order_id"],
                                             "amount_cents": ctx.input["amount_cents"],
                                             "card": ctx.input["card"]})


def refund_card(ctx: StepContext) -> dict[str, Any]:
    return call(ctx, "/demo/payment/refund", {"order_id": ctx.input["order_id"]})


def create_shipment(ctx: StepContext) -> dict[str, Any]:
    return call(ctx, "/demo/shipping/create", {"order_id": ctx.input["order_id"],
                                              "address": ctx.input["address"]})


def cancel_shipment(ctx: StepContext) -> dict[str, Any]:
    return call(ctx, "/demo/shipping/cancel", {"order_id": ctx.input["order_id"]})


def email_warehouse(ctx: StepContext) -> dict[str, Any]:
    # The demo has no mail server: the message is the output, visible in the run.
    return {"to": "warehouse@example.com", "order_id": ctx.input["order_id"]}


QUICK_RETRY = Retry(attempts=5, first_delay=timedelta(milliseconds=200),
                    max_delay=timedelta(seconds=2), non_retryable=(NonRetryable,))

ORDER_AND_SHIP = [
    Step("validate_order", validate_order),
    Step("reserve_inventory", reserve_inventory, compensate=release_inventory, retry=QUICK_RETRY),
    Step("charge_card", charge_card, compensate=refund_card, retry=QUICK_RETRY),
    Parallel(
        Step("create_shipment", create_shipment, compensate=cancel_shipment, retry=QUICK_RETRY),
        Step("email_warehouse", email_warehouse),
    ),
]

order_fulfillment = Saga("order_fulfillment", version=1, input=OrderSchema,
                         timeout=timedelta(days=3), steps=ORDER_AND_SHIP)


class LabelSchema(Schema):
    tracking = fields.Str(required=True, validate=validate.Length(min=1, max=100))


def email_user(ctx: StepContext) -> dict[str, Any]:
    label = ctx.outputs["shipping_label"]
    return {"to": ctx.input["email"], "order_id": ctx.input["order_id"],
            "tracking": label["tracking"]}


# Version 2 waits for the carrier's label (up to two days) before telling the buyer. Runs
# that started on version 1 finish on version 1, which stays loaded beside it.
order_fulfillment_v2 = Saga("order_fulfillment", version=2, input=OrderSchema,
                            timeout=timedelta(days=3), steps=[
    *ORDER_AND_SHIP,
    WaitForSignal("shipping_label", timeout=timedelta(days=2), schema=LabelSchema),
    Step("email_user", email_user, timeout=timedelta(seconds=30)),
])


def init_app(app: Any, system: Any) -> None:
    """Mount the demo services and `POST /orders` on the saga API."""
    from examples.web import mount

    mount(app, system)
