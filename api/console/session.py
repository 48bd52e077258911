"""Signing in to the console: an API token in an encrypted session cookie, checked per request.

    @console.get("/runs")
    @signed_in("read")            # no session: to /ui/login?next=…; too little scope: 403
    def runs(): ...               # flask.g.principal is the token, as under /v1

    {% if can("admin") %}<form method="post">{{ csrf_field() }}…</form>{% endif %}

The session is Flask's, under /ui only, in the cookie `saga_console`: encrypted and signed
(Fernet) rather than only signed, since it holds the token itself, which must not be
readable from a cookie jar. The token is resolved again by `TokenStore` on every request,
exactly as the API does, so a revoked token ends its sessions within a second (CACHE_S in
saga/store/tokens.py) in every process, at once in the one that revoked it.
The cookie is HttpOnly, SameSite=Lax (a link from a ticket or a chat opens the page
signed in; a cross-site POST carries no cookie, and every POST also needs the CSRF token)
and Secure, except over plain http to localhost, where a browser would otherwise drop it.
A session lasts 12 hours from sign-in. The key is SAGA_CONSOLE_SECRET, or else derived
from the database's private deployment row, so every API process of one deployment agrees.
With SAGA_AUTH=off there is no sign-in: everyone is admin, as in the API.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import flask
from cryptography.fernet import Fernet, InvalidToken
from flask.sessions import SecureCookieSessionInterface, SessionInterface, SessionMixin
from itsdangerous import BadSignature
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from saga.api.auth import ANONYMOUS, LIMITED_ATTR, TOKENS
from saga.api.console.blueprint import console
from saga.api.system import current
from saga.store.secret import deployment_secret
from saga.store.tokens import MAX_TOKEN_CHARS, PREFIX, SCOPES, Principal

__all__ = ["signed_in", "rate_limited", "can", "csrf_field", "csrf_token", "principal"]

F = TypeVar("F", bound=Callable[..., Any])
COOKIE = "saga_console"
PATH = "/ui"
MAX_AGE = timedelta(hours=12)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
KEY = "saga_console_key"
PURPOSE = "saga console session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Every script, style and font comes from the app itself; inline scripts run nowhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
ENDED = {
    "expired": "Your session ended after 12 hours. Sign in again.",
    "invalid": "Your session ended: its token is no longer valid (revoked). Sign in with a "
               "live token.",
    "signed-out": "You are signed out.",
}


# -- the cookie ---------------------------------------------------------------------------

class Sealed:
    """Flask's session serializer, but encrypting (Fernet: AES-CBC with an HMAC, timestamped)."""

    def __init__(self, key: bytes) -> None:
        self.fernet = Fernet(base64.urlsafe_b64encode(key))

    def dumps(self, value: dict[str, Any]) -> str:
        return self.fernet.encrypt(json.dumps(value).encode()).decode()

    def loads(self, value: str, max_age: int | None = None) -> Any:
        try:
            return json.loads(self.fernet.decrypt(value, ttl=int(MAX_AGE.total_seconds())))
        except (InvalidToken, ValueError):
            raise BadSignature("not a console session of this deployment") from None


class ConsoleSessions(SecureCookieSessionInterface):
    """The console's sessions under /ui; any other path keeps the app's own interface."""

    def __init__(self, fallback: SessionInterface) -> None:
        self.fallback = fallback

    def open_session(self, app: flask.Flask, request: flask.Request) -> Any:
        if not _ours(request.path):
            return self.fallback.open_session(app, request)
        return super().open_session(app, request)

    def save_session(self, app: flask.Flask, session: SessionMixin,
                     response: flask.Response) -> None:
        if not _ours(flask.request.path):
            return self.fallback.save_session(app, session, response)
        return super().save_session(app, session, response)

    def get_signing_serializer(self, app: flask.Flask) -> Sealed:  # type: ignore[override]
        sealed = app.extensions.get(KEY)
        if sealed is None:
            sealed = app.extensions[KEY] = Sealed(_key())
        return sealed

    def get_cookie_name(self, app: flask.Flask) -> str:
        return COOKIE

    def get_cookie_path(self, app: flask.Flask) -> str:
        return PATH

    def get_cookie_domain(self, app: flask.Flask) -> None:
        return None  # this host only

    def get_cookie_httponly(self, app: flask.Flask) -> bool:
        return True

    def get_cookie_samesite(self, app: flask.Flask) -> str:
        return "Lax"

    def get_cookie_secure(self, app: flask.Flask) -> bool:
        request = flask.request
        local = (urlsplit(f"//{request.host}").hostname or "") in LOCAL_HOSTS
        return request.is_secure or not local


def _ours(path: str) -> bool:
    return path == PATH or path.startswith(PATH + "/")


def _key() -> bytes:
    secret = current().settings.console_secret
    if secret:
        return hashlib.sha256(f"{PURPOSE}\0{secret}".encode()).digest()
    return deployment_secret(current().store.engine, PURPOSE)


@console.record_once
def _install(state: Any) -> None:
    app = state.app
    app.session_interface = ConsoleSessions(app.session_interface)
    # First of the app's hooks, so the rate limiter (as under /v1) keys on the signed-in
    # token of a console request, not on its address.
    app.before_request_funcs.setdefault(None, []).insert(0, _resolve)
    app.jinja_env.globals.update(can=can, csrf_field=csrf_field, csrf_token=csrf_token,
                                 signed_in_as=principal)


def _resolve() -> None:
    request = flask.request
    if _ours(request.path) and request.endpoint not in (None, "console.static"):
        principal()


# -- who is signed in ---------------------------------------------------------------------

def principal() -> Principal | None:
    """The signed-in token (resolved again now), ANONYMOUS with SAGA_AUTH=off, or None."""
    if "principal" in flask.g:
        found: Principal = flask.g.principal
        return found
    if flask.g.get("session_ended") or flask.g.get("signed_out"):
        return None  # asked already in this request
    flask.g.signed_out = True  # until a token is resolved below
    if flask.current_app.config["SAGA_AUTH"] == "off":
        flask.g.principal = ANONYMOUS
        return ANONYMOUS
    token, at = flask.session.get("token"), flask.session.get("at")
    if not isinstance(token, str) or not isinstance(at, (int, float)):
        return None
    if time.time() - at > MAX_AGE.total_seconds():
        flask.g.session_ended = "expired"
        return None
    resolved = flask.current_app.extensions[TOKENS].resolve(token)
    if resolved is None:
        flask.g.session_ended = "invalid"
        return None
    flask.g.principal = resolved
    return resolved


def can(scope: str) -> bool:
    """Whether the signed-in token may do what needs `scope` (templates: offer the button)."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} is not one of {SCOPES}")
    found = principal()
    return found is not None and found.allows(scope)


def signed_in(scope: str = "read") -> Callable[[F], F]:
    """A console view for tokens with at least `scope`; sets `flask.g.principal`."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} is not one of {SCOPES}")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            found = principal()
            if found is None:
                return _to_login()
            if not found.allows(scope):
                return flask.render_template(
                    "console/forbidden.html", needed=scope, principal=found), 403
            return view(*args, **kwargs)

        return guarded  # type: ignore[return-value]

    return decorate


def rate_limited(view: F) -> F:
    """The view counts against its token's rate, as the API's starts, signals and backfills
    do (SAGA_RATE_LIMIT); put it under `signed_in`. Too many: a 429 page with Retry-After."""
    setattr(view, LIMITED_ATTR, True)
    return view


@console.errorhandler(429)
def _too_many(error: Exception) -> Any:
    return flask.render_template("console/error.html", title="Too many requests", message=(
        f"{getattr(error, 'description', error)} Wait a moment and try again.")), 429


def _to_login() -> BaseResponse:
    ended = flask.g.get("session_ended")
    if ended:
        flask.session.clear()  # its token is gone or too old: drop the cookie
    target = flask.url_for("console.login", next=_here(), ended=ended)
    if flask.request.headers.get("HX-Request"):
        # A live-refresh request: htmx follows this header with a full page load.
        return flask.Response(status=401, headers={"HX-Redirect": target})
    return flask.redirect(target)


def _here() -> str:
    request = flask.request
    if request.headers.get("HX-Request") and request.headers.get("HX-Current-URL"):
        page = urlsplit(request.headers["HX-Current-URL"])
        path = page.path.removeprefix(request.script_root)
        return _safe_next(path + (f"?{page.query}" if page.query else ""))
    return _safe_next(request.full_path.rstrip("?"))


def _safe_next(target: str | None) -> str:
    """A page of this console to go back to (app-relative), never another site."""
    if not target:
        return PATH + "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or not _ours(parts.path):
        return PATH + "/"
    return target


def _redirect(target: str) -> BaseResponse:
    return flask.redirect(flask.request.script_root + target)


# -- CSRF ---------------------------------------------------------------------------------

def csrf_token() -> str:
    """This session's CSRF token (made on first use); htmx sends it as X-CSRF-Token."""
    token = flask.session.get("csrf")
    if not isinstance(token, str):
        token = flask.session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_field() -> Markup:
    """The hidden field every console form carries."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, csrf_token())


@console.before_request
def _check_csrf() -> Any:
    request = flask.request
    if request.method in SAFE_METHODS:
        return None
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    expected = flask.session.get("csrf")
    if isinstance(expected, str) and hmac.compare_digest(sent.encode(), expected.encode()):
        return None
    return flask.render_template("console/error.html", title="Form expired", message=(
        "This form did not come from this console session (its CSRF token is missing or "
        "out of date, e.g. after signing in again). Reload the page and try again.")), 400


@console.after_request
def _headers(response: flask.Response) -> flask.Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not flask.request.path.startswith(PATH + "/static/"):
        response.headers.setdefault("Cache-Control", "no-store")  # pages show live data
    return response


# -- the pages ----------------------------------------------------------------------------

@console.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Paste a token; a live one starts a session and goes back to `next`."""
    target = _safe_next(flask.request.values.get("next"))
    if flask.current_app.config["SAGA_AUTH"] == "off":
        return _redirect(target)
    if flask.request.method == "GET":
        if principal() is not None:
            return _redirect(target)
        return _login_page(target, notice=ENDED.get(flask.request.args.get("ended", "")))
    token = flask.request.form.get("token", "").strip()
    problem = _token_problem(token)
    found = None if problem else flask.current_app.extensions[TOKENS].resolve(token)
    if found is None:
        # Unknown and revoked alike: the answer tells them apart for no one (as the API).
        return _login_page(target, error=problem or "This token is not valid: it is unknown "
                                                    "or revoked."), 401
    flask.session.clear()  # a new session, with a new CSRF token: none chosen beforehand
    flask.session.update(token=token, at=time.time(), csrf=secrets.token_urlsafe(32))
    return _redirect(target)


def _token_problem(token: str) -> str | None:
    if not token:
        return "Paste an API token."
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS or any(
            c.isspace() for c in token):
        return (f"This is not an API token: tokens start with {PREFIX} and hold no spaces. "
                "An admin creates one with `saga token create NAME --scope read`.")
    return None


def _login_page(target: str, error: str | None = None, notice: str | None = None) -> str:
    return flask.render_template("console/login.html", next=target, error=error,
                                 notice=notice)


@console.route("/logout", methods=["GET", "POST"])
def logout() -> Any:
    """POST ends the session (GET asks first, so a link cannot sign anyone out)."""
    if flask.request.method == "GET":
        return flask.render_template("console/logout.html")
    flask.session.clear()
    return flask.redirect(flask.url_for("console.login", ended="signed-out"))
