"""Who may call the API: a bearer token per request, a scope per operation, a rate per token.

Each view declares its scope once, which also documents it in the OpenAPI document:

    @blp.post("/runs/<run_id>/cancel")
    @requires("admin")
    def cancel_run(run_id): ...

One `before_request` hook resolves `Authorization: Bearer <token>` to a Principal on
`flask.g` (401 without a live token, 403 without the scope); an operation under /v1 that
declares nothing needs `admin`. Starts, signals and backfills (`limited=True`) share one
per-token rate limit (`RateLimit`, on the `limits` library; 429 with Retry-After).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import flask
import flask_smorest
import limits
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from saga.api import problems
from saga.api.system import current
from saga.settings import Settings
from saga.store.tokens import SCOPES, Principal, TokenStore

__all__ = ["requires", "public", "actor", "install", "spec_options"]

log = logging.getLogger("saga.api.auth")

F = TypeVar("F", bound=Callable[..., Any])
PREFIX = "/v1/"
SCHEME = "bearerAuth"
SCOPE_ATTR = "_saga_scope"
LIMITED_ATTR = "_saga_rate_limited"
PUBLIC = "public"
DOCS_BLUEPRINT = "api-docs"  # flask-smorest's own: serves /v1/openapi.json, which lists no data
TOKENS = "saga_tokens"
ANONYMOUS = Principal(None, "admin")  # SAGA_AUTH=off


def spec_options() -> dict[str, Any]:
    """The OpenAPI document's bearer scheme, needed by every operation not marked public."""
    return {
        "security": [{SCHEME: []}],
        "components": {"securitySchemes": {SCHEME: {
            "type": "http", "scheme": "bearer",
            "description": "An API token from `saga token create NAME --scope "
                           "read|operate|admin`. `read` reads runs, events, sagas, schedules "
                           "and backfills; `operate` also starts runs and sends signals; "
                           "`admin` also cancels, retries, backfills, pauses and resumes "
                           "schedules and manages tokens. Each operation names its scope in "
                           "`x-required-scope`."}}},
    }


def requires(scope: str, *, limited: bool = False) -> Callable[[F], F]:
    """The least scope an operation needs; `limited`: it counts against the token's rate."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} is not one of {SCOPES}")
    responses = {"401": "UNAUTHORIZED", "403": "FORBIDDEN"}
    if limited:
        responses["429"] = "TOO_MANY_REQUESTS"
    return _declare(scope, limited, security=[{SCHEME: []}], responses=responses,
                    **{"x-required-scope": scope})


def public(view: F) -> F:
    """An operation anyone may call: it shows no data (the health check)."""
    return _declare(PUBLIC, False, security=[])(view)


def _declare(scope: str, limited: bool, **doc: Any) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        documented = flask_smorest.Blueprint.doc(**doc)(view)
        setattr(documented, SCOPE_ATTR, scope)
        setattr(documented, LIMITED_ATTR, limited)
        return documented

    return decorate


def actor() -> str | None:
    """The calling token's name, recorded on the events a request writes (None: auth off)."""
    return flask.g.principal.name


# -- the hooks ------------------------------------------------------------------------------

def install(app: flask.Flask, settings: Settings, system: Any) -> None:
    """Resolve tokens before every request, then apply the rate limit; warn if auth is off."""
    app.extensions[TOKENS] = TokenStore(system.store.engine)
    app.config["SAGA_AUTH"] = settings.auth
    rate_limit = RateLimit(settings)
    app.before_request(_authenticate)
    app.before_request(lambda: _limit(rate_limit))  # after _authenticate: the key is the token
    app.after_request(_retry_after)
    if settings.auth == "off" and not settings.is_sqlite:
        log.warning("SAGA_AUTH=off on a shared database: every /v1 operation is open to anyone "
                    "who reaches this port; it is meant for the embedded demo only")


def _authenticate() -> flask.Response | None:
    request = flask.request
    if not (request.path.startswith(PREFIX) or request.path == PREFIX.rstrip("/")):
        return None  # routes outside /v1 (a saga module's own) are theirs to guard
    if request.routing_exception is not None:
        return None  # no such operation (404, 405): nothing to guard, and the answer says so
    view = flask.current_app.view_functions.get(request.endpoint or "")
    needed = getattr(view, SCOPE_ATTR, "admin")  # an undeclared operation: the most careful
    if needed == PUBLIC or (request.blueprint or "") == DOCS_BLUEPRINT:
        return None
    if flask.current_app.config["SAGA_AUTH"] == "off":
        flask.g.principal = ANONYMOUS
        return None
    token = _bearer(request.headers.get("Authorization", ""))
    if token is None:
        return _unauthorized("This operation needs an `Authorization: Bearer <token>` header; "
                             "an admin creates tokens with `saga token create`.", invalid=False)
    principal = flask.current_app.extensions[TOKENS].resolve(token)
    if principal is None:  # unknown and revoked alike: the answer tells them apart for no one
        return _unauthorized("The bearer token is not valid: it is unknown or revoked.",
                             invalid=True)
    flask.g.principal = principal
    if view is not None and not principal.allows(needed):
        return problems.response(
            403, f"This operation needs a token with the {needed!r} scope; token "
                 f"{principal.name!r} has {principal.scope!r}.", "insufficient-scope",
            headers={"WWW-Authenticate": f'Bearer realm="saga", error="insufficient_scope", '
                                         f'scope="{needed}"'})
    return None


def _bearer(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _unauthorized(detail: str, invalid: bool) -> flask.Response:
    challenge = 'Bearer realm="saga"' + (', error="invalid_token"' if invalid else "")
    return problems.response(401, detail, headers={"WWW-Authenticate": challenge})


# -- the rate limit -------------------------------------------------------------------------

class RateLimit:
    """SAGA_RATE_LIMIT per token over the operations marked `limited`: fixed windows counted
    by `limits` in SAGA_RATE_LIMIT_STORAGE (Redis: one round trip per window per request).

    If that store fails, this process counts in its own memory and asks the store again
    after STORE_RETRY_S, rather than refuse work or wait on a dead store every request.
    """

    STORE_RETRY_S = 5.0

    def __init__(self, settings: Settings) -> None:
        self.rate = settings.rate_limit
        try:
            self.items = limits.parse_many(settings.rate_limit)
        except ValueError:
            raise ValueError(f"SAGA_RATE_LIMIT={settings.rate_limit!r} is not a rate limit such "
                             "as '1000/second' or '200/second;5000/minute'") from None
        uri = settings.rate_limit_storage or (
            settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://"))
            else "memory://")
        options: dict[str, float | str | bool] = {"socket_connect_timeout": 2, "socket_timeout": 2} \
            if uri.startswith(("redis://", "rediss://")) else {}
        self.store = FixedWindowRateLimiter(storage_from_string(uri, **options))
        self.fallback = FixedWindowRateLimiter(MemoryStorage())
        self._store_down_until = 0.0  # monotonic; while ahead, count in memory

    def wait_s(self, *key: str) -> float | None:
        """Count one request for `key`; None if it is within every window, else the seconds
        until the window it broke starts again."""
        for item in self.items:
            strategy = self._strategy()
            try:
                if strategy.hit(item, *key):
                    continue
                return strategy.get_window_stats(item, *key).reset_time - time.time()
            except Exception as exc:  # the store failed: this process counts alone a while
                if strategy is self.fallback:
                    raise
                log.warning("the rate limit's store failed (%s); counting in this process "
                            "for %.0fs", exc, self.STORE_RETRY_S)
                self._store_down_until = time.monotonic() + self.STORE_RETRY_S
                if not self.fallback.hit(item, *key):
                    return self.fallback.get_window_stats(item, *key).reset_time - time.time()
        return None

    def _strategy(self) -> FixedWindowRateLimiter:
        if self._store_down_until and time.monotonic() < self._store_down_until:
            return self.fallback
        self._store_down_until = 0.0
        return self.store


def _limit(rate_limit: RateLimit) -> None:
    view = flask.current_app.view_functions.get(flask.request.endpoint or "")
    if not getattr(view, LIMITED_ATTR, False):
        return
    # Counters are per deployment, as its queue is: another one on the same Redis (or
    # another test) counts its own tokens, even of the same name.
    wait = rate_limit.wait_s("saga", current().dispatcher.queue, _caller())
    if wait is not None:
        flask.g.retry_after = max(1, math.ceil(wait))
        raise TooManyRequests(_limit_message(rate_limit.rate))


def _caller() -> str:
    principal = flask.g.get("principal")
    if principal is not None and principal.name is not None:
        return principal.name
    return f"address:{flask.request.remote_addr}"


def _limit_message(rate: str) -> str:
    return (f"Too many starts, signals and backfills for {_caller()!r}: at most {rate} "
            "(SAGA_RATE_LIMIT). Try again after Retry-After seconds.")


def _retry_after(response: flask.Response) -> flask.Response:
    if response.status_code == 429:
        response.headers["Retry-After"] = str(flask.g.get("retry_after", 1))
    return response
