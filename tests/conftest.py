"""Shared fixtures: real servers (or a clear skip), a fresh database per test, real processes.

Without a server a test needs, it is skipped with a message saying which and where; with
CI=true it fails instead, because CI must run everything.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import pytest
import sqlalchemy as sa

from tests.stack import Stack

PG_ADMIN_URL = os.environ.get("SAGA_TEST_DATABASE_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BROKERS = {
    "rabbitmq": os.environ.get("SAGA_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    "redis": os.environ.get("SAGA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(name: str, url: str) -> None:
    """Skip (or, in CI, fail) unless the server behind `url` accepts connections."""
    parsed = urlparse(url.replace("+psycopg", ""))
    host, port = parsed.hostname or "127.0.0.1", parsed.port
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        message = f"{name} is not reachable at {host}:{port}; start it to run this test"
        if IN_CI:
            pytest.fail(f"CI requires every server: {message}")
        pytest.skip(message)


def _admin() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


def _db_url(name: str) -> str:
    return sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated once; each test copies it (CREATE DATABASE … TEMPLATE)."""
    need("PostgreSQL", PG_ADMIN_URL)
    from saga import migrations

    name = f"saga_tpl_{uuid.uuid4().hex[:8]}"
    admin = _admin()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = sa.create_engine(_db_url(name))
    migrations.upgrade(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@contextmanager
def fresh_database(prefix: str, template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (a copy of `template`, else empty), dropped after."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    admin = _admin()
    with admin.connect() as conn:
        copy = f' TEMPLATE "{template}"' if template else ""
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield _db_url(name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def database_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test alone."""
    with fresh_database("saga_t_", pg_template) as url:
        yield url


@contextmanager
def template_copies(pg_template: str, prefix: str) -> Iterator[Callable[[], str]]:
    """Makes fresh migrated databases (copies of the session's template); drops them after."""
    admin = _admin()
    made: list[str] = []

    def make() -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
        made.append(name)
        return _db_url(name)

    try:
        yield make
    finally:
        with admin.connect() as conn:
            for name in made:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=sorted(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on RabbitMQ and once on Redis."""
    url = BROKERS[request.param]
    need(request.param, url)
    return url


@pytest.fixture
def stack(database_url: str, broker_url: str, tmp_path) -> Iterator[Stack]:
    """Real `saga api` / `saga worker` / `saga sweeper` processes, stopped after the test."""
    with Stack(database_url, broker_url, tmp_path) as running:
        yield running
