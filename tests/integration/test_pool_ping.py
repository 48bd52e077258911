"""The connection pool (saga.store.database): pinging a connection only after it sat idle,
and room for a process's threads.

PostgreSQL is reached through a TCP proxy of the test's own (tests/faults/proxy.py), whose
`reset` plays a restart: every open connection dies, new ones are accepted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from saga.store import database
from saga.store.database import Database, unreachable
from tests.faults.proxy import Proxy


@pytest.fixture
def proxied(database_url: str) -> Iterator[tuple[Database, Proxy]]:
    with Proxy.for_url(database_url, "pg") as proxy:
        db = Database(proxy.url(database_url))
        yield db, proxy
        db.close()


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch, proxied: tuple[Database, Proxy]) -> list[int]:
    """Counts the pool's pings (each still sent to the server)."""
    db, _ = proxied
    dialect = db.engine.dialect
    sent: list[int] = []
    real = dialect.do_ping

    def counted(dbapi_conn):
        sent.append(1)
        return real(dbapi_conn)

    monkeypatch.setattr(dialect, "do_ping", counted)
    return sent


def one_transaction(db: Database) -> int:
    with db.begin() as conn:
        return conn.execute(sa.text("SELECT 1")).scalar_one()


def test_a_connection_back_within_the_window_is_used_without_a_ping(proxied, pings):
    db, _ = proxied
    for _ in range(5):
        assert one_transaction(db) == 1
    assert pings == []


def test_a_dead_idle_connection_is_pinged_and_replaced_before_use(proxied, pings, monkeypatch):
    """Given a pooled connection idle past the window, When the database restarts, Then the
    next transaction succeeds on a new connection: the ping found the dead one."""
    db, proxy = proxied
    assert one_transaction(db) == 1
    accepted = proxy.accepted
    monkeypatch.setattr(database, "PING_AFTER_IDLE_S", 0.0)  # every pooled one is "idle"
    proxy.reset()
    assert one_transaction(db) == 1
    assert len(pings) == 1
    assert proxy.accepted == accepted + 1  # the dead connection was replaced


def test_a_restart_within_the_window_fails_one_transaction_as_an_outage(proxied, pings):
    """The window's price: a connection used within the last second is not pinged, so a
    restart in that second cuts the next transaction off, as one mid-way would be. It is
    an outage (callers retry it), and the pool then replaces its connections."""
    db, proxy = proxied
    assert one_transaction(db) == 1
    proxy.reset()
    with pytest.raises(database.DatabaseError) as cut:
        one_transaction(db)
    assert unreachable(cut.value)
    assert one_transaction(db) == 1
    assert pings == []


def test_pool_for_threads_lets_each_thread_and_its_heartbeat_hold_a_connection(database_url):
    """A threads pool of 20 (`saga worker --pool threads -c 20`): 41 connections at once,
    where the default pool (15) would make the 16th thread wait."""
    db = Database(database_url)
    db.pool_for(20)
    holding = threading.Barrier(41, timeout=10)

    def hold() -> None:
        with db.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
            holding.wait()  # every thread holds its connection here at once

    try:
        with ThreadPoolExecutor(41) as threads:
            for done in [threads.submit(hold) for _ in range(41)]:
                done.result()
    finally:
        db.close()
