"""The statements of one run's transaction, built once, and how they reach the database.

Every worker step runs two of these transactions (load the run under its lock, write what
changed), so their cost is the saga's cost per step. Each statement is built here once,
with bind parameters, and executed with plain dicts: SQLAlchemy then finds its compiled
form by a memoized cache key instead of building and hashing a statement per call.

Two senders run them:

- `CoreSql`, SQLAlchemy Core's execute, one round trip a statement (SQLite, the embedded
  log; any other driver).
- `PipelinedSql` on psycopg: the same statements rendered once to the driver's SQL and
  sent in psycopg's pipeline mode, so the load (run row locked, its steps, its signals)
  is one round trip and the writes (every step row, the run row, the events) another.
  The guards are checked when the writes return, before the commit is sent, exactly as
  one statement at a time would. Errors are raised as SQLAlchemy's, as `Connection.execute`
  raises them (a broken connection invalidated, `connection_invalidated` set).

In READ COMMITTED each statement of a pipeline takes its own snapshot when the server
reaches it, so the steps are read after the run's lock is granted, and see every commit
made under that lock before: a single statement joining both would read them as of
before the wait.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from saga.errors import StoreConflict
from saga.store.database import CLOCK
from saga.store.rows import RUN_STATE_COLUMNS, STEP_STATE_COLUMNS
from saga.store.tables import events, runs, signals, steps

# A step row's columns that its state (`StepState`) sets; `redispatch_at` follows its status.
STEP_WRITE_COLUMNS = ("status", "output", "error", "attempt", "fence", "lease_owner",
                      "queued_at", "started_at", "finished_at", "next_attempt_at",
                      "lease_expires_at", "start_by", "wake_at", "in_doubt", "checked")
RUN_WRITE_COLUMNS = ("status", "error", "finished_at", "cancel_requested", "parked",
                     "deadline_at", "updated_at")
EVENT_COLUMNS = ("run_id", "at", "worker", "step", "role", "attempt", "type", "data")
RUN_INSERT_COLUMNS = ("id", "saga", "version", "shape", "status", "input", "error",
                      "idempotency_key", "request_hash", "created_at", "updated_at",
                      "deadline_at", "cancel_requested")


def _binds(table: sa.Table, names: Sequence[str]) -> dict[str, sa.BindParameter[Any]]:
    return {name: sa.bindparam(name, type_=table.c[name].type) for name in names}


def _clock(is_sqlite: bool) -> sa.ColumnElement[Any]:
    # SQLite has no clock to ask: the process's own is read instead (Clock.read(None)).
    if is_sqlite:
        return sa.literal(None).label("db_now")
    return sa.func.clock_timestamp().label("db_now")


def _load_run(is_sqlite: bool, skip_locked: bool) -> sa.Select[Any]:
    return (sa.select(*(runs.c[c] for c in RUN_STATE_COLUMNS), _clock(is_sqlite))
            .where(runs.c.id == sa.bindparam("run_id"))
            .with_for_update(skip_locked=skip_locked, of=runs))


LOAD_STEPS = sa.select(*(steps.c[c] for c in STEP_STATE_COLUMNS)).where(
    steps.c.run_id == sa.bindparam("run_id"))
PENDING_SIGNALS = (sa.select(signals.c.id, signals.c.name, signals.c.payload)
                   .where(signals.c.run_id == sa.bindparam("run_id"),
                          signals.c.consumed_at.is_(None))
                   .order_by(signals.c.id))
RUN_EXISTS = sa.select(runs.c.id).where(runs.c.id == sa.bindparam("run_id"))
INSERT_STEP = steps.insert().values(
    _binds(steps, ("run_id", "name", "role", "dispatches", *STEP_WRITE_COLUMNS, "redispatch_at")))
UPDATE_RUN = runs.update().where(runs.c.id == sa.bindparam("k_id")).values(
    _binds(runs, RUN_WRITE_COLUMNS))
# With run_id as well: a statement a sharded log (by run id) can route to one shard.
CONSUME_SIGNAL = signals.update().where(
    signals.c.id == sa.bindparam("k_id"), signals.c.run_id == sa.bindparam("k_run_id")).values(
        _binds(signals, ("consumed_by", "consumed_at")))
INSERT_EVENT = events.insert().values(_binds(events, EVENT_COLUMNS))
INSERT_RUN = runs.insert().values(_binds(runs, RUN_INSERT_COLUMNS))
FIND_SIGNAL = sa.select(signals.c.id).where(
    signals.c.run_id == sa.bindparam("run_id"), signals.c.name == sa.bindparam("name"),
    signals.c.idempotency_key == sa.bindparam("idempotency_key"))
ADD_SIGNAL = signals.insert().values(
    _binds(signals, ("run_id", "name", "payload", "idempotency_key", "received_at"))
).returning(signals.c.id)
FIND_IDEMPOTENT = sa.select(runs.c.id, runs.c.request_hash).where(
    runs.c.saga == sa.bindparam("saga"), runs.c.idempotency_key == sa.bindparam("idempotency_key"))
HEARTBEAT = steps.update().where(
    steps.c.run_id == sa.bindparam("k_run_id"), steps.c.name == sa.bindparam("k_name"),
    steps.c.role == sa.bindparam("k_role"), steps.c.fence == sa.bindparam("k_fence"),
    steps.c.status == sa.bindparam("k_status")).values(
        _binds(steps, ("lease_expires_at",)))


def insert_run_once(is_sqlite: bool) -> sa.Insert:
    """The run's insert that a second start with the same idempotency key skips."""
    insert = (sqlite.insert if is_sqlite else postgresql.insert)(runs)
    return (insert.values(_binds(runs, RUN_INSERT_COLUMNS))
            .on_conflict_do_nothing(index_elements=["saga", "idempotency_key"])
            .returning(runs.c.id))


EVENTS_PER_INSERT = 16
_INSERT_EVENTS: dict[int, sa.Insert] = {}


def insert_events(count: int) -> sa.Insert:
    """One insert of `count` events, binds suffixed `_0`, `_1`…: one statement, not `count`."""
    statement = _INSERT_EVENTS.get(count)
    if statement is None:
        statement = _INSERT_EVENTS[count] = events.insert().values([
            {name: sa.bindparam(f"{name}_{i}", type_=events.c[name].type)
             for name in EVENT_COLUMNS} for i in range(count)])
    return statement


_UPDATE_STEP: dict[tuple[str, ...], sa.Update] = {}


def update_step(columns: tuple[str, ...]) -> sa.Update:
    """The guarded update of a step row setting `columns` (built once per set of columns).

    Only what changed is written: a lease a heartbeat extended after the load is kept.
    The guard: the row is as loaded (status and fence), or nothing is written.
    """
    statement = _UPDATE_STEP.get(columns)
    if statement is None:
        statement = _UPDATE_STEP[columns] = steps.update().where(
            steps.c.run_id == sa.bindparam("k_run_id"), steps.c.name == sa.bindparam("k_name"),
            steps.c.role == sa.bindparam("k_role"), steps.c.status == sa.bindparam("k_status"),
            steps.c.fence == sa.bindparam("k_fence")).values(_binds(steps, columns))
    return statement


@dataclass(frozen=True)
class Loaded:
    """A run's rows as loaded under its lock: values in RUN_STATE_COLUMNS order then db_now,
    each step's in STEP_STATE_COLUMNS order, pending signals as (id, name, payload)."""

    run: Sequence[Any]
    steps: Sequence[Sequence[Any]]
    signals: Sequence[Sequence[Any]]


@dataclass
class Writes:
    """What one save writes, in order: statements (each guarded one must change one row),
    then the events."""

    statements: list[tuple[sa.Insert | sa.Update, dict[str, Any], str | None]] = field(
        default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, statement: sa.Insert | sa.Update, params: dict[str, Any],
            guard: str | None = None) -> None:
        """`guard`: what StoreConflict says when the statement changes no row."""
        self.statements.append((statement, params, guard))


class CoreSql:
    """The statements through SQLAlchemy Core: one round trip each."""

    def __init__(self, is_sqlite: bool) -> None:
        self._load_run = {skip: _load_run(is_sqlite, skip) for skip in (False, True)}
        self._is_sqlite = is_sqlite

    def clock(self, conn: sa.Connection) -> Any:
        """The database's clock_timestamp() (None on SQLite, which has none)."""
        return None if self._is_sqlite else conn.execute(CLOCK).scalar_one()

    def load(self, conn: sa.Connection, run_id: str, skip_locked: bool,
             with_signals: bool) -> Loaded | None:
        params = {"run_id": run_id}
        row = conn.execute(self._load_run[skip_locked], params).first()
        if row is None:
            return None
        step_rows = conn.execute(LOAD_STEPS, params).all()
        pending = conn.execute(PENDING_SIGNALS, params).all() if with_signals else ()
        return Loaded(row, step_rows, pending)

    def write(self, conn: sa.Connection, writes: Writes) -> None:
        for statement, params, guard in writes.statements:
            done = conn.execute(statement, params)
            if guard is not None and done.rowcount != 1:
                raise StoreConflict(guard)
        if writes.events:
            conn.execute(INSERT_EVENT, writes.events)


class _Rendered:
    """One statement as psycopg's SQL text (`%(name)s` binds), and which binds are JSON."""

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect, jsonb: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        # SQLAlchemy fills a column's Python-side default as it executes; sent as text, a
        # statement must bind every column itself.
        assert isinstance(compiled, sa.sql.compiler.SQLCompiler)
        defaulted = [c.name for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
        assert not defaulted, f"bind {defaulted} explicitly in {statement}"
        self.sql = compiled.string
        self.json = tuple(name for name, bind in compiled.binds.items()
                          if isinstance(bind.type, sa.JSON))
        self._jsonb = jsonb

    def params(self, values: dict[str, Any]) -> dict[str, Any]:
        if not self.json:
            return values
        # As SQLAlchemy binds a JSON value for psycopg: Python None is JSON null.
        return {**values, **{name: self._jsonb(values[name]) for name in self.json}}


class PipelinedSql:
    """The statements as psycopg SQL, sent in pipeline mode: one round trip per batch."""

    def __init__(self, dialect: sa.Dialect) -> None:
        import psycopg
        from psycopg.types.json import Jsonb

        self._dialect = dialect
        self._driver_error = psycopg.Error
        self._jsonb = Jsonb
        self._rendered: dict[sa.ClauseElement, _Rendered] = {}
        self._load_run = {skip: _load_run(False, skip) for skip in (False, True)}

    @staticmethod
    def supported(dialect: sa.Dialect) -> bool:
        if dialect.driver != "psycopg":
            return False
        import psycopg

        return psycopg.Pipeline.is_supported()

    def _sql(self, statement: sa.ClauseElement) -> _Rendered:
        rendered = self._rendered.get(statement)
        if rendered is None:
            rendered = self._rendered[statement] = _Rendered(statement, self._dialect,
                                                             self._jsonb)
        return rendered

    def clock(self, conn: sa.Connection) -> Any:
        """The database's clock_timestamp(), read in one round trip with the BEGIN that
        psycopg sends before a transaction's first statement (two, one at a time)."""
        with self._pipeline(conn) as send:
            cursor = send(self._sql(CLOCK).sql, {})
        return cursor.fetchone()[0]

    def load(self, conn: sa.Connection, run_id: str, skip_locked: bool,
             with_signals: bool) -> Loaded | None:
        params = {"run_id": run_id}
        queries = [self._load_run[skip_locked], LOAD_STEPS]
        if with_signals:
            queries.append(PENDING_SIGNALS)
        cursors = []
        with self._pipeline(conn) as send:
            for query in queries:
                cursors.append(send(self._sql(query).sql, params))
        row = cursors[0].fetchone()
        if row is None:
            return None
        return Loaded(row, cursors[1].fetchall(), cursors[2].fetchall() if with_signals else ())

    def write(self, conn: sa.Connection, writes: Writes) -> None:
        if not writes.statements and not writes.events:
            return
        guarded: list[tuple[Any, str]] = []
        try:
            with self._pipeline(conn) as send:
                unchecked = None  # a cursor keeps only its last result: one for all the rest
                for statement, params, guard in writes.statements:
                    rendered = self._sql(statement)
                    if guard is None:
                        unchecked = send(rendered.sql, rendered.params(params), unchecked)
                    else:
                        guarded.append((send(rendered.sql, rendered.params(params)), guard))
                for start in range(0, len(writes.events), EVENTS_PER_INSERT):
                    batch = writes.events[start:start + EVENTS_PER_INSERT]
                    rendered = self._sql(insert_events(len(batch)))
                    unchecked = send(rendered.sql, rendered.params(
                        {f"{name}_{i}": event[name] for i, event in enumerate(batch)
                         for name in EVENT_COLUMNS}), unchecked)
        except sa.exc.DBAPIError:
            # One statement at a time, a guard that missed before the failing statement
            # would have stopped there: say that, as it would have.
            for cursor, guard in guarded:
                if cursor.rowcount == 0:
                    raise StoreConflict(guard) from None
            raise
        for cursor, guard in guarded:  # every result is in: nothing is committed yet
            if cursor.rowcount != 1:
                raise StoreConflict(guard)

    @contextmanager
    def _pipeline(self, conn: sa.Connection) -> Iterator[Any]:
        """A `send(sql, params, cursor=None) -> cursor` queueing statements in one psycopg
        pipeline, sent as the block ends; their errors raised as SQLAlchemy's."""
        driver = conn.connection.driver_connection
        assert driver is not None
        sent: list[str] = []

        def send(sql: str, params: dict[str, Any], cursor: Any = None) -> Any:
            if cursor is None:
                cursor = driver.cursor()
            sent.append(sql)
            cursor.execute(sql, params)
            return cursor

        try:
            with driver.pipeline():
                yield send
        except self._driver_error as exc:
            error: Any = exc
            disconnect = self._dialect.is_disconnect(error, conn.connection.dbapi_connection, None)
            if disconnect and not conn.invalidated:
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(
                ";\n".join(sent), None, exc, self._dialect.loaded_dbapi.Error,
                connection_invalidated=disconnect, dialect=self._dialect) from exc


def sender(dialect: sa.Dialect) -> CoreSql | PipelinedSql:
    """The fastest sender this database's driver supports."""
    if PipelinedSql.supported(dialect):
        return PipelinedSql(dialect)
    return CoreSql(dialect.name == "sqlite")
