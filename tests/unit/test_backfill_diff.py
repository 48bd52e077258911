"""A backfill's dry-run diff: how a window whose key already ran differs from what it asks."""

from __future__ import annotations

import pytest

from saga.schedules.backfill import Difference, EarlierRun, plan_windows

WANTED = {"logical_time": "2024-03-28T02:00:00Z"}


OTHER = {"logical_time": "2024-03-29T02:00:00Z"}


@pytest.mark.parametrize(("status", "wanted", "ran_with", "expected"), [
    ("succeeded", WANTED, WANTED, Difference.UNCHANGED),
    ("succeeded", WANTED, OTHER, Difference.INPUT_CHANGED),
    ("failed", WANTED, WANTED, Difference.FAILED),
    ("compensated", WANTED, WANTED, Difference.FAILED),
    ("cancelled", WANTED, WANTED, Difference.FAILED),
    ("running", WANTED, WANTED, Difference.RUNNING),
    ("compensating", WANTED, WANTED, Difference.RUNNING),
    # Another input is the most telling difference, whatever the run's status.
    ("failed", WANTED, OTHER, Difference.INPUT_CHANGED),
    ("running", WANTED, OTHER, Difference.INPUT_CHANGED),
    # Equal as JSON, not as Python: 1 and true are two inputs.
    ("succeeded", {"n": True}, {"n": 1}, Difference.INPUT_CHANGED),
])
def test_a_window_that_ran_is_classified_by_its_run(status, wanted, ran_with, expected):
    plan = plan_windows("nightly", [("schedule:a", wanted)],
                        {"schedule:a": EarlierRun("r1", status, ran_with)}, max_running=1)
    [window] = plan.windows
    assert window.difference is expected
    assert plan.items == ()
    assert plan.existing == 1


@pytest.mark.parametrize(("ran_with", "same"), [
    ({"a": 1, "b": [1, 2]}, True),  # key order never matters
    ({"b": [1, 2], "a": 1}, True),
    ({"a": 1.0, "b": [1, 2]}, False),
    ({"a": 1, "b": [2, 1]}, False),
    ({"a": 1}, False),
])
def test_input_is_compared_as_json(ran_with, same):
    plan = plan_windows("s", [("k", {"a": 1, "b": [1, 2]})],
                        {"k": EarlierRun("r", "succeeded", ran_with)}, max_running=1)
    assert (plan.windows[0].difference is Difference.UNCHANGED) is same


def test_the_plan_keeps_window_order_and_starts_only_those_never_run():
    """Given four windows, three of which ran, Then one starts and the counts name the rest."""
    wanted = [(f"k{i}", {"i": i}) for i in range(4)]
    found = {"k0": EarlierRun("r0", "succeeded", {"i": 0}),
             "k1": EarlierRun("r1", "failed", {"i": 1}, error="card declined"),
             "k3": EarlierRun("r3", "succeeded", {"i": 30})}

    plan = plan_windows("s", wanted, found, max_running=2)

    assert [w.key for w in plan.windows] == ["k0", "k1", "k2", "k3"]
    assert [w.difference for w in plan.windows] == [
        Difference.UNCHANGED, Difference.FAILED, None, Difference.INPUT_CHANGED]
    assert plan.items == (("k2", {"i": 2}),)
    assert [w.key for w in plan.ran] == ["k0", "k1", "k3"]
    assert plan.existing == 3
    # In Difference's order (most telling first), zeros left out.
    assert list(plan.counts().items()) == [
        (Difference.INPUT_CHANGED, 1), (Difference.FAILED, 1), (Difference.UNCHANGED, 1)]


def test_a_plan_with_nothing_run_starts_every_window():
    plan = plan_windows("s", [("a", 1), ("b", 2)], {}, max_running=1)
    assert plan.items == (("a", 1), ("b", 2))
    assert plan.ran == () and plan.existing == 0 and plan.counts() == {}
