"""The pivot, a saga's point of no return: checked when defined, then held by the state machine.

Before the pivot succeeds a failure compensates as always; once it has, nothing is undone:
a step that fails for good parks the run for a person, a cancel is refused, and a passed
deadline only alerts. The last tests drive the engine on an embedded SQLite log.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import hypothesis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from state_script import NO_WAIT, ONCE, T0, cmds, dispatch, play, step, view

from saga import NonRetryable, Parallel, Retry, Saga, Step, WaitForSignal, state
from saga.definitions import Wait
from saga.engine import Engine
from saga.errors import DefinitionError, RunStateConflict
from saga.events import Alert, CancelRequested, DeadlinePassed, RetryRequested, history
from saga.registry import Registry
from saga.run import Role, RunStatus
from saga.store import Store
from saga.testing.dispatch import RecordingDispatcher
from saga.worker.runner import Worker


def alerts(commands: list) -> list[tuple[str, str | None]]:
    return [(c.reason, c.step) for c in commands if isinstance(c, Alert)]


def pivot(name: str, **kwargs) -> Step:
    return step(name, comp=False, pivot=True, **kwargs)


# a ok → p (the pivot) → c, d; nothing after p has a compensation.
PIVOTED = Saga("pivoted", steps=[step("a"), pivot("p"), step("c", comp=False, retry=NO_WAIT),
                                 step("d", comp=False)])


# -- checked when defined ----------------------------------------------------------------

def test_a_pivot_in_a_sequence_is_the_sagas_pivot():
    assert PIVOTED.pivot == "p"
    assert Saga("plain", steps=[step("a")]).pivot is None


def test_a_pivot_inside_a_parallel_group_is_refused_naming_its_sibling():
    with pytest.raises(DefinitionError, match=r"saga 'fork' v1, step 'p' is the pivot but "
                                              r"'q' may run beside it"):
        Saga("fork", steps=[step("a"), Parallel(pivot("p"), step("q", comp=False))])


def test_a_pivot_deep_in_a_branch_is_refused_unless_after_orders_the_other_branch():
    """p ends one branch of a group and q is the other: q may run beside p, unless q is
    made to wait for p with after=."""
    with pytest.raises(DefinitionError, match="'q' may run beside it"):
        Saga("branch", steps=[Parallel([step("a"), pivot("p")], step("q", comp=False))])
    ordered = Saga("branch", steps=[Parallel([step("a"), pivot("p")],
                                             step("q", comp=False, after=("p",)))])
    assert ordered.pivot == "p"


def test_a_parallel_group_wholly_before_or_after_the_pivot_is_fine():
    saga = Saga("ok", steps=[Parallel(step("a"), step("b")), pivot("p"),
                             Parallel(step("c", comp=False), step("d", comp=False))])
    assert saga.pivot == "p"


def test_two_pivots_are_refused():
    with pytest.raises(DefinitionError, match="'p' and 'q' are both pivots"):
        Saga("twice", steps=[pivot("p"), pivot("q")])


def test_a_compensation_after_the_pivot_is_refused_as_it_would_never_run():
    with pytest.raises(DefinitionError, match="'c' comes after the pivot 'p', so it is never "
                                              "compensated: remove its compensate="):
        Saga("undo", steps=[pivot("p"), step("c")])


def test_pivot_must_be_a_bool():
    with pytest.raises(DefinitionError, match="step 'p': pivot must be True or False"):
        Saga("s", steps=[Step("p", lambda ctx: None, pivot="yes")])


def test_the_pivot_is_part_of_the_shape_and_a_saga_without_one_keeps_its_digest():
    """A definition that gains a pivot under one version changes shape; others do not."""
    plain = Saga("s", steps=[step("a"), step("b", comp=False)])
    shape = {"a": [[], True, "action"], "b": [["a"], False, "action"]}
    before = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    assert plain.shape_hash == before
    assert Saga("s", steps=[step("a"), pivot("b")]).shape_hash != before


# -- before the pivot: failures compensate ------------------------------------------------

def test_a_failure_before_the_pivot_compensates_as_always():
    run, commands = play(PIVOTED, "a ok; p fail!")
    assert run.status is RunStatus.COMPENSATING
    assert view(run) == {"a": "succeeded", "p": "failed", "~a": "queued"}
    assert dispatch(commands) == cmds("~a")


# -- after the pivot: nothing is undone ------------------------------------------------------

def test_a_failure_after_the_pivot_parks_the_run_and_compensates_nothing():
    """Given the pivot succeeded, when c fails for good (NonRetryable),
    then c is parked, the run keeps running flagged for a person, and nothing is undone."""
    run, commands = play(PIVOTED, "a ok; p ok; c fail!")
    assert run.status is RunStatus.RUNNING
    assert view(run) == {"a": "succeeded", "p": "succeeded", "c": "parked"}
    assert run.parked.startswith("step 'c' failed after the pivot 'p' succeeded, so nothing "
                                 "may be undone")
    assert "c broke" in run.parked
    assert dispatch(commands) == [] and alerts(commands) == [("parked", "c")]


def test_after_the_pivot_a_retryable_failure_is_retried_by_its_policy():
    run, commands = play(PIVOTED, "a ok; p ok; c fail")
    assert (view(run)["c"], run.parked) == ("queued", None)
    assert dispatch(commands) == cmds("c")


def test_after_the_pivot_an_exhausted_policy_parks_instead_of_compensating():
    run, commands = play(PIVOTED, "a ok; p ok; c fail; c fail; c fail")
    assert (view(run)["c"], run.status, run.step("c").attempt) == ("parked", RunStatus.RUNNING, 3)
    assert alerts(commands) == [("parked", "c")]


@pytest.mark.parametrize("on_timeout", ["compensate", "park"])
def test_after_the_pivot_a_timeout_that_would_end_the_step_parks_it(on_timeout):
    saga = Saga("s", steps=[step("a"), pivot("p"),
                            step("c", comp=False, retry=NO_WAIT, on_timeout=on_timeout)])
    run, commands = play(saga, "a ok; p ok; c expire")
    assert (view(run)["c"], run.status) == ("parked", RunStatus.RUNNING)
    assert alerts(commands) == [("timeout", "c"), ("parked", "c")]
    assert run.step("c").in_doubt


def test_a_person_retrying_a_step_parked_after_the_pivot_resumes_it_to_the_end():
    run, _ = play(PIVOTED, "a ok; p ok; c fail; c fail; c fail")
    run, commands = state.advance(PIVOTED, run, RetryRequested(), T0)
    assert (view(run)["c"], run.step("c").attempt, run.parked) == ("queued", 0, None)
    assert dispatch(commands) == cmds("c")
    run, _ = play(PIVOTED, "c ok; d ok", run)
    assert run.status is RunStatus.SUCCEEDED


def test_a_signal_wait_timing_out_after_the_pivot_parks_and_waits_again_when_retried():
    saga = Saga("s", steps=[step("a"), pivot("p"),
                            WaitForSignal("label", timeout=timedelta(hours=1))])
    run, commands = play(saga, "a ok; p ok; label wake")
    assert (view(run)["label"], alerts(commands)) == (
        "parked", [("timeout", "label"), ("parked", "label")])
    later = T0 + timedelta(hours=2)
    run, commands = state.advance(saga, run, RetryRequested(), later)
    assert view(run)["label"] == "waiting" and dispatch(commands) == []
    assert run.step("label").wake_at == later + timedelta(hours=1)


def test_a_timer_after_the_pivot_is_untouched_by_it():
    saga = Saga("s", steps=[pivot("p"), Wait("cool_off", duration=timedelta(minutes=5)),
                            step("c", comp=False)])
    run, _ = play(saga, "p ok; cool_off wake; c ok")
    assert run.status is RunStatus.SUCCEEDED


# -- cancel and deadline at the pivot ----------------------------------------------------------

@pytest.mark.parametrize("script", ["a ok; p ok", "a ok; p claim"], ids=["succeeded", "running"])
def test_cancel_is_refused_once_the_pivot_succeeded_or_while_it_runs(script):
    run, _ = play(PIVOTED, script)
    assert state.advance(PIVOTED, run, CancelRequested(), T0) == (run, [])
    assert state.pivot_reached(PIVOTED, run)


def test_cancel_before_the_pivot_ran_compensates_what_was_done():
    run, _ = play(PIVOTED, "a ok")
    assert state.pivot_reached(PIVOTED, run) is None
    run, commands = state.advance(PIVOTED, run, CancelRequested(), T0)
    assert (view(run), run.status) == ({"a": "succeeded", "p": "cancelled", "~a": "queued"},
                                       RunStatus.COMPENSATING)


def test_a_deadline_passing_after_the_pivot_alerts_once_and_the_run_goes_on():
    saga = Saga("s", timeout=timedelta(minutes=1), steps=PIVOTED.steps)
    run, _ = play(saga, "a ok; p ok")
    run, commands = state.advance(saga, run, DeadlinePassed(), T0 + timedelta(minutes=2))
    assert (run.status, run.deadline_at) == (RunStatus.RUNNING, None)
    assert alerts(commands) == [("timeout", None)]
    assert "its pivot 'p' succeeded" in commands[0].message
    assert view(run) == {"a": "succeeded", "p": "succeeded", "c": "queued"}
    # Cleared, so the sweeper does not find it due again.
    assert state.advance(saga, run, DeadlinePassed(), T0 + timedelta(minutes=3)) == (run, [])


# -- a pivot in doubt ---------------------------------------------------------------------------

def test_a_pivot_without_compensation_that_gives_up_in_doubt_parks_instead_of_compensating():
    """Given the pivot's only attempt timed out (it may have taken effect, and cannot be
    undone), then what came before it is not compensated: the run waits for a person."""
    run, commands = play(PIVOTED, "a ok; p timeout")
    assert (view(run), run.status) == ({"a": "succeeded", "p": "parked"}, RunStatus.RUNNING)
    assert run.parked.startswith("the pivot 'p' may have taken effect")
    assert alerts(commands) == [("timeout", "p"), ("parked", "p")]
    assert "may have taken effect" in state.pivot_reached(PIVOTED, run)


def test_a_pivot_with_a_compensation_that_gives_up_in_doubt_is_compensated():
    saga = Saga("s", steps=[step("a"), step("p", pivot=True, retry=ONCE)])
    run, commands = play(saga, "a ok; p timeout")
    assert view(run) == {"a": "succeeded", "p": "failed", "~p": "queued"}


def test_parking_after_the_pivot_is_recorded_as_events():
    before, _ = play(PIVOTED, "a ok; p ok; c claim")
    after, _ = play(PIVOTED, "c fail!", before)
    types = [e["type"] for e in history(before, after)]
    assert types == ["step.parked", "run.parked"]


# -- the engine refuses a cancel past the pivot -----------------------------------------------

def charge(ctx):
    return {"charged": True}


def fails(ctx):
    raise NonRetryable("the label printer is on fire")


SHIPPING = Saga("shipping", steps=[
    Step("reserve", charge, compensate=charge),
    Step("charge", charge, pivot=True),
    Step("label", fails, retry=Retry(attempts=1)),
])


@pytest.fixture
def engine(tmp_path: Path, migrated_log: Path) -> Iterator[tuple[Engine, Worker, Store]]:
    shutil.copy(migrated_log, tmp_path / "saga.db")
    store = Store(f"sqlite:///{tmp_path / 'saga.db'}")
    registry, dispatcher = Registry([SHIPPING]), RecordingDispatcher()
    engine = Engine(registry, store, dispatcher)
    yield engine, Worker(engine, registry, dispatcher), store
    store.close()


@pytest.fixture(scope="module")
def migrated_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from saga import migrations

    path = tmp_path_factory.mktemp("log") / "saga.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


def test_the_engine_parks_a_failure_past_the_pivot_and_refuses_to_cancel_it(engine):
    """Given a run whose label step fails for good after the pivot (charge) succeeded,
    Then it is parked, not compensated, and a cancel is refused saying why."""
    engine, worker, store = engine
    run_id, _ = engine.start("shipping", {})
    worker.run_step(run_id, "reserve", Role.FORWARD, "shipping", 1, worker="w")
    run = store.get_run(run_id)
    assert run["status"] == "running" and run["compensations"] == []
    assert [(s["name"], s["status"]) for s in run["steps"]] == [
        ("reserve", "succeeded"), ("charge", "succeeded"), ("label", "parked")]
    assert run["parked"].startswith("step 'label' failed after the pivot 'charge' succeeded")
    with pytest.raises(RunStateConflict, match="cannot be cancelled: its pivot 'charge' "
                                               "succeeded") as refused:
        engine.cancel(run_id, actor="ops")
    assert refused.value.kind == "past-pivot"
    assert store.get_run(run_id)["status"] == "running"


# -- a property: past the pivot, nothing is ever undone -------------------------------------------

PROPERTY_SAGA = Saga("prop", timeout=timedelta(minutes=1), steps=[
    step("a", verify=lambda ctx: None, retry=Retry(attempts=2, first_delay=timedelta(0))),
    pivot("p", verify=lambda ctx: None, retry=Retry(attempts=2, first_delay=timedelta(0))),
    Parallel(step("c", comp=False, verify=lambda ctx: None, retry=NO_WAIT),
             step("d", comp=False, retry=Retry(attempts=2, first_delay=timedelta(seconds=5)))),
    step("e", comp=False),
])
RUNNING_VERBS = ("ok", "fail", "fail!", "timeout", "expire", "done", "not_done", "unknown")


def _moves(run) -> list[tuple[str, tuple | None]]:
    """What a worker, the sweeper or a person could bring next."""
    found: list[tuple[str, tuple | None]] = [("retry", None), ("cancel", None),
                                             ("deadline", None), ("tick", None)]
    for key, s in sorted(run.steps.items()):
        if s.status == "queued":
            found.append(("claim", key))
        elif s.status == "running":
            found += [(verb, key) for verb in RUNNING_VERBS]
        elif s.status == "retry_wait":
            found.append(("due", key))
    return found


def _event(run, verb: str, key, now):
    """The event (and the run, for a claim) that `verb` brings."""
    from saga.events import LeaseExpired, RetryDue, StepChecked, StepFailed, StepSucceeded
    from saga.run import Checked

    if verb in ("retry", "cancel", "deadline"):
        return run, {"retry": RetryRequested(), "cancel": CancelRequested(),
                     "deadline": DeadlinePassed()}[verb]
    name, role = key
    s = run.steps[key]
    if verb == "claim":
        return state.claim(PROPERTY_SAGA, run, name, role, "w", now,
                           now + timedelta(seconds=30)), None
    if verb == "due":
        return run, RetryDue(name, role)
    if verb == "ok":
        return run, StepSucceeded(name, role, s.fence, {"by": s.fence})
    if verb in ("fail", "fail!", "timeout"):
        return run, StepFailed(name, role, s.fence, "boom", verb == "fail",
                               timed_out=verb == "timeout")
    if verb == "expire":
        return run, LeaseExpired(name, role, s.fence)
    return run, StepChecked(name, role, s.fence, Checked(verb), {"checked": True})


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["", "a ok", "a ok; p ok"]), st.lists(st.integers(0, 10_000),
                                                          max_size=60))
def test_past_the_pivot_nothing_is_undone_whatever_happens(start: str, picks: list[int]) -> None:
    """Whatever workers, sweeps and people do, in any order (from the start, at the pivot,
    or past it; `picks` choose among what may happen next): once the pivot succeeded no compensation is ever queued and the run only
    runs on or succeeds; a cancel at the pivot changes nothing; a running run never holds a
    failed step (it parks) and is flagged exactly while a step is parked; no step in doubt
    counts as succeeded; a duplicate event changes nothing."""
    run, _ = play(PROPERTY_SAGA, start)
    now = T0
    for pick in picks:
        moves = _moves(run)
        verb, key = moves[pick % len(moves)]
        now += timedelta(seconds=31 if verb in ("tick", "expire") else 1)
        if verb == "tick":
            continue
        before = run
        reached = state.pivot_reached(PROPERTY_SAGA, before) or ""
        run, event = _event(run, verb, key, now)
        if event is None:
            continue
        run, _ = state.advance(PROPERTY_SAGA, run, event, now)
        assert state.advance(PROPERTY_SAGA, run, event, now) == (run, [])  # a duplicate
        if "succeeded" in reached:
            hypothesis.event(f"past the pivot: {verb}")
            new = run.steps.keys() - before.steps.keys()
            assert all(role is Role.FORWARD for _, role in new), run
            assert run.status in (RunStatus.RUNNING, RunStatus.SUCCEEDED), run
        if reached and isinstance(event, CancelRequested):
            assert run == before
        if run.status is RunStatus.RUNNING:
            assert not any(s.status == "failed" for s in run.steps.values()), run
            assert bool(run.parked) == any(s.status == "parked" for s in run.steps.values()), run
        assert not any(s.in_doubt and s.status == "succeeded" for s in run.steps.values()), run

