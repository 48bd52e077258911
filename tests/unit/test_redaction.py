"""Secrets never printed: `redacted` URLs, scrubbed HTTP errors, and alert webhook logs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from saga.alerts import Alerts, scrub
from saga.settings import Settings, redacted
from saga.state import Alert
from tests.stack import free_port, wait_for

SECRET = "s3cr3t-Zq9"


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql+psycopg://saga:{SECRET}@db.internal:5432/saga",
     "postgresql+psycopg://saga:***@db.internal:5432/saga"),
    (f"amqp://guest:{SECRET}@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
    (f"redis://:{SECRET}@redis:6379/0", "redis://:***@redis:6379/0"),
    (f"rediss://default:{SECRET}@redis:6380/1", "rediss://default:***@redis:6380/1"),
    (f"postgresql://saga:{SECRET}@db/saga?sslmode=require&password={SECRET}",
     "postgresql://saga:***@db/saga?sslmode=require&password=***"),
    (f"postgresql://saga:p@ss/w#rd{SECRET}@db/saga", "postgresql://saga:***@db/saga"),
    ("sqlite:///var/lib/saga.db", "sqlite:///var/lib/saga.db"),
    ("memory://", "memory://"),
    ("postgresql://saga@db/saga", "postgresql://saga@db/saga"),
    (f"saga:{SECRET}@db", "…@db"),
], ids=["postgres", "amqp", "redis-password-only", "rediss", "secret-query", "odd-password",
        "sqlite", "memory", "no-password", "not-a-url"])
def test_redacted_hides_the_password_and_keeps_where(url, shown):
    assert redacted(url) == shown
    assert SECRET not in redacted(url)


@pytest.mark.parametrize(("url", "shown"), [
    (f"https://hooks.slack.com/services/T0/B0/{SECRET}", "https://hooks.slack.com/…"),
    (f"https://ops:{SECRET}@alerts.example.com:8443/hook?token={SECRET}",
     "https://alerts.example.com:8443/…"),
    (f"https://alerts.example.com?key={SECRET}", "https://alerts.example.com/…"),
    ("https://alerts.example.com", "https://alerts.example.com"),
])
def test_a_webhook_shows_only_scheme_and_host(url, shown):
    assert redacted(url, path=False) == shown


def test_a_refused_setting_names_the_url_without_its_password():
    with pytest.raises(ValueError) as caught:
        Settings.from_env({"SAGA_DATABASE_URL": f"mysql://saga:{SECRET}@db/saga"})
    assert "SAGA_DATABASE_URL" in str(caught.value) and SECRET not in str(caught.value)
    with pytest.raises(ValueError) as caught:
        Settings.from_env({"SAGA_ALERT_WEBHOOK": f"ftp://alerts.example.com/{SECRET}"})
    assert "SAGA_ALERT_WEBHOOK" in str(caught.value) and SECRET not in str(caught.value)


def test_scrub_removes_every_secret_part_of_the_url_from_a_message():
    url = f"https://ops:{SECRET}@alerts.example.com/hook/{SECRET}?token={SECRET}"
    message = (f"HTTPSConnectionPool(host='alerts.example.com', port=443): Max retries exceeded "
               f"with url: /hook/{SECRET}?token={SECRET} (Caused by ...) for {url}")
    cleaned = scrub(message, url)
    assert SECRET not in cleaned
    assert "alerts.example.com" in cleaned


# -- alerts: the webhook's secret stays out of the log, whatever happens ----------------------

class Hook(BaseHTTPRequestHandler):
    received: list[str] = []
    status = 200

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def hook_server() -> Iterator[tuple[str, type[Hook]]]:
    handler = type("ThisHook", (Hook,), {"received": [], "status": 500})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


def alert_logs(caplog: pytest.LogCaptureFixture, webhook: str, expect: str) -> str:
    with caplog.at_level(logging.INFO, logger="saga.alerts"):
        Alerts(webhook).send("run-1", "orders", Alert("timeout", "step 'charge' timed out",
                                                       "charge"))
        wait_for(lambda: any(expect in r.getMessage() for r in caplog.records), 10,
                 f"a log line with {expect!r}")
    return "\n".join(r.getMessage() for r in caplog.records)


def test_a_webhook_answering_an_error_is_logged_without_its_secret(caplog, hook_server):
    base, handler = hook_server
    webhook = f"{base.replace('//', f'//ops:{SECRET}@')}/hooks/{SECRET}?token={SECRET}"

    logged = alert_logs(caplog, webhook, "answered 500")

    assert handler.received == [f"/hooks/{SECRET}?token={SECRET}"]  # delivered in full
    assert SECRET not in logged
    assert f"alert webhook {base}/… answered 500" in logged


def test_an_unreachable_webhook_is_logged_without_its_secret(caplog):
    port = free_port()  # nothing listens there: the connection is refused
    webhook = f"http://ops:{SECRET}@127.0.0.1:{port}/hooks/{SECRET}?token={SECRET}"

    logged = alert_logs(caplog, webhook, "failed")

    assert SECRET not in logged
    assert f"alert webhook http://127.0.0.1:{port}/… failed" in logged
