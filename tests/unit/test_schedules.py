"""Cron on a time zone's wall clock → logical times (across DST), catch-up plans, checks."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import marshmallow as ma
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga import DefinitionError, Saga, Step
from saga.errors import InvalidBackfill
from saga.registry import Registry
from saga.schedules.backfill import parse_lines
from saga.schedules.cron import Schedule, iso, schedule_key
from saga.schedules.firing import scheduled


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def times(schedule: Schedule, start: str, end: str) -> list[str]:
    return [iso(t) for t in schedule.times(utc(start), utc(end))]


# -- cron → logical times across daylight saving -------------------------------------------

# Paris: 2024-03-31 02:00 CET → 03:00 CEST (UTC 01:00); 2024-10-27 03:00 CEST → 02:00 CET
# (UTC 01:00). New York: 2024-03-10 02:00 EST → 03:00 EDT; 2024-11-03 02:00 EDT → 01:00 EST.
DST_CASES = [
    pytest.param("30 2 * * *", "Europe/Paris", "2024-03-29", "2024-04-02",
                 ["2024-03-29T01:30:00Z", "2024-03-30T01:30:00Z",
                  "2024-03-31T01:30:00Z",  # 02:30 never happens: fires at 03:30 CEST
                  "2024-04-01T00:30:00Z"],
                 id="daily-in-the-skipped-hour-fires-once-moved-forward"),
    pytest.param("30 2 * * *", "Europe/Paris", "2024-10-25", "2024-10-29",
                 ["2024-10-25T00:30:00Z", "2024-10-26T00:30:00Z",
                  "2024-10-27T00:30:00Z",  # 02:30 happens twice: the first only
                  "2024-10-28T01:30:00Z"],
                 id="daily-in-the-repeated-hour-fires-once"),
    pytest.param("0 3 * * *", "Europe/Paris", "2024-03-30", "2024-04-01T12:00",
                 ["2024-03-30T02:00:00Z", "2024-03-31T01:00:00Z", "2024-04-01T01:00:00Z"],
                 id="daily-outside-the-change-keeps-its-wall-time"),
    pytest.param("0 * * * *", "Europe/Paris", "2024-10-26T22:00", "2024-10-27T03:00",
                 ["2024-10-26T22:00:00Z", "2024-10-26T23:00:00Z", "2024-10-27T00:00:00Z",
                  "2024-10-27T01:00:00Z", "2024-10-27T02:00:00Z", "2024-10-27T03:00:00Z"],
                 id="hourly-fires-every-real-hour-through-fall-back"),
    pytest.param("0 * * * *", "Europe/Paris", "2024-03-30T23:00", "2024-03-31T03:00",
                 ["2024-03-30T23:00:00Z", "2024-03-31T00:00:00Z", "2024-03-31T01:00:00Z",
                  "2024-03-31T02:00:00Z", "2024-03-31T03:00:00Z"],
                 id="hourly-fires-every-real-hour-through-spring-forward"),
    pytest.param("*/30 1-3 * * *", "America/New_York", "2024-03-10T05:00", "2024-03-10T08:00",
                 ["2024-03-10T06:00:00Z", "2024-03-10T06:30:00Z",  # 01:00, 01:30 EST
                  "2024-03-10T07:00:00Z", "2024-03-10T07:30:00Z"],  # 03:00, 03:30 EDT
                 id="gap-times-merge-with-the-times-after-the-jump"),
    pytest.param("15 1 * * *", "America/New_York", "2024-11-02", "2024-11-05",
                 ["2024-11-02T05:15:00Z", "2024-11-03T05:15:00Z", "2024-11-04T06:15:00Z"],
                 id="new-york-repeated-hour-first-occurrence"),
    pytest.param("0 12 * * 1", "UTC", "2024-01-01", "2024-01-22",
                 ["2024-01-01T12:00:00Z", "2024-01-08T12:00:00Z", "2024-01-15T12:00:00Z"],
                 id="weekly-in-utc"),
]


@pytest.mark.parametrize(("cron", "zone", "start", "end", "expected"), DST_CASES)
def test_logical_times_follow_the_wall_clock_across_dst(cron, zone, start, end, expected):
    """Given a cron in a zone, When listing a window around a DST change, Then these instants."""
    assert times(Schedule(cron, zone), start, end) == expected


def test_window_bounds_are_inclusive_and_next_after_is_strict():
    daily = Schedule("0 3 * * *", "UTC")
    assert times(daily, "2024-01-01T03:00", "2024-01-03T03:00") == [
        "2024-01-01T03:00:00Z", "2024-01-02T03:00:00Z", "2024-01-03T03:00:00Z"]
    assert daily.next_after(utc("2024-01-01T03:00")) == utc("2024-01-02T03:00")
    assert daily.next_after(utc("2024-01-01T02:59:59")) == utc("2024-01-01T03:00")


def test_latest_finds_the_newest_time_even_years_back():
    yearly = Schedule("0 0 1 1 *", "America/New_York")
    assert yearly.latest(utc("2000-01-01"), utc("2024-06-01")) == utc("2024-01-01T05:00")
    assert yearly.latest(utc("2024-01-02"), utc("2024-06-01")) is None


def test_logical_time_and_key_are_utc_iso():
    paris = datetime(2024, 3, 31, 3, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert iso(paris) == "2024-03-31T01:30:00Z"
    assert schedule_key(utc("2024-03-31T01:30")) == "schedule:2024-03-31T01:30:00Z"


def test_a_naive_time_is_refused():
    with pytest.raises(ValueError, match="no time zone"):
        next(Schedule("* * * * *").times(datetime(2024, 1, 1)))


ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
         "America/Santiago", "Pacific/Chatham", "UTC"]
CRONS = ["0 * * * *", "*/20 * * * *", "30 2 * * *", "0 0-3 * * *", "45 1 * * 0", "0 3 1 * *"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CRONS), st.sampled_from(ZONES),
       st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)))
def test_times_ascend_strictly_and_agree_with_next_after(cron, zone, start):
    """Property: for any window start, times ascend, and each is next_after the one before."""
    schedule = Schedule(cron, zone)
    start = start.replace(tzinfo=UTC)
    found = list(islice(schedule.times(start), 12))
    assert all(a < b for a, b in zip(found, found[1:], strict=False))
    assert found[0] >= start
    assert schedule.next_after(start - timedelta(microseconds=1)) == found[0]
    for before, after in zip(found, found[1:], strict=False):
        assert schedule.next_after(before) == after
    assert list(schedule.times(start, found[-1])) == found


# -- catch-up policies --------------------------------------------------------------------

EVERY_10 = "*/10 * * * *"
DUE = "2024-05-01T10:00"


@pytest.mark.parametrize(("policy", "now", "fire", "next_fire_at"), [
    # on time (within the minute of grace): every policy fires it
    ("skip", "2024-05-01T10:00:30", ["10:00"], "10:10"),
    ("latest", "2024-05-01T10:00:30", ["10:00"], "10:10"),
    ("all", "2024-05-01T10:00:30", ["10:00"], "10:10"),
    # down from before 10:00 until 10:42: 10:00 … 10:40 were missed
    ("skip", "2024-05-01T10:42", [], "10:50"),
    ("latest", "2024-05-01T10:42", ["10:40"], "10:50"),
    ("all", "2024-05-01T10:42", ["10:00", "10:10", "10:20"], "10:30"),  # batch of 3
    # back just as a firing is due: skip fires only that one
    ("skip", "2024-05-01T10:40", ["10:40"], "10:50"),
    ("latest", "2024-05-01T10:40", ["10:40"], "10:50"),
    # not due yet: nothing, and the next firing stays
    ("all", "2024-05-01T09:59", [], "10:00"),
])
def test_catch_up_policy_decides_what_missed_firings_come_to(policy, now, fire, next_fire_at):
    """Given a schedule due at 10:00, When a sweep sees it at `now`, Then its plan is this."""
    plan = Schedule(EVERY_10, catch_up=policy).plan(utc(DUE), utc(now), batch=3)
    assert [iso(t)[11:16] for t in plan.fire] == fire
    assert iso(plan.next_fire_at)[11:16] == next_fire_at


def test_all_catches_up_batch_by_batch_to_the_present():
    schedule = Schedule(EVERY_10, catch_up="all")
    due, now, fired = utc(DUE), utc("2024-05-01T12:05"), []
    while due <= now:
        plan = schedule.plan(due, now, batch=4)
        fired += plan.fire
        due = plan.next_fire_at
    assert fired == list(schedule.times(utc(DUE), now))
    assert len(fired) == 13 and due == utc("2024-05-01T12:10")


def test_latest_across_dst_picks_the_newest_real_instant():
    schedule = Schedule("30 2 * * *", "Europe/Paris", catch_up="latest")
    plan = schedule.plan(utc("2024-03-29T01:30"), utc("2024-03-31T12:00"), batch=10)
    assert plan.fire == (utc("2024-03-31T01:30"),)
    assert plan.next_fire_at == utc("2024-04-01T00:30")


# -- checks at definition time ------------------------------------------------------------

class NeedsOrder(ma.Schema):
    order_id = ma.fields.String(required=True)


@pytest.mark.parametrize(("schedule", "message"), [
    (Schedule("not a cron"), "five fields"),
    (Schedule("61 * * * *"), "not a valid cron"),
    (Schedule("0 3 * * * *"), "five fields"),
    (Schedule("0 0 30 2 *"), "never fires"),
    (Schedule("0 3 * * *", "Mars/Olympus_Mons"), "not a known IANA time zone"),
    (Schedule("0 3 * * *", catch_up="some"), "catch_up must be one of skip, latest, all"),
    (Schedule("0 3 * * *", grace=timedelta(seconds=-1)), "grace"),
])
def test_a_bad_schedule_is_refused_naming_the_saga(schedule, message):
    with pytest.raises(DefinitionError, match=message) as caught:
        schedule.check("nightly_report")
    assert "saga 'nightly_report'" in str(caught.value)


def test_a_schedule_whose_input_the_saga_refuses_is_a_definition_error():
    saga = Saga("orders", steps=[Step("one", print)], input=NeedsOrder)
    with pytest.raises(DefinitionError, match="input schema refuses"):
        Schedule("0 3 * * *").check(saga)


def test_good_schedules_pass():
    for schedule in (Schedule("0 3 * * *", "Europe/Paris"), Schedule("@hourly", catch_up="all"),
                     Schedule("0 3 L * *"), Schedule("0 9 * * MON-FRI", "Asia/Tokyo", "skip")):
        schedule.check("fine")


@pytest.mark.skipif("schedule" not in {f.name for f in dataclasses.fields(Saga)},
                    reason="Saga has no schedule field yet")
def test_saga_with_a_bad_schedule_fails_when_defined():
    with pytest.raises(DefinitionError, match="saga 'nightly'.*timezone"):
        Saga("nightly", steps=[Step("one", print)],
             schedule=Schedule("0 3 * * *", "Europe/Pariss"))


def test_the_sweeper_skips_a_bad_schedule_that_slipped_past_the_definition(caplog):
    good, bad = (Saga(name, steps=[Step("one", print)]) for name in ("good", "bad"))
    object.__setattr__(good, "schedule", Schedule("0 3 * * *"))
    object.__setattr__(bad, "schedule", Schedule("0 3 * * *", "Nowhere/Special"))
    assert scheduled(Registry([good, bad])) == {"good": Schedule("0 3 * * *")}
    assert "saga 'bad': schedule timezone" in caplog.text


# -- JSON lines of a backfill's inputs ----------------------------------------------------

def test_json_lines_parse_skipping_blank_lines():
    assert parse_lines(['{"key": "a", "input": {"n": 1}}\n', "\n", "[1, 2]\n"]) == [
        ("line 1", {"key": "a", "input": {"n": 1}}), ("line 3", [1, 2])]


def test_a_malformed_line_is_named_by_its_number():
    with pytest.raises(InvalidBackfill) as caught:
        parse_lines(['{"ok": 1}\n', '{"broken": \n', '{"also": NaN}\n'])
    assert set(caught.value.errors) == {"line 2", "line 3"}
    assert "not JSON" in caught.value.errors["line 2"][0]


def test_an_empty_file_is_refused():
    with pytest.raises(InvalidBackfill, match="no lines"):
        parse_lines(["\n", "  \n"])
