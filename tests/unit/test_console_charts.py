"""The console's charts and the overview's step tables: pure functions of their numbers."""

from __future__ import annotations

import re

import pytest

from saga import Saga, Step, WaitForSignal
from saga.api.console import charts
from saga.api.console.overview import failing, slowest, window_named, without_waits
from saga.registry import Registry
from saga.store.insights import StepStats


@pytest.mark.parametrize(("value", "top"), [(0, 1), (1, 1), (3, 5), (7, 10), (11, 20),
                                             (20, 20), (120, 200), (501, 1000)])
def test_an_axis_ends_at_the_next_round_number(value, top):
    assert charts.nice_ceiling(value) == top


@pytest.mark.parametrize(("value", "shown"), [(None, "-"), (1.0, "100 %"), (0.5, "50 %"),
                                              (0.8861, "88.6 %"), (0.9999, "99.9 %")])
def test_a_share_never_rounds_a_miss_away(value, shown):
    assert charts.percent(value) == shown


def test_seconds_read_as_durations():
    assert charts.seconds(None) == "-"
    assert charts.seconds(4.21) == "4.2 s"
    assert charts.seconds(185) == "3 min 05 s"


def test_columns_stack_each_minute_and_tell_the_totals():
    chart = charts.columns({"failed": [0, 2], "succeeded": [3, 1], "running": [0, 0]},
                           ["09:14", "09:15"], label="Runs", order=("succeeded", "failed"))
    assert 'aria-label="Runs: 4 succeeded, 2 failed"' in chart
    assert len(re.findall(r"<rect ", chart)) == 3  # zeros draw nothing
    assert "<title>09:15 failed: 2</title>" in chart
    assert "series-running" not in chart  # a series with no runs is left out, legend too
    heights = [float(h) for h in re.findall(r'height="([\d.]+)"', chart)]
    assert heights[0] == pytest.approx(heights[1] + heights[2])  # 3 == 1 + 2


def test_a_chart_escapes_what_it_is_given():
    chart = charts.lines({"<b>": [1]}, ["<i>"], label="a & b")
    assert "<b>" not in chart and "<i>" not in chart and "a &amp; b" in chart


def test_an_empty_chart_says_so():
    assert "Nothing in this window." in charts.columns({}, ["09:14"], label="Runs")


def test_a_meter_is_a_share_of_the_largest():
    assert 'width="50.0"' in charts.meter(2, 4, "two")
    assert 'width="100.0"' in charts.meter(9, 4, "over")
    assert 'width="0.0"' in charts.meter(1, 0, "none")


def stat(step: str, mean: float | None, attempts: int = 0, failed: int = 0) -> StepStats:
    return StepStats("order", step, "forward", 10, failed, attempts, mean, mean)


def test_the_tables_rank_steps_and_leave_waits_out():
    registry = Registry([Saga("order", steps=[Step("a", print), WaitForSignal("label"),
                                              Step("b", print)])])
    stats = [stat("a", 1.0, attempts=2), stat("label", 3600.0), stat("b", 2.0, failed=1),
             stat("c", None)]
    kept = without_waits(stats, registry)
    assert [s.step for s in kept] == ["a", "b", "c"]
    assert [s.step for s in slowest(kept)] == ["b", "a"]
    assert [s.step for s in failing(kept)] == ["a", "b"]


def test_a_window_is_an_hour_or_a_day():
    assert [window_named(n) for n in (None, "", "hour", "day", "week")] == [
        "hour", "hour", "hour", "day", None]
