"""The saga test kit on the trip example (examples/trip.py), through the `saga_kit` fixture.

Everything runs in this process on the real engine, worker and sweeper: SQLite by default,
and PostgreSQL in the class at the end (the fixture pointed at `database_url`). The
services are in memory (examples/travel.py), read by the saga's invariant.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest

from examples import travel
from examples.trip import book_trip, book_trip_broken, nothing_held_unless_booked
from saga.testing.kit import POINTS, Fault, InvariantBroken, KitError, SagaKit, Scenario
from tests.stack import ROOT

TRIP = {"trip_id": "t-1", "card": "4242"}
DECLINED = {"trip_id": "t-1", "card": travel.DECLINED_CARD}


@pytest.fixture(autouse=True)
def empty_services():
    travel.reset()
    yield
    travel.reset()


def test_a_trip_is_booked_in_one_call(saga_kit: SagaKit) -> None:
    result = saga_kit.run(book_trip, TRIP)

    assert result.status == "succeeded"
    assert result.outputs["reserve_car"] == {"car": "car-1"}
    assert travel.held("t-1") == {"seat": ["seat-1"], "room": ["room-1"], "car": ["car-1"],
                                  "charge": ["charge-1"]}
    assert "book_trip v1  SUCCEEDED" in result.timeline
    nothing_held_unless_booked(result)


def test_a_declined_card_releases_everything_even_in_the_broken_saga(saga_kit: SagaKit) -> None:
    """The test an author writes by hand passes on both: only explore tells them apart."""
    for saga in (book_trip, book_trip_broken):
        result = saga_kit.run(saga, DECLINED)
        assert result.status == "compensated", result.timeline
        assert "card 'declined' was declined" in result.error
        undone = [c["name"] for c in result.compensations if c["status"] == "succeeded"]
        assert undone[0] == "charge_card" and undone[-1] == "reserve_flight"
        assert set(undone[1:3]) == {"reserve_hotel", "reserve_car"}  # in parallel
        nothing_held_unless_booked(result)


@pytest.mark.parametrize("at", ["before_effect", "after_effect", "before_commit",
                                "after_commit"])
def test_a_crashed_attempt_is_recovered_through_its_lease_and_holds_once(
        saga_kit: SagaKit, at: str) -> None:
    """Given the process running reserve_car dies at `at` on its first attempt,
    When the clock passes its lease,
    Then the sweeper counts the attempt failed and a new worker runs it again (unless it
    had committed): the trip is booked, holding one car."""
    result = saga_kit.run(book_trip, TRIP, faults=[Fault.crash("reserve_car", at=at)])

    assert result.status == "succeeded", result.timeline
    assert [str(s) for s in result.struck] == [
        f"a crash {Fault.crash('reserve_car', at=at).describe().split(' ', 2)[2]}"]
    committed = at == "after_commit"
    assert result.attempts("reserve_car") == (1 if committed else 2)
    if not committed:
        retried = [e for e in result.events if e["type"] == "step.running"
                   and e["step"] == "reserve_car"]
        assert [e["worker"] for e in retried] == ["saga-kit/1", "saga-kit/2"]
        assert "no heartbeat within the lease" in result.timeline
    nothing_held_unless_booked(result)


def test_a_crash_in_a_compensation_is_recovered_and_releases_once(saga_kit: SagaKit) -> None:
    faults = [Fault.nonretryable("charge_card"),
              Fault.crash("reserve_hotel", at="before_commit", compensate=True)]
    result = saga_kit.run(book_trip, TRIP, faults=faults)

    assert result.status == "compensated", result.timeline
    assert result.attempts("reserve_hotel", "compensate") == 2
    assert result.step("reserve_hotel", "compensate")["output"] == {"released": []}
    nothing_held_unless_booked(result)


def test_a_retry_waits_for_the_clock_to_move(saga_kit: SagaKit) -> None:
    """Given reserve_flight fails once (its next attempt 2 s later, give or take 10%),
    When the clock moves 0.5 s, nothing runs; when it moves 2 s more, the trip is booked."""
    result = saga_kit.run(book_trip, TRIP, faults=[Fault.error("reserve_flight")],
                          fast_forward=False)
    assert result.status == "running"
    assert result.step("reserve_flight")["status"] == "retry_wait"

    saga_kit.advance(timedelta(seconds=0.5))
    assert saga_kit.result(result.id).step("reserve_flight")["status"] == "retry_wait"

    saga_kit.advance(timedelta(seconds=2))
    after = saga_kit.result(result.id)
    assert after.status == "succeeded"
    assert after.attempts("reserve_flight") == 2


def test_a_step_timing_out_on_every_attempt_is_compensated(saga_kit: SagaKit) -> None:
    result = saga_kit.run(book_trip, TRIP, faults=[Fault.timeout("reserve_car", attempt=None)])

    assert result.status == "compensated"
    assert result.attempts("reserve_car") == 3
    assert "exceeded its 20.0s time limit" in result.step("reserve_car")["error"]
    assert result.event_types().count("alert.timeout") == 3
    nothing_held_unless_booked(result)


def test_a_compensation_that_gives_up_fails_the_run_until_retried(saga_kit: SagaKit) -> None:
    faults = [Fault.nonretryable("charge_card"),
              Fault.nonretryable("reserve_flight", compensate=True)]
    failed = saga_kit.run(book_trip, TRIP, faults=faults)
    assert failed.status == "failed"
    assert travel.held("t-1")["seat"] == ["seat-1"]

    resumed = saga_kit.retry(failed.id)
    assert resumed.status == "compensated"
    nothing_held_unless_booked(resumed)


def test_a_run_cancelled_before_it_ran_holds_nothing(saga_kit: SagaKit) -> None:
    run_id = saga_kit.start(book_trip, TRIP)
    result = saga_kit.cancel(run_id)
    assert result.status == "cancelled"
    nothing_held_unless_booked(result)


def test_a_fault_must_name_a_step_the_saga_has(saga_kit: SagaKit) -> None:
    with pytest.raises(KitError, match="no step 'reserve_boat'"):
        saga_kit.run(book_trip, TRIP, faults=[Fault.error("reserve_boat")])
    with pytest.raises(KitError, match="step 'reserve_flight' has no timeout"):
        saga_kit.run(book_trip, TRIP, faults=[Fault.timeout("reserve_flight")])
    with pytest.raises(ValueError, match="strikes at before_effect or after_effect"):
        Fault.error("reserve_car", at="after_commit")


def test_explore_keeps_the_invariant_of_the_correct_saga(saga_kit: SagaKit) -> None:
    exploration = saga_kit.explore(book_trip, TRIP, nothing_held_unless_booked,
                                   reset=travel.reset)

    # 1 plain run; 4 steps x 8 forward faults, 2 timeouts (reserve_car has a time limit);
    # 4 compensations x 6 faults, 2 timeouts.
    assert len(exploration.tried) == 61
    assert exploration.missed == ()


def test_explore_finds_the_car_the_broken_compensation_forgets(saga_kit: SagaKit) -> None:
    with pytest.raises(InvariantBroken) as broken:
        saga_kit.explore(book_trip_broken, TRIP, nothing_held_unless_booked,
                         reset=travel.reset)

    found = broken.value
    assert found.scenario.fault == Fault.nonretryable("reserve_car", at="after_effect")
    assert found.result.status == "compensated"
    report = str(found)
    print(report)  # what the author sees (pytest -s)
    for part in ("invariant nothing_held_unless_booked broken in scenario 21 of 61",
                 "fault     a NonRetryable after reserve_car had its effect (attempt 1)",
                 "message   trip t-1 ended compensated but still holds car-",
                 "reserve_car succeeded -> {\"released\": []}",
                 "faults=[Fault.nonretryable('reserve_car', at='after_effect')]",
                 "compensation reserve_car"):
        assert part in report, report


def test_importing_the_plugin_loads_no_database_or_broker_code() -> None:
    """Every pytest session on a machine with saga installed imports the plugin."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, saga.testing.plugin; print(sorted(m for m in "
         "('celery', 'sqlalchemy', 'alembic', 'kombu', 'saga.engine') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"


class TestOnPostgreSQL:
    """The same kit on PostgreSQL: `saga_kit_database_url` overridden, as an author would."""

    @pytest.fixture
    def saga_kit_database_url(self, database_url: str) -> str:
        return database_url

    def test_explore_finds_the_broken_compensation_and_passes_the_correct_one(
            self, saga_kit: SagaKit) -> None:
        assert saga_kit.settings.database_url.startswith("postgresql")
        with pytest.raises(InvariantBroken) as broken:
            saga_kit.explore(book_trip_broken, TRIP, nothing_held_unless_booked,
                             reset=travel.reset)
        found = broken.value.scenario
        assert found.fault == Fault.nonretryable("reserve_car", at="after_effect")
        # The correct saga passes that scenario, and a crash at each point of a step and
        # of a compensation (the SQLite test above runs all 61).
        crashes = [Scenario(Fault.crash("reserve_car", at=at)) for at in POINTS] + [
            Scenario(Fault.crash("reserve_hotel", at=at, compensate=True),
                     Fault.nonretryable("charge_card")) for at in POINTS]
        exploration = saga_kit.explore(book_trip, TRIP, nothing_held_unless_booked,
                                       reset=travel.reset, only=[found, *crashes])
        assert exploration.missed == ()
