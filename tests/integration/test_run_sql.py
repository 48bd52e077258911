"""One run's transaction on PostgreSQL (psycopg's pipeline) and SQLite (SQLAlchemy Core).

The hot path sends its statements its own way on PostgreSQL, so what it must keep is
checked here on both: what is written reads back as written, a guard that misses
commits nothing, a load that waited for the lock sees what the holder committed, and a
connection lost mid-transaction is an outage as any other statement's.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from saga.errors import StoreConflict
from saga.run import Checked, PendingSignal, Role, Run, RunStatus, StepState, StepStatus
from saga.store import Store, unreachable
from saga.store.run_sql import CoreSql, PipelinedSql
from saga.store.tables import events, signals, steps

NOW = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from saga import migrations

    path = tmp_path_factory.mktemp("log") / "saga.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[Store]:
    if request.param == "postgresql":
        url = request.getfixturevalue("database_url")
    else:
        shutil.copy(sqlite_template, tmp_path / "saga.db")
        url = f"sqlite:///{tmp_path / 'saga.db'}"
    store = Store(url)
    expected = CoreSql if request.param == "sqlite" else PipelinedSql
    assert isinstance(store.run_sql, expected)
    yield store
    store.close()


def every_field(name: str, status: StepStatus, **changes) -> StepState:
    step = StepState(name, Role.FORWARD, status, attempt=2, fence=3,
                     output={"n": 1, "none": None, "list": [1.5, "x"]}, error="boom",
                     queued_at=NOW, started_at=NOW + timedelta(seconds=1),
                     finished_at=NOW + timedelta(seconds=2),
                     next_attempt_at=NOW + timedelta(seconds=3),
                     lease_expires_at=NOW + timedelta(seconds=4), lease_owner="host/1",
                     start_by=NOW + timedelta(seconds=5), wake_at=NOW + timedelta(seconds=6),
                     in_doubt=True, checked=Checked.UNKNOWN)
    return replace(step, **changes)


def started(store: Store, *states: StepState) -> Run:
    with store.transaction() as tx:
        run = Run(id="r-1", saga="s", version=1, status=RunStatus.RUNNING,
                  input={"order": 7}, created_at=tx.now, deadline_at=NOW + timedelta(hours=1),
                  shape="abc", steps={(s.name, s.role): s for s in states})
        assert tx.insert(run, None, None) is None
    return run


def test_what_a_save_writes_loads_back_the_same(store: Store):
    run = started(store, every_field("a", StepStatus.RUNNING),
                  StepState("b", Role.FORWARD, StepStatus.QUEUED, queued_at=NOW))
    with store.transaction("r-1") as tx:
        assert tx.run == run
        a = tx.run.steps[("a", Role.FORWARD)]
        done = replace(a, status=StepStatus.SUCCEEDED, output=None, error=None, checked=None,
                       in_doubt=False, lease_expires_at=None)
        undo = StepState("a", Role.COMPENSATE, StepStatus.QUEUED, queued_at=NOW)
        new = replace(tx.run.put(done).put(undo), status=RunStatus.COMPENSATING,
                      error="why", cancel_requested=True, parked="for a person")
        tx.save(new, worker="w")
    with store.transaction("r-1") as tx:
        assert tx.run == new
    assert store.load_run("r-1") == new  # as SQLAlchemy reads it, for the API
    with store.engine.connect() as conn:
        output = conn.execute(sa.select(steps.c.output.is_(None)).where(
            steps.c.name == "a", steps.c.role == "forward")).scalar_one()
        queued = conn.execute(sa.select(steps.c.redispatch_at).where(
            steps.c.role == "compensate")).scalar_one()
        types = conn.execute(sa.select(events.c.type).order_by(events.c.id)).scalars().all()
    assert output is False  # None is stored as JSON null, as SQLAlchemy stores it
    assert queued is not None  # a step queued now is published again if not claimed
    assert types[0] == "run.started" and "run.compensating" in types
    assert "step.succeeded" in types and "compensation.queued" in types


def test_a_guard_that_misses_commits_nothing(store: Store):
    started(store, every_field("a", StepStatus.RUNNING))
    logged = event_count(store)
    with pytest.raises(StoreConflict, match="step a of run r-1 changed under the lock"):
        with store.transaction("r-1") as tx:
            # The row moves on after the load (SQLite's one write lock keeps any other
            # connection out, so it is moved from inside).
            tx.conn.execute(steps.update().values(fence=99))
            a = tx.run.steps[("a", Role.FORWARD)]
            tx.save(replace(tx.run.put(replace(a, status=StepStatus.SUCCEEDED)),
                            status=RunStatus.SUCCEEDED))
    with store.transaction("r-1") as tx:
        assert tx.run.status is RunStatus.RUNNING
        assert tx.run.steps[("a", Role.FORWARD)].fence == 3
    assert event_count(store) == logged


def test_a_guard_that_missed_is_told_before_a_later_statement_fails(store: Store):
    """As one statement at a time would: the update that missed stops the save, the insert
    after it (of a row already there) does not get to fail."""
    started(store, every_field("a", StepStatus.RUNNING))
    for moved, raised in ((True, StoreConflict), (False, sa.exc.IntegrityError)):
        with pytest.raises(raised):
            with store.transaction("r-1") as tx:
                if moved:
                    tx.conn.execute(steps.update().values(fence=99))
                tx.conn.execute(steps.insert().values(run_id="r-1", name="b", role="forward",
                                                      status="queued"))
                a = tx.run.steps[("a", Role.FORWARD)]
                b = StepState("b", Role.FORWARD, StepStatus.QUEUED, queued_at=NOW)
                tx.save(tx.run.put(replace(a, status=StepStatus.SUCCEEDED)).put(b))


def event_count(store: Store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()


def test_only_what_changed_is_written(store: Store):
    """A lease a heartbeat extended after the load is not put back by the save."""
    started(store, every_field("a", StepStatus.RUNNING, checked=None))
    with store.transaction("r-1") as tx:
        # As a heartbeat would (SQLite's one write lock keeps it out, so from inside).
        tx.conn.execute(steps.update().values(lease_expires_at=NOW + timedelta(hours=1)))
        a = tx.run.steps[("a", Role.FORWARD)]
        tx.save(tx.run.put(replace(a, checked=Checked.NOT_DONE, in_doubt=False)))
    with store.transaction("r-1") as tx:
        a = tx.run.steps[("a", Role.FORWARD)]
    assert a.checked is Checked.NOT_DONE and not a.in_doubt
    assert a.lease_expires_at == NOW + timedelta(hours=1)


def test_signals_load_and_are_consumed(store: Store):
    started(store, StepState("wait", Role.FORWARD, StepStatus.WAITING, queued_at=NOW))
    with store.transaction("r-1") as tx:
        first = tx.add_signal("go", {"x": 1}, "key-1")
        tx.add_signal("go", None, None)
        assert tx.find_signal("go", "key-1") == first
    with store.transaction("r-1") as tx:
        pending = tx.run.signals
        assert [(s.name, s.payload) for s in pending] == [("go", {"x": 1}), ("go", None)]
        consumed = replace(pending[0], consumed_by="wait")
        tx.save(replace(tx.run, signals=(consumed, pending[1])))
    with store.transaction("r-1") as tx:
        assert tx.run.signals == (PendingSignal(pending[1].id, "go", None),)
    with store.transaction("r-1", signals=False) as tx:
        assert tx.run.signals == ()
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(signals.c.consumed_by).where(
            signals.c.id == first)).scalar_one() == "wait"


def test_a_load_that_waited_for_the_lock_sees_what_the_holder_committed(database_url):
    store = Store(database_url)
    try:
        started(store, StepState("a", Role.FORWARD, StepStatus.QUEUED, queued_at=NOW))
        holding, seen = threading.Event(), []

        def waiter() -> None:
            holding.wait(10)
            with store.transaction("r-1") as tx:  # blocks on the run's lock
                seen.append(tx.run)

        thread = threading.Thread(target=waiter)
        thread.start()
        with store.transaction("r-1") as tx:
            holding.set()
            with store.engine.connect() as conn:  # until the waiter blocks on the lock
                deadline = datetime.now(UTC) + timedelta(seconds=10)
                while not conn.execute(sa.text(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar_one():
                    assert datetime.now(UTC) < deadline, "the waiter never waited"
            a = tx.run.steps[("a", Role.FORWARD)]
            running = replace(a, status=StepStatus.RUNNING, attempt=1, fence=1)
            tx.save(tx.run.put(running).put(StepState("b", Role.FORWARD, StepStatus.QUEUED)))
        thread.join(10)
        assert seen and seen[0].steps[("a", Role.FORWARD)].fence == 1
        assert ("b", Role.FORWARD) in seen[0].steps
    finally:
        store.close()


def test_a_connection_lost_mid_transaction_is_an_outage(database_url):
    store = Store(database_url)
    try:
        started(store, StepState("a", Role.FORWARD, StepStatus.QUEUED, queued_at=NOW))
        with pytest.raises(sa.exc.DBAPIError):
            with store.transaction("r-1") as tx:
                pid = tx.conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
                with store.engine.connect() as other:
                    other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
                a = tx.run.steps[("a", Role.FORWARD)]
                with pytest.raises(sa.exc.DBAPIError) as raised:  # as the save raised it
                    tx.save(tx.run.put(replace(a, status=StepStatus.RUNNING, fence=1)))
                raise raised.value
        assert raised.value.connection_invalidated and unreachable(raised.value)
        with store.transaction("r-1") as tx:  # the pool let the dead connection go
            assert tx.run.steps[("a", Role.FORWARD)].status is StepStatus.QUEUED
    finally:
        store.close()
