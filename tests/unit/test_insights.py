"""The console's aggregates on SQLite (the embedded store): the same numbers PostgreSQL gives,
percentiles ranked in Python, runs counted per minute of the movable clock."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from saga import NonRetryable, Retry, Saga, Step
from saga.engine import Engine
from saga.registry import Registry
from saga.store import Store
from saga.store.insights import percentile
from saga.testing.clock import MovableClock
from saga.testing.dispatch import RecordingDispatcher
from saga.worker.runner import Worker

CLOCK = MovableClock()


def slow(ctx):
    CLOCK.advance(timedelta(seconds=4))
    return {}


def decline(ctx):
    raise NonRetryable("declined")


def gateway(ctx):
    raise TimeoutError("no answer")


SAGAS = [Saga("timed", steps=[Step("work", slow)]),
         Saga("declined", steps=[Step("charge", decline)]),
         Saga("doubtful", steps=[Step("charge", gateway,
                                      retry=Retry(attempts=2, first_delay=timedelta(hours=1)))])]


class Parts:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.dispatcher = RecordingDispatcher()
        registry = Registry(SAGAS)
        self.engine = Engine(registry, store, self.dispatcher)
        self.worker = Worker(self.engine, registry, self.dispatcher, inline_steps=50)

    def run(self, saga: str, took: int = 0) -> str:
        run_id, _ = self.engine.start(saga, {})
        CLOCK.advance(timedelta(seconds=took))
        while sent := self.dispatcher.take():
            for hint in sent:
                self.worker.run_step(hint.run_id, hint.command.step, hint.command.role,
                                     hint.saga, hint.version, worker="host/1")
        return run_id


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from saga import migrations

    path = tmp_path_factory.mktemp("log") / "saga.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def parts(migrated: Path, tmp_path: Path) -> Iterator[Parts]:
    shutil.copy(migrated, tmp_path / "saga.db")
    store = Store(f"sqlite:///{tmp_path / 'saga.db'}", CLOCK)
    yield Parts(store)
    store.close()


def test_percentile_interpolates_as_percentile_cont():
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([30.0, 10.0, 20.0], 0.5) == 20.0
    assert percentile([10.0, 20.0, 30.0], 0.99) == pytest.approx(29.8)


def test_version_and_step_numbers_on_sqlite(parts):
    """Given three runs of 10, 20 and 30 s (each with a 4 s step) and one declined, Then the
    version has p50 24 s and p99 33.8 s, one in four failed, and the step's mean is 4 s."""
    for took in (10, 20, 30):
        parts.run("timed", took)
    parts.run("declined")
    stats = parts.store.version_stats(timedelta(hours=1))
    timed = stats[("timed", 1)]
    assert (timed.in_flight, timed.finished, timed.succeeded) == (0, 3, 3)
    assert timed.p50_s == pytest.approx(24.0, abs=0.5)
    assert timed.p99_s == pytest.approx(33.8, abs=0.5)
    assert stats[("declined", 1)].success_rate == 0.0
    assert parts.store.version_stats(timedelta(hours=1), "declined").keys() == {("declined", 1)}
    by_step = {(s.saga, s.step): s for s in parts.store.step_stats(timedelta(hours=1))}
    work = by_step[("timed", "work")]
    assert (work.ended, work.failed, work.failed_attempts) == (3, 0, 0)
    assert work.mean_s == pytest.approx(4.0, abs=0.5) and work.max_s == pytest.approx(4.0, abs=0.5)
    charge = by_step[("declined", "charge")]
    assert (charge.ended, charge.failed, charge.failed_attempts) == (1, 1, 1)


def test_runs_per_minute_puts_each_run_in_its_minute(parts):
    """Given runs started two minutes apart, Then each is counted in its own minute, the
    newest in the last one; runs older than the window are not counted."""
    parts.run("declined")
    CLOCK.advance(timedelta(minutes=70))  # out of the window
    parts.run("declined")
    CLOCK.advance(timedelta(minutes=2))
    parts.run("declined")
    parts.run("declined")
    counts = parts.store.runs_per_minute(60)
    assert counts.minutes == 60
    started = counts.started["compensated"]
    assert started[-1] == 2 and started[-3] == 1 and sum(started) == 3
    assert counts.finished["compensated"] == started


def test_stuck_counts_parked_failed_and_in_doubt(parts):
    doubtful = parts.run("doubtful")
    assert parts.store.get_run(doubtful)["steps"][0]["in_doubt"]
    parked, _ = parts.engine.start("timed", {})
    parts.engine.park(parked, "a person must look")
    assert parts.store.stuck() == type(parts.store.stuck())(parked=1, failed=0, in_doubt=1)
