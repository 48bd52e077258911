import uuid
from tests.integration.test_namespaces import *  # noqa
from tests.integration.test_namespaces import deployment, start, place_orders, wait_all_succeeded, SLOW_REDISPATCH_S, MESSAGE_PER_STEP, DEADLINE_S, foreign_warnings


def test_probe(new_database, tmp_path):
    broker_url = "redis://127.0.0.1:6379/0"
    env = {"SAGA_REDISPATCH_S": SLOW_REDISPATCH_S, **MESSAGE_PER_STEP, "SAGA_QUEUE": "saga-probe-" + uuid.uuid4().hex[:6]}
    with deployment(new_database(), broker_url, tmp_path / "a", env) as a, \
            deployment(new_database(), broker_url, tmp_path / "b", env) as b:
        for stack in (a, b):
            start(stack)
        placed = place_orders([a, b])
        try:
            wait_all_succeeded([a, b], placed, DEADLINE_S)
        finally:
            print("PROBE warnings", len(foreign_warnings(a) + foreign_warnings(b)))
