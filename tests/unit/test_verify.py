"""Steps in doubt and their `verify` check; a failed step's compensation by `compensate_failed`.

An attempt whose outcome is unknown (its lease ran out, it timed out) leaves its step in
doubt. The next attempt asks the step's check first: done records the output without
calling the action again, not done calls it, unknown parks the run for a person. Before
compensating a step that did not succeed the check is asked too: not done skips the undo.
The first half is the pure state machine; the second drives the engine and a worker on
an embedded SQLite log, with a ledger standing in for a payment service.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from state_script import LEASE, NO_WAIT, ONCE, T0, act, claim, cmds, dispatch, play, step, view

from saga import NonRetryable, Retry, Saga, Step, Verified, state
from saga.clock import Clock
from saga.definitions import Parallel, Wait
from saga.engine import Engine
from saga.errors import DefinitionError
from saga.events import (
    Alert,
    CancelRequested,
    LeaseExpired,
    QueueTimedOut,
    RetryRequested,
    StepChecked,
    history,
)
from saga.registry import Registry
from saga.run import Checked, Role, Run, RunStatus
from saga.store import Store
from saga.testing.dispatch import RecordingDispatcher
from saga.worker.runner import Worker

FWD, COMP = Role.FORWARD, Role.COMPENSATE


def looked_up(ctx):
    return Verified.unknown()


def checked(name: str, **kwargs) -> Step:
    return step(name, verify=looked_up, **kwargs)


def answer(saga: Saga, run: Run, token: str, said: Checked, output=None,
           now: datetime = T0) -> tuple[Run, list]:
    """The state's reaction to the running attempt's check answering `said`."""
    name, role = (token[1:], COMP) if token.startswith("~") else (token, FWD)
    current = run.steps[(name, role)]
    return state.advance(saga, run, StepChecked(name, role, current.fence, said, output), now)


def alerts(commands: list) -> list[tuple[str, str | None]]:
    return [(c.reason, c.step) for c in commands if isinstance(c, Alert)]


# a → b (checked, three attempts) → c
SAGA = Saga("s", steps=[step("a"), checked("b", retry=NO_WAIT), step("c")])


# -- in doubt ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("script", "in_doubt"), [
    ("a ok; b expire", True),
    ("a ok; b timeout", True),
    ("a ok; b fail", False),
    ("a ok; b ok", False),
    ("a ok; b expire; b ok", False),
    ("a ok; b expire; b fail", True),  # a raised failure tells nothing of the attempt before
], ids=["lease-expired", "timed-out", "raised", "succeeded", "then-succeeded",
        "then-raised"])
def test_an_attempt_ending_without_a_known_outcome_leaves_the_step_in_doubt(script, in_doubt):
    run, _ = play(SAGA, script)
    assert run.step("b").in_doubt is in_doubt


def test_a_step_that_timed_out_in_the_queue_never_ran_so_is_not_in_doubt():
    saga = Saga("s", steps=[checked("a", retry=NO_WAIT, schedule_to_start=timedelta(seconds=5))])
    run, _ = play(saga, "")
    run, _ = state.advance(saga, run, QueueTimedOut("a", FWD), T0 + timedelta(seconds=5))
    assert (view(run)["a"], run.step("a").in_doubt) == ("queued", False)


def test_being_in_doubt_is_recorded_on_the_attempts_event():
    before, _ = play(SAGA, "a ok; b claim")
    after, _ = play(SAGA, "b expire", before)
    [entry] = history(before, after)
    assert (entry["type"], entry["data"]["in_doubt"]) == ("step.queued", True)


# -- who checks first --------------------------------------------------------------------------

@pytest.mark.parametrize(("script", "token", "expected"), [
    ("a ok; b expire; b claim", "b", True),
    ("a ok; b timeout; b claim", "b", True),
    ("a ok; b claim", "b", False),
    ("a ok; b fail; b claim", "b", False),
    ("a ok; b fail!; ~b claim", "~b", True),  # compensating a step that did not succeed
    ("a ok; b ok; c fail!; ~c ok; ~b claim", "~b", False),  # it succeeded: no question
    ("a ok; b fail!; ~b ok; ~a claim", "~a", False),  # a has no check
], ids=["lease-expired", "timed-out", "first", "after-a-raise", "undo-failed",
        "undo-succeeded", "no-check"])
def test_must_check_when_an_earlier_attempt_is_in_doubt_or_before_undoing_a_failed_step(
        script, token, expected):
    run, _ = play(SAGA, script)
    name, role = (token[1:], COMP) if token.startswith("~") else (token, FWD)
    assert state.must_check(SAGA, run, name, role, run.steps[(name, role)].fence) is expected


def test_a_step_without_a_check_never_checks_even_in_doubt():
    saga = Saga("s", steps=[step("a", retry=NO_WAIT)])
    run, _ = play(saga, "a expire; a claim")
    assert run.step("a").in_doubt
    assert not state.must_check(saga, run, "a", FWD, run.step("a").fence)


def test_an_attempt_with_a_stale_fence_checks_so_that_its_refused_answer_stops_it():
    run, _ = play(SAGA, "a ok; b claim")
    assert state.must_check(SAGA, run, "b", FWD, run.step("b").fence - 1)


@pytest.mark.parametrize(("role", "said", "acts"), [
    (FWD, Checked.DONE, False), (FWD, Checked.NOT_DONE, True), (FWD, Checked.UNKNOWN, False),
    (COMP, Checked.DONE, True), (COMP, Checked.NOT_DONE, False), (COMP, Checked.UNKNOWN, True),
])
def test_which_answers_let_the_attempt_go_on_to_act(role, said, acts):
    assert state.acts_after(StepChecked("b", role, 1, said)) is acts


# -- the answers, after a timed-out and after a lease-expired attempt --------------------------

DOUBTS = pytest.mark.parametrize("doubt", ["timeout", "expire"], ids=["timed-out",
                                                                      "lease-expired"])


@DOUBTS
def test_done_records_the_output_without_calling_the_action_and_goes_on(doubt):
    run, _ = play(SAGA, f"a ok; b {doubt}; b claim")
    run, commands = answer(SAGA, run, "b", Checked.DONE, {"charge": "ch_1"})
    b = run.step("b")
    assert (b.status, b.output, b.in_doubt, b.checked, b.attempt) == (
        "succeeded", {"charge": "ch_1"}, False, Checked.DONE, 2)
    assert dispatch(commands) == cmds("c")


@DOUBTS
def test_not_done_lets_the_same_attempt_call_the_action(doubt):
    run, _ = play(SAGA, f"a ok; b {doubt}; b claim")
    run, commands = answer(SAGA, run, "b", Checked.NOT_DONE)
    b = run.step("b")
    assert (b.status, b.in_doubt, b.checked, commands) == ("running", False, Checked.NOT_DONE, [])
    run, commands = play(SAGA, "b ok", run)
    assert view(run)["b"] == "succeeded" and dispatch(commands) == cmds("c")


@DOUBTS
def test_unknown_parks_the_run_for_a_person(doubt):
    run, _ = play(SAGA, f"a ok; b {doubt}; b claim")
    run, commands = answer(SAGA, run, "b", Checked.UNKNOWN)
    b = run.step("b")
    assert (b.status, b.in_doubt, run.status) == ("parked", True, RunStatus.RUNNING)
    assert run.parked == ("step 'b' parked: verify cannot tell whether an earlier attempt "
                          "took effect, so it is neither done again nor undone")
    assert alerts(commands) == [("parked", "b")] and dispatch(commands) == []


def test_a_person_retrying_a_parked_step_has_it_checked_again_first():
    run, _ = play(SAGA, "a ok; b expire; b claim")
    run, _ = answer(SAGA, run, "b", Checked.UNKNOWN)
    run, commands = state.advance(SAGA, run, RetryRequested(), T0)
    assert dispatch(commands) == cmds("b")
    run = state.claim(SAGA, run, "b", FWD, "w", T0, T0 + LEASE)
    assert run.step("b").checked is None and run.step("b").in_doubt
    assert state.must_check(SAGA, run, "b", FWD, run.step("b").fence)


def test_unknown_while_the_run_compensates_settles_the_step_and_its_undo_asks_again():
    saga = Saga("s", steps=[Parallel(checked("b", retry=NO_WAIT), step("q", comp=False))])
    run, _ = play(saga, "b expire; b claim; q fail!")
    run, commands = answer(saga, run, "b", Checked.UNKNOWN)
    assert view(run) == {"b": "failed", "q": "failed", "~b": "queued"}
    run = claim(run, "~b")
    assert state.must_check(saga, run, "b", COMP, run.steps[("b", COMP)].fence)


def test_a_check_answer_for_a_stale_fence_changes_nothing():
    run, _ = play(SAGA, "a ok; b expire; b claim")
    stale = StepChecked("b", FWD, run.step("b").fence - 1, Checked.DONE, {})
    assert state.advance(SAGA, run, stale, T0) == (run, [])


def test_each_answer_is_an_event_before_what_it_led_to():
    before, _ = play(SAGA, "a ok; b expire; b claim")
    after, _ = answer(SAGA, before, "b", Checked.DONE, {"charge": "ch_1"})
    entries = history(before, after)
    assert [(e["type"], e["data"]) for e in entries][:2] == [
        ("step.checked", {"answer": "done"}), ("step.succeeded", {})]


# -- compensation asks too -------------------------------------------------------------------------

def test_a_compensation_is_skipped_when_the_check_says_the_step_had_no_effect():
    """Given b timed out on its only attempt (in doubt) and the run compensates,
    When b's compensation asks the check and it says not done,
    Then the compensation succeeds without undoing anything, says so, and a is undone next."""
    saga = Saga("s", steps=[step("a"), checked("b", retry=ONCE)])
    before, _ = play(saga, "a ok; b timeout; ~b claim")
    after, commands = answer(saga, before, "~b", Checked.NOT_DONE)
    assert view(after) == {"a": "succeeded", "b": "failed", "~b": "succeeded", "~a": "queued"}
    assert after.steps[("b", COMP)].output == {"skipped": "verify says the step had no effect"}
    assert dispatch(commands) == cmds("~a")
    skipped = next(e for e in history(before, after) if e["type"] == "compensation.skipped")
    assert skipped["data"] == {"answer": "not_done",
                               "reason": "verify says the step had no effect: nothing to undo"}


@pytest.mark.parametrize("said", [Checked.DONE, Checked.UNKNOWN])
def test_a_compensation_undoes_when_the_check_says_done_or_cannot_tell(said):
    saga = Saga("s", steps=[step("a"), checked("b", retry=ONCE)])
    run, _ = play(saga, "a ok; b timeout; ~b claim")
    run, commands = answer(saga, run, "~b", said)
    assert (view(run)["~b"], run.steps[("b", COMP)].checked, commands) == ("running", said, [])
    run, _ = play(saga, "~b ok; ~a ok", run)
    assert run.status is RunStatus.COMPENSATED


# -- compensate_failed ----------------------------------------------------------------------------

@pytest.mark.parametrize(("compensate_failed", "script", "undone"), [
    (True, "a ok; b fail!", True),  # the default: a call that raised may have had its effect
    (False, "a ok; b fail!", False),
    (False, "a ok; b timeout; b timeout", True),  # in doubt: no one knows what it did
    (False, "a ok; b fail; b fail!", False),
    (False, "a ok; b expire; b fail!", True),  # still in doubt from its first attempt
    (False, "a ok; b ok; c fail!", True),  # it succeeded
], ids=["default", "raised", "timed-out", "raised-twice", "in-doubt-then-raised", "succeeded"])
def test_a_failed_step_is_compensated_unless_compensate_failed_is_false_and_it_is_not_in_doubt(
        compensate_failed, script, undone):
    saga = Saga("s", steps=[step("a"), step("b", retry=Retry(attempts=2, first_delay=timedelta(0)),
                                            compensate_failed=compensate_failed),
                            step("c", comp=False)])
    run, _ = play(saga, script)
    assert ("~b" in view(run)) is undone
    assert run.status is RunStatus.COMPENSATING


def test_compensate_failed_is_true_by_default():
    assert Step("a", act).compensate_failed is True


# -- checked when defined --------------------------------------------------------------------------

def test_verify_on_a_wait_is_refused():
    with pytest.raises(DefinitionError, match="step 'w': a wait has no action to verify"):
        Saga("s", steps=[replace(Wait("w", duration=timedelta(1)), verify=looked_up)])


def test_verify_naming_an_unknown_function_is_refused():
    with pytest.raises(DefinitionError, match="step 'b': verify names unknown task 'nope:x'"):
        Saga("s", steps=[step("b", verify="nope:x")])


def test_verify_as_a_remote_task_is_refused():
    from saga import RemoteTask

    with pytest.raises(DefinitionError, match="not a RemoteTask"):
        Saga("s", steps=[step("b", verify=RemoteTask("payments.find"))])


# -- the engine and a worker, with a payment ledger ------------------------------------------------

@dataclass
class Ledger:
    """A stand-in payment service: charges by idempotency key, and what the code was asked."""

    charges: dict[str, int]
    calls: list[str]
    says: Checked | None = None  # what the check answers; None: look at the charges
    fail_first: str = ""  # "timeout" (after charging), "kill-before" (before charging)
    check_raises: int = 0  # the check raises this many times before it answers
    asked_as: list[tuple[str, int, int]] = field(default_factory=list)  # (role, attempt, fence)


LEDGER = Ledger({}, [])


def pay(ctx):
    LEDGER.calls.append(f"pay:{ctx.attempt}")
    if LEDGER.fail_first == "kill-before" and ctx.attempt == 1:
        raise _Killed()
    LEDGER.charges[ctx.idempotency_key] = LEDGER.charges.get(ctx.idempotency_key, 0) + 1
    if LEDGER.fail_first == "timeout-always" or (LEDGER.fail_first == "timeout"
                                                 and ctx.attempt == 1):
        raise TimeoutError("the payment service did not answer in time")
    return {"charge": ctx.idempotency_key}


def refund(ctx):
    LEDGER.calls.append("refund")
    return {"refunded": ctx.forward_key}


def paid(ctx):
    LEDGER.calls.append(f"check:{ctx.attempt}")
    LEDGER.asked_as.append((ctx.role, ctx.attempt, ctx.fence))
    assert ctx.idempotency_key == ctx.forward_key  # compensating too: it looks up the charge
    if LEDGER.check_raises:
        LEDGER.check_raises -= 1
        raise ConnectionError("the payment service is away")
    if LEDGER.says is not None:
        return Verified(LEDGER.says)
    if ctx.idempotency_key in LEDGER.charges:
        return Verified.done({"charge": ctx.idempotency_key, "found": True})
    return Verified.not_done()


def declined(ctx):
    raise NonRetryable("no stock")


class _Killed(BaseException):
    """The worker dies mid-attempt: nothing is reported, the lease runs out."""


ORDER = Saga("order", steps=[
    Step("pay", pay, compensate=refund, verify=paid,
         retry=Retry(attempts=3, first_delay=timedelta(0))),
    Step("ship", lambda ctx: {"shipped": True}),
])
LAST_TRY = Saga("last_try", steps=[
    Step("pay", pay, compensate=refund, verify=paid, retry=Retry(attempts=1)),
    Step("ship", declined),
])
TWO_TRIES = Saga("two_tries", steps=[
    Step("pay", pay, compensate=refund, verify=paid,
         retry=Retry(attempts=2, first_delay=timedelta(0))),
])


class Later(Clock):
    """The database's time, moved forward by the test."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def read(self, db_now: datetime | None) -> datetime:
        return super().read(db_now) + self.offset


class Parts:
    def __init__(self, path: Path) -> None:
        self.clock = Later()
        self.store = Store(f"sqlite:///{path}", clock=self.clock)
        self.dispatcher = RecordingDispatcher()
        registry = Registry([ORDER, LAST_TRY, TWO_TRIES])
        self.engine = Engine(registry, self.store, self.dispatcher, lease_s=30)
        self.worker = Worker(self.engine, registry, self.dispatcher)

    def deliver(self) -> None:
        while sent := self.dispatcher.take():
            for hint in sent:
                try:
                    self.worker.run_step(hint.run_id, hint.command.step, hint.command.role,
                                         hint.saga, hint.version, worker="w")
                except _Killed:
                    pass

    def expire(self, run_id: str, step: str) -> None:
        """Past the dead attempt's lease, the sweeper fails it (a LeaseExpired)."""
        fence = next(s for s in self.store.load_run(run_id).steps.values()
                     if s.name == step).fence
        self.clock.offset += LEASE + timedelta(seconds=31)
        assert self.engine.advance(run_id, LeaseExpired(step, FWD, fence)).changed
        self.deliver()

    def events(self, run_id: str) -> list[tuple[str, str | None, dict]]:
        return [(e["type"], e["step"], e["data"]) for e in self.store.events(run_id)]


@pytest.fixture(scope="module")
def migrated_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from saga import migrations

    path = tmp_path_factory.mktemp("log") / "saga.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def parts(migrated_log: Path, tmp_path: Path) -> Iterator[Parts]:
    shutil.copy(migrated_log, tmp_path / "saga.db")
    LEDGER.charges.clear()
    LEDGER.calls.clear()
    LEDGER.asked_as.clear()
    LEDGER.says, LEDGER.fail_first = None, ""
    built = Parts(tmp_path / "saga.db")
    yield built
    built.store.close()


def test_a_timed_out_charge_that_went_through_is_recorded_from_the_check_not_charged_again(parts):
    """Given the charge went through but its attempt timed out (in doubt),
    When the next attempt runs, Then the check finds the charge and records it as the
    step's output: the action is not called again, and the run goes on."""
    LEDGER.fail_first = "timeout"
    run_id, _ = parts.engine.start("order", {})
    parts.deliver()
    run = parts.store.get_run(run_id)
    assert run["status"] == "succeeded"
    assert LEDGER.calls == ["pay:1", "check:2"]
    assert LEDGER.charges == {f"{run_id}:pay:forward": 1}
    assert run["steps"][0]["output"] == {"charge": f"{run_id}:pay:forward", "found": True}
    assert ("step.checked", "pay", {"answer": "done"}) in parts.events(run_id)


def test_a_dead_workers_charge_that_never_happened_is_made_once_after_the_check(parts):
    """Given the worker died before charging and its lease ran out (in doubt),
    When the next attempt runs, Then the check says not done, that answer is committed,
    and the same attempt charges once."""
    LEDGER.fail_first = "kill-before"
    run_id, _ = parts.engine.start("order", {})
    parts.deliver()
    assert parts.store.get_run(run_id)["steps"][0]["status"] == "running"
    parts.expire(run_id, "pay")
    assert parts.store.get_run(run_id)["status"] == "succeeded"
    assert LEDGER.calls == ["pay:1", "check:2", "pay:2"]
    assert LEDGER.charges == {f"{run_id}:pay:forward": 1}
    types = [(t, s) for t, s, _ in parts.events(run_id) if s == "pay"]
    assert types[-3:] == [("step.running", "pay"), ("step.checked", "pay"),
                          ("step.succeeded", "pay")]


def test_a_check_that_cannot_tell_parks_the_run_until_a_person_retries_it(parts):
    LEDGER.fail_first, LEDGER.says = "kill-before", Checked.UNKNOWN
    run_id, _ = parts.engine.start("order", {})
    parts.deliver()
    parts.expire(run_id, "pay")
    run = parts.store.get_run(run_id)
    assert (run["status"], run["steps"][0]["status"]) == ("running", "parked")
    assert "verify cannot tell" in run["parked"]
    assert LEDGER.calls == ["pay:1", "check:2"]
    LEDGER.says, LEDGER.fail_first = None, ""  # the payment service answers again
    parts.engine.retry(run_id, actor="ops")
    parts.deliver()
    assert parts.store.get_run(run_id)["status"] == "succeeded"
    assert LEDGER.calls[2:] == ["check:1", "pay:1"]


def test_a_check_that_raises_fails_the_attempt_and_the_step_stays_in_doubt(parts):
    LEDGER.fail_first, LEDGER.check_raises = "timeout", 1
    run_id, _ = parts.engine.start("order", {})
    parts.deliver()
    assert parts.store.get_run(run_id)["status"] == "succeeded"
    assert LEDGER.calls == ["pay:1", "check:2", "check:3"]
    errors = [d.get("error") for _, s, d in parts.events(run_id) if s == "pay"]
    assert "verify failed: ConnectionError: the payment service is away" in errors


@pytest.mark.parametrize("bad", ["maybe", None])
def test_a_check_must_answer_with_a_verified(bad):
    if bad is None:
        assert Verified("done") == Verified.done()
        return
    with pytest.raises(ValueError, match="'maybe' is not a valid Checked"):
        Verified(bad)


def test_the_undo_of_a_charge_in_doubt_is_skipped_when_the_check_finds_none(parts):
    """Given pay's only attempt died before charging (in doubt) and the run compensates,
    Then its compensation asks the check, which finds no charge: the refund is skipped,
    with an event saying so, and the run is compensated."""
    LEDGER.fail_first = "kill-before"
    run_id, _ = parts.engine.start("last_try", {})
    parts.deliver()
    parts.expire(run_id, "pay")
    run = parts.store.get_run(run_id)
    assert run["status"] == "compensated"
    assert LEDGER.calls == ["pay:1", "check:1"]
    assert [(c["name"], c["status"]) for c in run["compensations"]] == [("pay", "succeeded")]
    assert ("compensation.skipped", "pay",
            {"answer": "not_done", "reason": "verify says the step had no effect: nothing to "
                                             "undo"}) in parts.events(run_id)


def test_the_undo_of_a_charge_that_went_through_asks_the_check_then_refunds(parts):
    LEDGER.fail_first = "timeout"
    run_id, _ = parts.engine.start("last_try", {})
    parts.deliver()
    assert parts.store.get_run(run_id)["status"] == "compensated"
    assert LEDGER.calls == ["pay:1", "check:1", "refund"]


def test_the_undos_check_asks_as_the_forward_steps_last_attempt(parts):
    """The undo's check asks as the forward call did: its key, attempt and fence, so a
    fenced service (saga.idempotent) does not refuse it as a superseded attempt."""
    LEDGER.fail_first, LEDGER.says = "timeout-always", Checked.NOT_DONE
    run_id, _ = parts.engine.start("two_tries", {})
    parts.deliver()
    run = parts.store.load_run(run_id)
    assert run.status is RunStatus.COMPENSATED
    forward = run.steps[("pay", Role.FORWARD)]
    assert (forward.attempt, forward.fence) == (2, 2)
    assert run.steps[("pay", Role.COMPENSATE)].fence == 1
    assert LEDGER.asked_as == [("forward", 2, 2), ("forward", 2, 2)]  # attempt 2, then the undo


def test_a_step_parked_before_a_cancel_is_not_resumed_while_the_run_compensates():
    """Given b parked (its check could not tell) and then the run was cancelled, a retry
    must not queue b again: it would never be claimed, and its compensation would wait
    for it forever. Its compensation asks the check instead."""
    run, _ = play(SAGA, "a ok; b expire; b claim")
    run, _ = answer(SAGA, run, "b", Checked.UNKNOWN)
    run, _ = state.advance(SAGA, run, CancelRequested(), T0)
    assert view(run) == {"a": "succeeded", "b": "parked", "~b": "queued"}
    assert state.advance(SAGA, run, RetryRequested(), T0) == (run, [])
