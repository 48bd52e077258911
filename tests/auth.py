"""API tokens for tests: make one in a test database, and send it with every request."""

from __future__ import annotations

import uuid
from typing import Any

import requests
import sqlalchemy as sa

from saga.store.tokens import TokenStore


def create_token(db: sa.Engine | str, scope: str = "admin", name: str | None = None) -> str:
    """A new token of `scope` in the database at `db` (an engine or a URL)."""
    engine = sa.create_engine(db) if isinstance(db, str) else db
    try:
        return TokenStore(engine).create(name or f"test-{scope}-{uuid.uuid4().hex[:8]}", scope)
    finally:
        if isinstance(db, str):
            engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def authorize(client: Any, token: str) -> Any:
    """A Flask test client that sends `token` with every request (headers given win)."""
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


class Authorized:
    """`requests.get/post/request` sending a token; no session, so no kept-alive connection
    outlives an API process a test kills."""

    def __init__(self, token: str) -> None:
        self.token = token

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs["headers"] = {**bearer(self.token), **(kwargs.get("headers") or {})}
        return requests.request(method, url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", url, **kwargs)
