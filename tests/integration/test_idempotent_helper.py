"""The idempotent-endpoint helper and the demo services, on real PostgreSQL and on a SQLite file."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flask
import pytest
import sqlalchemy as sa

from examples.services import create_tables, demo_effects, make_demo_services
from saga.errors import IdempotencyConflict
from saga.helpers.idempotent import IdempotentRequests

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CONCURRENT_REQUESTS = 20


def _postgres_admin() -> sa.Engine:
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": 3})
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as error:
        admin.dispose()
        message = f"PostgreSQL not reachable at {POSTGRES_URL}: {error.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return admin


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('idempotent')}/services.db")
        create_tables(engine)
        yield engine
        engine.dispose()
        return
    admin = _postgres_admin()
    schema = f"idempotent_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = sa.create_engine(POSTGRES_URL, pool_size=CONCURRENT_REQUESTS, max_overflow=5,
                              connect_args={"options": f"-csearch_path={schema}"})
    try:
        create_tables(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(scope="module")
def app(engine: sa.Engine) -> flask.Flask:
    app = flask.Flask(__name__)
    app.register_blueprint(make_demo_services(engine))
    return app


@pytest.fixture
def client(app: flask.Flask) -> flask.testing.FlaskClient:
    return app.test_client()


@pytest.fixture
def order_id() -> str:
    return f"order-{uuid.uuid4().hex[:10]}"


def new_key() -> str:
    return uuid.uuid4().hex


def post(client: flask.testing.FlaskClient, path: str, body: dict[str, Any],
         key: str | None) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(path, json=body, headers=headers)


def effects(client: flask.testing.FlaskClient, order_id: str) -> list[dict[str, Any]]:
    response = client.get("/demo/effects", query_string={"order_id": order_id})
    assert response.status_code == 200
    return response.get_json()["effects"]


def actions(client: flask.testing.FlaskClient, order_id: str) -> list[str]:
    return [effect["action"] for effect in effects(client, order_id)]


def assert_problem(response: Any, status: int, type_ending: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == status
    assert problem["type"].endswith(type_ending)
    assert problem["title"] and problem["detail"]
    return problem


def test_given_a_used_key_when_the_request_repeats_then_it_replays_and_applies_one_effect(
        client, order_id):
    key = new_key()
    body = {"order_id": order_id, "items": [{"sku": "mug", "qty": 2}]}
    first = post(client, "/demo/inventory/reserve", body, key)
    second = post(client, "/demo/inventory/reserve", body, key)

    assert first.status_code == second.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.get_json() == first.get_json()
    assert [(e["action"], e["idempotency_key"]) for e in effects(client, order_id)] == [("reserve", key)]


def test_given_a_used_key_when_another_body_comes_with_it_then_422_and_no_second_effect(client, order_id):
    key = new_key()
    post(client, "/demo/inventory/reserve", {"order_id": order_id, "items": [{"sku": "mug", "qty": 1}]}, key)

    reused = post(client, "/demo/inventory/reserve",
                  {"order_id": order_id, "items": [{"sku": "mug", "qty": 5}]}, key)

    assert_problem(reused, 422, "idempotency-key-reused")
    assert actions(client, order_id) == ["reserve"]


def test_given_no_idempotency_key_header_when_posting_then_400_names_the_header_and_nothing_applies(
        client, order_id):
    response = post(client, "/demo/inventory/reserve", {"order_id": order_id, "items": []}, key=None)

    problem = assert_problem(response, 400, "idempotency-key-required")
    assert "Idempotency-Key" in problem["detail"]
    assert actions(client, order_id) == []


def test_given_20_concurrent_requests_with_one_key_then_exactly_one_charge_and_one_response(app, order_id):
    key = new_key()
    body = {"order_id": order_id, "amount_cents": 4200, "card": "visa"}
    everyone_ready = threading.Barrier(CONCURRENT_REQUESTS)

    def charge(_: int) -> tuple[int, Any, bool]:
        client = app.test_client()
        everyone_ready.wait()
        response = post(client, "/demo/payment/charge", body, key)
        return response.status_code, response.get_json(), "Idempotent-Replayed" in response.headers

    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        results = list(pool.map(charge, range(CONCURRENT_REQUESTS)))

    assert {status for status, _, _ in results} == {200}
    assert len({str(body) for _, body, _ in results}) == 1
    assert sorted(replayed for _, _, replayed in results) == [False] + [True] * (CONCURRENT_REQUESTS - 1)
    assert actions(app.test_client(), order_id) == ["charge"]


def test_given_a_declined_card_when_charging_then_402_card_declined_is_kept_and_nothing_is_charged(
        client, order_id):
    key = new_key()
    body = {"order_id": order_id, "amount_cents": 4200, "card": "declined"}

    first = post(client, "/demo/payment/charge", body, key)
    again = post(client, "/demo/payment/charge", body, key)

    assert_problem(first, 402, "card-declined")
    assert_problem(again, 402, "card-declined")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert actions(client, order_id) == []


def test_given_a_flaky_card_when_retrying_with_one_key_then_503_503_200_and_one_charge(client, order_id):
    key = new_key()
    body = {"order_id": order_id, "amount_cents": 1999, "card": "flaky"}

    statuses = [post(client, "/demo/payment/charge", body, key).status_code for _ in range(3)]
    replay = post(client, "/demo/payment/charge", body, key)

    assert statuses == [503, 503, 200]
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert [(e["action"], e["amount_cents"]) for e in effects(client, order_id)] == [("charge", 1999)]


def test_given_a_503_attempt_then_it_is_a_problem_and_not_replayed(client, order_id):
    key = new_key()
    body = {"order_id": order_id, "amount_cents": 100, "card": "flaky"}

    failed = post(client, "/demo/payment/charge", body, key)
    retried = post(client, "/demo/payment/charge", body, key)

    assert_problem(failed, 503, "gateway-unavailable")
    assert "Idempotent-Replayed" not in retried.headers
    assert actions(client, order_id) == []


def test_given_no_reservation_when_releasing_then_released_false_and_no_effect(client, order_id):
    response = post(client, "/demo/inventory/release", {"order_id": order_id}, new_key())

    assert response.status_code == 200 and response.get_json() == {"released": False}
    assert actions(client, order_id) == []


def test_given_a_reservation_when_releasing_then_released_once(client, order_id):
    post(client, "/demo/inventory/reserve", {"order_id": order_id, "items": [{"sku": "mug", "qty": 1}]},
         new_key())

    first = post(client, "/demo/inventory/release", {"order_id": order_id}, new_key())
    second = post(client, "/demo/inventory/release", {"order_id": order_id}, new_key())

    assert first.get_json() == {"released": True}
    assert second.get_json() == {"released": False}
    assert actions(client, order_id) == ["reserve", "release"]


def test_given_a_charge_when_refunding_twice_with_different_keys_then_one_refund_of_the_charged_amount(
        client, order_id):
    # Decision: an undo applies once per order, whatever its key; its own key only replays.
    post(client, "/demo/payment/charge", {"order_id": order_id, "amount_cents": 750, "card": "visa"},
         new_key())

    first = post(client, "/demo/payment/refund", {"order_id": order_id}, new_key())
    second = post(client, "/demo/payment/refund", {"order_id": order_id}, new_key())

    assert first.get_json() == {"refunded": True}
    assert second.get_json() == {"refunded": False}
    assert [(e["action"], e["amount_cents"]) for e in effects(client, order_id)] == [
        ("charge", 750), ("refund", 750)]


def test_given_a_charge_when_refunds_with_different_keys_race_then_one_refund(app, order_id):
    post(app.test_client(), "/demo/payment/charge",
         {"order_id": order_id, "amount_cents": 300, "card": "visa"}, new_key())
    racers = 10
    everyone_ready = threading.Barrier(racers)

    def refund(_: int) -> Any:
        client = app.test_client()
        everyone_ready.wait()
        return post(client, "/demo/payment/refund", {"order_id": order_id}, new_key()).get_json()

    with ThreadPoolExecutor(racers) as pool:
        answers = list(pool.map(refund, range(racers)))

    assert sorted(answer["refunded"] for answer in answers) == [False] * (racers - 1) + [True]
    assert actions(app.test_client(), order_id) == ["charge", "refund"]


def test_given_no_charge_when_refunding_then_refunded_false(client, order_id):
    response = post(client, "/demo/payment/refund", {"order_id": order_id}, new_key())

    assert response.get_json() == {"refunded": False}
    assert actions(client, order_id) == []


def test_given_an_undeliverable_address_when_creating_a_shipment_then_422_and_no_effect(client, order_id):
    response = post(client, "/demo/shipping/create", {"order_id": order_id, "address": "nowhere"}, new_key())

    assert_problem(response, 422, "undeliverable")
    assert actions(client, order_id) == []


def test_given_a_shipment_when_cancelling_twice_then_cancelled_once(client, order_id):
    created = post(client, "/demo/shipping/create", {"order_id": order_id, "address": "1 Main St"}, new_key())
    first = post(client, "/demo/shipping/cancel", {"order_id": order_id}, new_key())
    second = post(client, "/demo/shipping/cancel", {"order_id": order_id}, new_key())

    assert created.status_code == 200 and created.get_json()["shipment_id"].startswith("shp-")
    assert (first.get_json(), second.get_json()) == ({"cancelled": True}, {"cancelled": False})
    assert actions(client, order_id) == ["ship", "cancel"]


def test_given_a_body_without_a_required_field_then_400_and_the_key_stays_unused(client, order_id):
    key = new_key()
    invalid = post(client, "/demo/shipping/create", {"order_id": order_id}, key)
    valid = post(client, "/demo/shipping/create", {"order_id": order_id, "address": "1 Main St"}, key)

    assert_problem(invalid, 400, "invalid-body")
    assert valid.status_code == 200 and "Idempotent-Replayed" not in valid.headers


def test_effects_are_listed_oldest_first(client, order_id):
    post(client, "/demo/inventory/reserve", {"order_id": order_id, "items": [{"sku": "mug", "qty": 1}]},
         new_key())
    post(client, "/demo/payment/charge", {"order_id": order_id, "amount_cents": 500, "card": "visa"},
         new_key())
    post(client, "/demo/shipping/create", {"order_id": order_id, "address": "1 Main St"}, new_key())

    listed = effects(client, order_id)

    assert [e["action"] for e in listed] == ["reserve", "charge", "ship"]
    assert [e["id"] for e in listed] == sorted(e["id"] for e in listed)
    assert [e["applied_at"] for e in listed] == sorted(e["applied_at"] for e in listed)
    assert {e["service"] for e in listed} == {"inventory", "payment", "shipping"}


def test_given_an_error_inside_the_slot_then_the_key_and_the_effect_roll_back(engine, order_id):
    requests, key = IdempotentRequests(engine), new_key()

    def insert_effect(db: sa.Connection) -> None:
        db.execute(demo_effects.insert().values(service="test", action="probe", order_id=order_id,
                                                idempotency_key=key, detail={}))

    with pytest.raises(RuntimeError, match="crashed"), requests.begin("test.probe", key, "hash-a") as slot:
        insert_effect(slot.connection)
        raise RuntimeError("crashed before responding")
    with requests.begin("test.probe", key, "hash-a") as retry:
        assert retry.replay is None
        insert_effect(retry.connection)
        retry.respond(201, {"probe": 1})
    with requests.begin("test.probe", key, "hash-a") as duplicate:
        assert tuple(duplicate.replay) == (201, {"probe": 1})
    with pytest.raises(IdempotencyConflict), requests.begin("test.probe", key, "hash-b"):
        pass
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(demo_effects)
                             .where(demo_effects.c.order_id == order_id)).scalar_one()
    assert count == 1


def test_given_a_sqlite_engine_that_already_begins_immediate_then_the_helper_commits_and_replays(tmp_path):
    # SQLAlchemy's documented pysqlite recipe, as saga.store installs it on its own engine.
    engine = sa.create_engine(f"sqlite:///{tmp_path}/recipe.db")
    sa.event.listen(engine, "connect", lambda dbapi, _: setattr(dbapi, "isolation_level", None))
    sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    create_tables(engine)
    requests = IdempotentRequests(engine)

    with requests.begin("test.recipe", "key-1", "hash") as slot:
        slot.connection.execute(demo_effects.insert().values(
            service="test", action="probe", order_id="order-1", idempotency_key="key-1", detail={}))
        slot.respond(200, {"ok": True})
    with requests.begin("test.recipe", "key-1", "hash") as duplicate:
        replay = duplicate.replay

    assert tuple(replay) == (200, {"ok": True})
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(demo_effects)).scalar_one() == 1
    engine.dispose()
