"""The console's sign-in: a session cookie holding an API token, encrypted, checked on every
request like the API's bearer token; CSRF on every POST; sign-out; SAGA_AUTH=off.

Each test runs the app in-process on a copy of a migrated SQLite log (tokens are rows in
it, as on PostgreSQL); tests/integration/test_console_runs.py signs in on PostgreSQL.
"""

from __future__ import annotations

import base64
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import pytest
from werkzeug.exceptions import TooManyRequests

from saga import Saga, Step
from saga.api import create_app
from saga.api.console import session as console_session
from saga.registry import Registry
from saga.settings import Settings
from saga.store.tokens import Principal, TokenStore
from saga.system import System, build

SAGAS = [Saga("hello", steps=[Step("greet", lambda ctx: {"hi": 1})])]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from saga import migrations

    path = tmp_path_factory.mktemp("log") / "saga.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def database_url(migrated: Path, tmp_path: Path) -> str:
    shutil.copy(migrated, tmp_path / "saga.db")
    return f"sqlite:///{tmp_path / 'saga.db'}"


def make_app(database_url: str, **settings: Any) -> tuple[flask.Flask, System]:
    config = Settings(database_url=database_url, broker_url="memory://", **settings)
    system = build(config, Registry(SAGAS))
    return create_app(config, system), system


@pytest.fixture
def app(database_url: str) -> Iterator[flask.Flask]:
    made, system = make_app(database_url)
    yield made
    system.store.close()


@pytest.fixture
def tokens(app: flask.Flask) -> TokenStore:
    return TokenStore(app.extensions["saga"].store.engine)


def csrf(client: Any, path: str = "/ui/login") -> str:
    found = CSRF.search(client.get(path).text)
    assert found, f"no CSRF field on {path}"
    return found.group(1)


def sign_in(client: Any, token: str, next: str = "/ui/runs") -> Any:
    return client.post("/ui/login", data={"token": token, "next": next,
                                          "csrf_token": csrf(client)})


def alert(response: Any) -> str:
    found = re.search(r'role="alert">([^<]+)<', response.text)
    assert found, response.text
    return found.group(1)


# -- signing in ---------------------------------------------------------------------------

def test_a_page_without_a_session_redirects_to_sign_in_and_back(app):
    client = app.test_client()
    response = client.get("/ui/runs?status=failed")
    assert response.status_code == 302
    assert response.headers["Location"] == "/ui/login?next=/ui/runs?status%3Dfailed"


def test_a_live_refresh_without_a_session_tells_htmx_to_load_the_sign_in_page(app):
    response = app.test_client().get("/ui/runs", headers={
        "HX-Request": "true", "HX-Current-URL": "http://localhost/ui/runs?saga=hello"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/ui/login?next=/ui/runs?saga%3Dhello"


def test_a_live_token_signs_in_and_lands_on_next(app, tokens):
    token = tokens.create("alice", "read")
    client = app.test_client()
    response = sign_in(client, token, next="/ui/runs?status=failed")
    assert response.status_code == 302
    assert response.headers["Location"] == "/ui/runs?status=failed"
    page = client.get("/ui/runs")
    assert page.status_code == 200
    assert "alice" in page.text and "Sign out" in page.text


def test_the_cookie_is_httponly_lax_and_secure_except_over_http_to_localhost(app, tokens):
    token = tokens.create("alice", "read")
    local = sign_in(app.test_client(), token).headers["Set-Cookie"]
    assert "HttpOnly" in local and "SameSite=Lax" in local and "Path=/ui" in local
    assert "Secure" not in local  # a browser keeps it on http://localhost
    remote = app.test_client()
    remote_csrf = CSRF.search(remote.get("/ui/login", base_url="https://console.example.com")
                              .text).group(1)
    cookie = remote.post("/ui/login", base_url="https://console.example.com", data={
        "token": token, "csrf_token": remote_csrf}).headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_the_cookie_never_shows_the_token(app, tokens):
    token = tokens.create("alice", "read")
    cookie = sign_in(app.test_client(), token).headers["Set-Cookie"]
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert token not in value
    assert token.encode() not in base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def test_unknown_and_revoked_tokens_get_one_answer_and_a_malformed_one_is_named(app, tokens):
    revoked = tokens.create("old", "admin")
    tokens.revoke("old")
    client = app.test_client()
    unknown = sign_in(client, "saga_" + "x" * 43)
    gone = sign_in(client, revoked)
    assert unknown.status_code == gone.status_code == 401
    assert alert(unknown) == alert(gone) == "This token is not valid: it is unknown or revoked."
    malformed = sign_in(client, "Bearer abc")
    assert malformed.status_code == 401
    assert "tokens start with saga_" in alert(malformed)
    assert "Paste an API token." in alert(sign_in(client, "  "))
    assert client.get("/ui/runs").status_code == 302  # none of them signed in


def test_revoking_the_token_ends_its_session_at_the_next_request(app, tokens):
    token = tokens.create("alice", "read")
    client = app.test_client()
    sign_in(client, token)
    assert client.get("/ui/runs").status_code == 200
    tokens.revoke("alice")
    response = client.get("/ui/runs")
    assert response.status_code == 302
    assert "ended=invalid" in response.headers["Location"]
    notice = client.get(response.headers["Location"])
    assert "no longer valid" in notice.text


def test_a_session_ends_after_12_hours(app, tokens, monkeypatch):
    client = app.test_client()
    sign_in(client, tokens.create("alice", "read"))
    later = time.time() + console_session.MAX_AGE.total_seconds() + 60

    class Later:
        @staticmethod
        def time() -> float:
            return later

    monkeypatch.setattr(console_session, "time", Later)
    response = client.get("/ui/runs")
    assert response.status_code == 302 and "ended=expired" in response.headers["Location"]


def test_next_never_leads_to_another_site(app, tokens):
    token = tokens.create("alice", "read")
    for target in ("https://evil.example/", "//evil.example/ui", "/v1/tokens", "/\\evil"):
        response = sign_in(app.test_client(), token, next=target)
        assert response.headers["Location"] == "/ui/", target


def test_processes_of_one_deployment_read_each_others_sessions(database_url, tokens, app):
    token = tokens.create("alice", "read")
    client = app.test_client()
    sign_in(client, token)
    cookie = client.get_cookie("saga_console", path="/ui").value
    other, other_system = make_app(database_url)  # another API process: its own key, derived
    rotated, rotated_system = make_app(database_url, console_secret="a new secret")
    try:
        for made, status in ((other, 200), (rotated, 302)):
            visitor = made.test_client()
            visitor.set_cookie("saga_console", cookie, path="/ui")
            assert visitor.get("/ui/runs").status_code == status
    finally:
        other_system.store.close()
        rotated_system.store.close()


# -- CSRF and signing out -----------------------------------------------------------------

def test_a_post_without_the_csrf_token_is_refused(app, tokens):
    token = tokens.create("alice", "admin")
    client = app.test_client()
    client.get("/ui/login")
    assert client.post("/ui/login", data={"token": token}).status_code == 400
    sign_in(client, token)
    assert client.post("/ui/logout").status_code == 400
    assert client.post("/ui/logout", data={"csrf_token": "guessed"}).status_code == 400
    assert client.get("/ui/runs").status_code == 200  # still signed in


def test_signing_in_again_changes_the_csrf_token(app, tokens):
    client = app.test_client()
    before = csrf(client)
    sign_in(client, tokens.create("alice", "read"))
    assert csrf(client, "/ui/runs") != before


def test_sign_out_clears_the_session(app, tokens):
    client = app.test_client()
    sign_in(client, tokens.create("alice", "read"))
    form = csrf(client, "/ui/logout")
    response = client.post("/ui/logout", data={"csrf_token": form})
    assert response.status_code == 302 and "ended=signed-out" in response.headers["Location"]
    assert "saga_console=;" in response.headers["Set-Cookie"]
    assert client.get("/ui/runs").status_code == 302


def test_an_htmx_post_may_send_the_csrf_token_as_a_header(app, tokens):
    client = app.test_client()
    sign_in(client, tokens.create("alice", "read"))
    token = csrf(client, "/ui/runs")
    response = client.post("/ui/logout", headers={"X-CSRF-Token": token, "HX-Request": "true"})
    assert response.status_code == 302


# -- scopes -------------------------------------------------------------------------------

def test_a_read_token_is_offered_no_repair_and_refused_an_admin_view(app):
    guarded = console_session.signed_in("admin")(lambda: "repaired")
    offer = "{% if can('admin') %}<button>Retry</button>{% endif %}" \
            "{% if can('read') %}<p>history</p>{% endif %}"
    with app.test_request_context("/ui/runs/x"):
        flask.g.principal = Principal("reader", "read")
        assert flask.render_template_string(offer) == "<p>history</p>"
        body, status = guarded()
        assert status == 403 and "needs a token with the <code>admin</code> scope" in body
    with app.test_request_context("/ui/runs/x"):
        flask.g.principal = Principal("ops", "admin")
        assert "<button>Retry</button>" in flask.render_template_string(offer)
        assert guarded() == "repaired"


def test_the_signed_in_token_is_the_actor_of_engine_calls(app, tokens):
    from saga.api.auth import actor

    client = app.test_client()
    sign_in(client, tokens.create("alice", "operate"))
    with client:
        client.get("/ui/runs")
        assert actor() == "alice"


def test_with_auth_off_there_is_no_sign_in_and_everyone_is_admin(database_url):
    app, system = make_app(database_url, auth="off")
    try:
        client = app.test_client()
        page = client.get("/ui/runs")
        assert page.status_code == 200 and "auth off" in page.text
        assert client.get("/ui/login").headers["Location"] == "/ui/"
        with app.test_request_context("/ui/runs"):
            assert console_session.can("admin")
    finally:
        system.store.close()


def test_pages_carry_a_policy_that_allows_only_the_apps_own_scripts(app):
    response = app.test_client().get("/ui/login")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    assert app.test_client().get("/ui/static/htmx.min.js").status_code == 200


def test_a_rate_limited_view_counts_per_token_as_the_api_does(database_url):
    app, system = make_app(database_url, rate_limit="1/minute")
    try:
        @console_session.signed_in("operate")
        @console_session.rate_limited
        def send():
            return "sent"

        # The blueprint is registered already: the view goes on the app, under /ui.
        app.add_url_rule("/ui/test-send", "test_send", send, methods=["POST"])
        tokens = TokenStore(system.store.engine)
        first, second = app.test_client(), app.test_client()
        sign_in(first, tokens.create("alice", "operate"))
        sign_in(second, tokens.create("bob", "operate"))
        assert first.post("/ui/test-send").text == "sent"
        refused = first.post("/ui/test-send")
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        assert "Too many starts, signals and backfills for 'alice'" in refused.text
        assert second.post("/ui/test-send").text == "sent"  # bob has his own count
        with app.test_request_context("/ui/runs"):  # a console page answers it as a page
            page = app.make_response(app.handle_user_exception(TooManyRequests("Slow down.")))
            assert page.status_code == 429 and page.mimetype == "text/html"
            assert "Slow down. Wait a moment and try again." in page.get_data(as_text=True)
    finally:
        system.store.close()
