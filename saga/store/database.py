"""The connection to the saga log: one SQLAlchemy engine per process, and the database clock.

Behind a transaction pooler (PgBouncer's pool_mode = transaction) the URL says
`?prepare_threshold=none`, so psycopg prepares no statement (`prepare_threshold`).

PostgreSQL locks rows and its clock times leases; SQLite, the embedded default, takes
its single write lock up front (`BEGIN IMMEDIATE`) instead, so the lock clauses and
`SKIP LOCKED` fall away there.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import sqlalchemy as sa

from saga.clock import Clock

# Every error the saga log raises; `unreachable` tells an outage from a refused statement.
DatabaseError = sa.exc.SQLAlchemyError
CLOCK = sa.select(sa.func.clock_timestamp())  # built once: its compiled form is cached


def unreachable(error: BaseException) -> bool:
    """Whether the database failed to answer (down, restarting, every connection busy),
    rather than refused the statement: the same work may succeed when it is back."""
    if isinstance(error, (sa.exc.TimeoutError, sa.exc.OperationalError, sa.exc.InterfaceError)):
        return True  # TimeoutError: no pooled connection came free in time
    return isinstance(error, sa.exc.DBAPIError) and bool(error.connection_invalidated)


class Outage:
    """Logs one line when the saga log stops answering and one when it answers again.

    A sweeper or worker that meets an outage tries again by itself; a traceback per
    attempt would bury everything else in the log.
    """

    def __init__(self, log: logging.Logger, who: str) -> None:
        self.log, self.who = log, who
        self.down = False

    def failed(self, error: BaseException) -> bool:
        """True (and logged once) if `error` is the database not answering."""
        if not unreachable(error):
            return False
        if not self.down:
            self.down = True
            cause = type(getattr(error, "orig", None) or error).__name__
            self.log.warning("%s: the saga log does not answer (%s); retrying until it does",
                             self.who, cause)
        return True

    def answered(self) -> None:
        if self.down:
            self.down = False
            self.log.warning("%s: the saga log answers again; resuming", self.who)


class Database:
    """The engine (made again in a forked child) and the clock. Safe to share between threads."""

    def __init__(self, url: str, clock: Clock | None = None, echo: bool = False) -> None:
        self.url = url
        self.clock = clock or Clock()
        self._echo = echo
        self._engine: sa.Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._connections = POOL_CONNECTIONS

    def pool_for(self, threads: int) -> None:
        """Let `threads` threads of this process each run a step under its heartbeat (a
        worker's threads pool, an API's request threads) without waiting for a connection.

        Each may hold two at once (its transaction, its heartbeat's renewal); past the
        pool's size a thread waits, and after 30 s its transaction fails as an outage.
        """
        self._connections = max(POOL_CONNECTIONS, 2 * threads + 1)
        if self._engine is not None:
            self.close()  # made again with room for them on first use

    @property
    def engine(self) -> sa.Engine:
        # A forked worker child must not share its parent's connections.
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    self._engine = make_engine(self.url, self._echo, self._connections)
                    self._pid = os.getpid()
        return self._engine

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def now(self, conn: sa.Connection | None = None) -> datetime:
        """The database's clock (SQLite: this machine's), which times every lease and wait."""
        if self.is_sqlite:
            return self.clock.read(None)
        if conn is None:
            with self.engine.connect() as own:
                return self.now(own)
        return self.clock.read(conn.execute(CLOCK).scalar_one())

    def clock_column(self) -> sa.ColumnElement:
        """The clock as a column, to read it in a query made anyway (then `clock.read` it)."""
        if self.is_sqlite:
            return sa.literal(None).label("db_now")
        return sa.func.clock_timestamp().label("db_now")

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn


PREPARE_THRESHOLD = "prepare_threshold"
DEFAULT_PREPARE_THRESHOLD = 5  # psycopg's own


def prepare_threshold(url: str) -> int | None:
    """psycopg's `prepare_threshold` as the URL's `?prepare_threshold=` says: `none` behind a
    transaction pooler, else how often a statement runs before it is prepared (default 5).

    Behind PgBouncer in transaction mode (before 1.21, or without max_prepared_statements)
    each transaction may get another server connection: one this client prepared nothing
    on ("prepared statement … does not exist"), or one another client prepared the same
    name on ("… already exists"). psycopg's documented fix is `prepare_threshold=None`.
    It is a query parameter, not a setting, because it describes the address: every
    process and command reading SAGA_DATABASE_URL gets it, and a direct URL (for
    `saga migrate`, say) beside a pooled one keeps its prepared statements.
    """
    # Read here, not from SQLAlchemy's URL, which drops an empty `prepare_threshold=`.
    query = url.rpartition("@")[2].partition("?")[2]
    values = parse_qs(query, keep_blank_values=True).get(PREPARE_THRESHOLD)
    if not values:
        return DEFAULT_PREPARE_THRESHOLD
    value = values[-1]
    if value.strip().lower() == "none":
        return None
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count >= 0:
        return count
    raise ValueError(f"{PREPARE_THRESHOLD}={value!r}: use none (behind a transaction pooler "
                     "such as PgBouncer) or how many runs before a statement is prepared "
                     f"(0 or more; psycopg's default is {DEFAULT_PREPARE_THRESHOLD})")


def driver_url(url: str) -> tuple[sa.URL, dict[str, Any]]:
    """The URL SQLAlchemy gets (without the options read here) and the driver's connect
    arguments those options come to."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql" or PREPARE_THRESHOLD not in url:
        return parsed, {}
    return (parsed.difference_update_query([PREPARE_THRESHOLD]),
            {PREPARE_THRESHOLD: prepare_threshold(url)})


POOL_KEPT = 5  # connections a process keeps open between uses
POOL_CONNECTIONS = 15  # at most, by default: more are opened for a burst, closed after


def make_engine(url: str, echo: bool = False, connections: int = POOL_CONNECTIONS) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, echo=echo, connect_args={"check_same_thread": False,
                                                               "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            # SQLite has no row locks: take the one write lock before reading.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A host that drops packets must fail a connect in seconds, not the OS's two minutes.
    address, driver = driver_url(url)
    engine = sa.create_engine(address, echo=echo, pool_recycle=1800, pool_size=POOL_KEPT,
                              max_overflow=max(0, connections - POOL_KEPT),
                              connect_args={"connect_timeout": 10, **driver})
    ping_when_idle(engine)
    return engine


PING_AFTER_IDLE_S = 1.0  # a connection back in the pool for longer is pinged before use


def ping_when_idle(engine: sa.Engine) -> None:
    """Ping a pooled connection before use only if it sat idle for PING_AFTER_IDLE_S.

    Without a ping, a database restart fails the next transaction on every pooled
    connection, and each step waits out its lease. SQLAlchemy's pool_pre_ping pings on
    every checkout: one round trip more per transaction, a fifth of a worker step's. A
    connection that finished a transaction within the last second is as good as a ping;
    one that dies in that second is a transaction cut off mid-way, which every caller
    already takes as an outage (the first one also makes SQLAlchemy replace the whole
    pool). A dead one found here is replaced by the pool, as pool_pre_ping does (raising
    DisconnectionError from "checkout" is SQLAlchemy's documented way).
    Behind a transaction pooler the same holds: the pooler keeps these client connections
    however its server connections come and go, and the ping finds a pooler that restarted.
    """
    dialect = engine.dialect

    @sa.event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DisconnectionError(f"the pooled connection is dead: {exc}") from exc
