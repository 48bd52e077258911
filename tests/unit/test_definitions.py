"""Unit tests for the saga DSL: validation, graph compilation, order, Retry, shape_hash."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.definitions import (
    Parallel,
    RemoteTask,
    Retry,
    Saga,
    Step,
    Timer,
    Wait,
    WaitForSignal,
    resolve_action,
)
from saga.errors import DefinitionError, SagaError


def act(ctx):
    return None


def undo(ctx):
    return None


def other(ctx):
    return None


def edges(saga: Saga) -> dict[str, set[str]]:
    return {name: set(deps) for name, deps in saga.graph.items()}


# -- validation: a bad definition fails when built, with a message naming the step ------

INVALID_STEPS = [
    pytest.param([Step("charge", act), Step("charge", act)], "charge", "defined twice",
                 id="duplicate-in-sequence"),
    pytest.param([Step("ship", act), Parallel(Step("email", act), Step("ship", act))], "ship",
                 "defined twice", id="duplicate-across-parallel"),
    pytest.param([Parallel([Step("a", act), Step("b", act)], [Step("c", act), Step("b", act)])],
                 "b", "defined twice", id="duplicate-in-nested-lists"),
    pytest.param([Step("refund", None, compensate=undo)], "refund", "compensation on nothing",
                 id="compensation-on-nothing"),
    pytest.param([Step("noop", None)], "noop", "no action", id="no-action"),
    pytest.param([Step("charge", act, after=("charge",))], "charge", "cycle",
                 id="self-cycle-via-after"),
    pytest.param([Step("reserve", act, after=("charge",)), Step("charge", act)], "reserve",
                 "cycle", id="two-step-cycle-via-after"),
    pytest.param([Parallel(Step("a", act, after=("c",)), Step("b", act, after=("a",)),
                           Step("c", act, after=("b",)))], "a", "cycle",
                 id="three-step-cycle-via-after"),
    pytest.param([Step("reserve", act), Step("charge", act, after=("reserv",))], "charge",
                 "'reserv'", id="unknown-after-name"),
    pytest.param([Step("ship", "json:no_such_function")], "ship", "unknown task",
                 id="unknown-function-in-known-module"),
    pytest.param([Step("ship", "no_such_module_for_saga_tests:create")], "ship", "unknown task",
                 id="unknown-module"),
    pytest.param([Step("ship", "json")], "ship", "unknown task", id="path-without-function"),
    pytest.param([Step("ship", "os:sep")], "ship", "unknown task", id="path-to-non-callable"),
    pytest.param([Step("ship", act, compensate="json:no_such_function")], "ship",
                 "compensation", id="unknown-compensation-path"),
    pytest.param([Step("ship", 42)], "ship", "must be a callable", id="action-of-wrong-type"),
    pytest.param([Step("1st_step", act)], "1st_step", "identifier", id="name-starts-with-digit"),
    pytest.param([Step("charge card", act)], "charge card", "identifier", id="name-with-space"),
    pytest.param([Step("charge-card", act)], "charge-card", "identifier", id="name-with-dash"),
    pytest.param([Step("", act)], "", "identifier", id="empty-name"),
    pytest.param([Step("wait", act, timeout=timedelta(0))], "wait", "timeout", id="zero-timeout"),
    pytest.param([Step("wait", act, timeout=timedelta(seconds=-1))], "wait", "timeout",
                 id="negative-timeout"),
    pytest.param([Step("beat", act, heartbeat_timeout=timedelta(0))], "beat",
                 "heartbeat_timeout", id="zero-heartbeat-timeout"),
    pytest.param([Step("pick", act, schedule_to_start=timedelta(seconds=-5))], "pick",
                 "schedule_to_start", id="negative-schedule-to-start"),
    pytest.param([Step("charge", act, on_timeout="ignore")], "charge", "on_timeout",
                 id="unknown-on-timeout"),
    pytest.param([Wait("cool_off")], "cool_off", "duration or until", id="wait-without-time"),
    pytest.param([Wait("cool_off", duration=timedelta(1), until=lambda i, o: None)], "cool_off",
                 "duration or until", id="wait-with-both"),
    pytest.param([Wait("cool_off", duration=timedelta(seconds=-1))], "cool_off", "negative",
                 id="wait-negative-duration"),
    pytest.param([WaitForSignal("label", signal="shipping label")], "label", "signal name",
                 id="signal-name-with-space"),
    pytest.param([WaitForSignal("label", on_timeout="park")], "label", "on_timeout",
                 id="signal-unknown-on-timeout"),
    pytest.param([WaitForSignal("label", timeout=timedelta(0))], "label", "timeout",
                 id="signal-zero-timeout"),
    pytest.param([Step("hold", act, wait=Timer(duration=timedelta(1)))], "hold",
                 "no action", id="wait-with-an-action"),
    pytest.param([Step("hold", None, compensate=undo, wait=Timer(duration=timedelta(1)))],
                 "hold", "nothing to compensate", id="wait-with-a-compensation"),
    pytest.param([Step("hold", None, wait="soon")], "hold", "Timer or a Signal",
                 id="wait-of-wrong-type"),
    pytest.param([Wait("1st", duration=timedelta(1))], "1st", "identifier",
                 id="wait-with-bad-name"),
]


@pytest.mark.parametrize(("steps", "step_name", "why"), INVALID_STEPS)
def test_invalid_definition_raises_definition_error_naming_the_step(steps, step_name, why):
    """Given a definition with one mistake, when the Saga is built, then DefinitionError
    names the faulty step and says what is wrong."""
    with pytest.raises(DefinitionError) as caught:
        Saga("checkout", steps=steps)
    message = str(caught.value)
    assert repr(step_name) in message
    assert why in message


@pytest.mark.parametrize("steps", [
    [Step("reserve", act), Step("charge", "json:no_such_function")],
    [Step("reserve", act), Step("charge", act, after=("reserv",))],
    [Step("reserve", act), Parallel(Step("charge", act), Step("charge", act))],
], ids=["bad-action", "unknown-after", "duplicate"])
def test_a_step_error_names_the_saga_and_its_version_first(steps):
    """A module may define many sagas: the message says which one, then which step."""
    with pytest.raises(DefinitionError) as caught:
        Saga("orders", version=2, steps=steps)
    assert str(caught.value).startswith("saga 'orders' v2, step 'charge'")


def test_cycle_message_shows_the_whole_loop():
    with pytest.raises(DefinitionError, match=r"'a' -> 'b' -> 'a'|a -> b -> a"):
        Saga("loop", steps=[Step("a", act, after=("b",)), Step("b", act)])


def test_unknown_after_message_lists_every_unknown_name():
    with pytest.raises(DefinitionError) as caught:
        Saga("s", steps=[Step("a", act, after=("x", "y"))])
    assert "['x', 'y']" in str(caught.value)


@pytest.mark.parametrize(("kwargs", "why"), [
    pytest.param({"name": "", "steps": [Step("a", act)]}, "name", id="empty-saga-name"),
    pytest.param({"name": "order fulfillment", "steps": [Step("a", act)]}, "name",
                 id="saga-name-with-space"),
    pytest.param({"name": "order/fulfillment", "steps": [Step("a", act)]}, "name",
                 id="saga-name-with-slash"),
    pytest.param({"name": "s", "steps": [Step("a", act)], "version": 0}, "version",
                 id="version-zero"),
    pytest.param({"name": "s", "steps": []}, "no steps", id="no-steps"),
    pytest.param({"name": "s", "steps": [[], []]}, "no steps", id="only-empty-lists"),
    pytest.param({"name": "s", "steps": ["a"]}, "not a step", id="string-instead-of-step"),
])
def test_invalid_saga_raises_definition_error(kwargs, why):
    with pytest.raises(DefinitionError, match=why):
        Saga(**kwargs)


@pytest.mark.parametrize("members", [(), (Step("a", act),)], ids=["empty", "one-member"])
def test_parallel_needs_at_least_two_members(members):
    with pytest.raises(DefinitionError, match="at least two"):
        Parallel(*members)


def test_definition_error_is_a_saga_error():
    assert issubclass(DefinitionError, SagaError)


@pytest.mark.parametrize("name", ["order_fulfillment", "order-fulfillment", "v2", "A"])
def test_valid_saga_names_are_accepted(name):
    assert Saga(name, steps=[Step("a", act)]).name == name


@pytest.mark.parametrize("action", [act, "json:dumps", RemoteTask("shipping.create")],
                         ids=["callable", "import-path", "remote-task"])
def test_every_kind_of_action_is_accepted(action):
    saga = Saga("s", steps=[Step("a", action, compensate=action)])
    assert saga.by_name["a"].action == action


def test_resolve_action_imports_module_function_paths():
    import json

    assert resolve_action("json:dumps") is json.dumps
    assert resolve_action(act) is act
    task = RemoteTask("shipping.create", queue="shipping")
    assert resolve_action(task) is task


# -- graph compilation --------------------------------------------------------------------

def s(name: str, **kwargs) -> Step:
    return Step(name, act, **kwargs)


GRAPHS = [
    pytest.param([s("a")], {"a": set()}, id="single-step"),
    pytest.param([s("a"), s("b"), s("c")], {"a": set(), "b": {"a"}, "c": {"b"}},
                 id="sequence"),
    pytest.param((s("a"), s("b")), {"a": set(), "b": {"a"}}, id="tuple-is-a-sequence"),
    pytest.param([s("a"), Parallel(s("b"), s("c")), s("d")],
                 {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}}, id="fan-out-fan-in"),
    pytest.param([Parallel(s("a"), s("b")), s("c")],
                 {"a": set(), "b": set(), "c": {"a", "b"}}, id="parallel-first"),
    pytest.param([s("a"), Parallel(s("b"), s("c"))],
                 {"a": set(), "b": {"a"}, "c": {"a"}}, id="parallel-last"),
    pytest.param([s("a"), Parallel([s("b1"), s("b2")], s("c")), s("d")],
                 {"a": set(), "b1": {"a"}, "b2": {"b1"}, "c": {"a"}, "d": {"b2", "c"}},
                 id="nested-sequence-in-parallel"),
    pytest.param([Parallel([s("a1"), s("a2")], [s("b1"), s("b2"), s("b3")]), s("z")],
                 {"a1": set(), "a2": {"a1"}, "b1": set(), "b2": {"b1"}, "b3": {"b2"},
                  "z": {"a2", "b3"}}, id="two-nested-sequences"),
    pytest.param([s("a"), Parallel(s("b"), Parallel(s("c"), s("d"))), s("e")],
                 {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"a"}, "e": {"b", "c", "d"}},
                 id="parallel-in-parallel"),
    pytest.param([s("a"), Parallel([s("b"), Parallel(s("c"), s("d"))], s("e")), s("f")],
                 {"a": set(), "b": {"a"}, "c": {"b"}, "d": {"b"}, "e": {"a"},
                  "f": {"c", "d", "e"}}, id="parallel-in-sequence-in-parallel"),
    pytest.param([s("a"), Parallel(s("b"), s("c", after=("b",))), s("d")],
                 {"a": set(), "b": {"a"}, "c": {"a", "b"}, "d": {"b", "c"}},
                 id="after-orders-parallel-members"),
    pytest.param([Parallel(s("a"), s("b")), s("c", after=("a",))],
                 {"a": set(), "b": set(), "c": {"a", "b"}}, id="after-duplicating-an-edge"),
    pytest.param([Parallel(s("late", after=("early",)), s("early"))],
                 {"late": {"early"}, "early": set()}, id="after-on-a-later-defined-step"),
    pytest.param([s("a"), [s("b"), [s("c")]], s("d")],
                 {"a": set(), "b": {"a"}, "c": {"b"}, "d": {"c"}}, id="nested-plain-lists"),
]


@pytest.mark.parametrize(("steps", "expected"), GRAPHS)
def test_steps_compile_to_a_dependency_graph(steps, expected):
    saga = Saga("g", steps=steps)
    assert edges(saga) == expected
    assert set(saga.by_name) == set(expected)


@pytest.mark.parametrize(("steps", "expected"), GRAPHS)
def test_order_puts_every_step_after_what_it_waits_for(steps, expected):
    saga = Saga("g", steps=steps)
    assert sorted(saga.order) == sorted(expected)
    position = {name: i for i, name in enumerate(saga.order)}
    for name, deps in expected.items():
        assert all(position[dep] < position[name] for dep in deps), (name, saga.order)


@pytest.mark.parametrize(("steps", "expected"), GRAPHS)
def test_successors_are_the_inverse_of_the_graph(steps, expected):
    saga = Saga("g", steps=steps)
    for name in expected:
        assert set(saga.successors(name)) == {m for m, deps in expected.items() if name in deps}
        # Successors come in execution order, so the plan can walk them deterministically.
        assert list(saga.successors(name)) == [m for m in saga.order if m in saga.successors(name)]


def test_order_is_the_same_every_time_the_definition_is_built():
    def build() -> Saga:
        return Saga("g", steps=[s("a"), Parallel(s("c"), s("b"), [s("e"), s("d")]), s("f")])

    assert build().order == build().order == ("a", "c", "b", "e", "d", "f")


def test_sequence_order_is_definition_order():
    assert Saga("g", steps=[s("z"), s("y"), s("x")]).order == ("z", "y", "x")


def test_describe_lists_steps_in_order_with_their_actions():
    saga = Saga("shop", version=3, steps=[
        Step("reserve", act, compensate=undo, retry=Retry(attempts=5)),
        Parallel(Step("ship", RemoteTask("shipping.create"), compensate="json:dumps",
                      timeout=timedelta(seconds=30)),
                 Step("email", other)),
    ])
    described = saga.describe()
    assert described["name"] == "shop"
    assert described["version"] == 3
    assert described["steps"] == [
        {"name": "reserve", "after": [], "kind": "action", "action": f"{act.__module__}:act",
         "compensate": f"{undo.__module__}:undo", "retry_attempts": 5, "timeout_s": None,
         "pivot": False, "verify": None, "compensate_failed": True},
        {"name": "ship", "after": ["reserve"], "kind": "action", "action": "task:shipping.create",
         "compensate": "json:dumps", "retry_attempts": 3, "timeout_s": 30.0,
         "pivot": False, "verify": None, "compensate_failed": True},
        {"name": "email", "after": ["reserve"], "kind": "action", "action": f"{other.__module__}:other",
         "compensate": None, "retry_attempts": 3, "timeout_s": None,
         "pivot": False, "verify": None, "compensate_failed": True},
    ]


def test_describe_names_the_kind_of_each_step():
    saga = Saga("ship", steps=[Step("a", act), Wait("cool_off", duration=timedelta(minutes=5)),
                               WaitForSignal("label", signal="shipping_label")])
    assert [(s["name"], s["kind"]) for s in saga.describe()["steps"]] == [
        ("a", "action"), ("cool_off", "timer"), ("label", "signal:shipping_label")]


def test_signal_steps_finds_the_waits_for_a_signal_name():
    saga = Saga("ship", steps=[Parallel(WaitForSignal("label"),
                                        WaitForSignal("label_copy", signal="label")),
                               WaitForSignal("paid")])
    assert [s.name for s in saga.signal_steps("label")] == ["label", "label_copy"]
    assert saga.signal_steps("refund") == []


def test_a_signal_wait_defaults_to_its_step_name():
    assert WaitForSignal("shipping_label").wait.name == "shipping_label"


# -- Retry ------------------------------------------------------------------------------

@pytest.mark.parametrize(("retry", "attempt", "seconds"), [
    pytest.param(Retry(jitter=0), 1, 1, id="first-wait-is-first-delay"),
    pytest.param(Retry(jitter=0), 2, 2, id="doubles"),
    pytest.param(Retry(jitter=0), 3, 4, id="doubles-again"),
    pytest.param(Retry(jitter=0), 9, 256, id="still-under-the-cap"),
    pytest.param(Retry(jitter=0), 10, 300, id="capped-at-five-minutes"),
    pytest.param(Retry(jitter=0), 50, 300, id="stays-capped"),
    pytest.param(Retry(first_delay=timedelta(seconds=5), multiplier=3, jitter=0), 3, 45,
                 id="multiplier-three"),
    pytest.param(Retry(first_delay=timedelta(seconds=5), multiplier=1, jitter=0), 7, 5,
                 id="constant-when-multiplier-is-one"),
    pytest.param(Retry(first_delay=timedelta(seconds=10), max_delay=timedelta(seconds=25),
                       jitter=0), 2, 20, id="below-custom-cap"),
    pytest.param(Retry(first_delay=timedelta(seconds=10), max_delay=timedelta(seconds=25),
                       jitter=0), 3, 25, id="at-custom-cap"),
    pytest.param(Retry(first_delay=timedelta(0)), 4, 0, id="zero-first-delay-never-waits"),
    pytest.param(Retry(first_delay=timedelta(milliseconds=250), jitter=0), 2, 0.5,
                 id="sub-second"),
])
def test_retry_delay_grows_exponentially_up_to_max_delay(retry, attempt, seconds):
    assert retry.delay(attempt, spread=0.5) == timedelta(seconds=seconds)


@pytest.mark.parametrize(("spread", "seconds"), [
    (0.0, 90), (0.25, 95), (0.5, 100), (0.75, 105),
])
def test_retry_jitter_spreads_the_wait_either_way(spread, seconds):
    retry = Retry(first_delay=timedelta(seconds=100), jitter=0.1)
    assert retry.delay(1, spread) == timedelta(seconds=seconds)


def test_retry_jitter_applies_after_the_cap():
    """The cap bounds the exponential base; jitter then spreads it (per the docstring)."""
    retry = Retry(first_delay=timedelta(seconds=10), max_delay=timedelta(seconds=60), jitter=0.5)
    assert retry.delay(10, 0.0) == timedelta(seconds=30)
    assert retry.delay(10, 0.5) == timedelta(seconds=60)


@settings(max_examples=100, deadline=None)
@given(first=st.floats(0, 100), multiplier=st.floats(1, 4), cap=st.floats(0, 1000),
       jitter=st.floats(0, 1), attempt=st.integers(1, 60), spread=st.floats(0, 1, exclude_max=True))
def test_retry_delay_stays_within_the_jitter_band(first, multiplier, cap, jitter, attempt, spread):
    retry = Retry(first_delay=timedelta(seconds=first), multiplier=multiplier,
                  max_delay=timedelta(seconds=cap), jitter=jitter)
    # timedelta keeps whole microseconds: the policy's own durations are the reference.
    first, cap = retry.first_delay.total_seconds(), retry.max_delay.total_seconds()
    base = min(first * multiplier ** (attempt - 1), cap)
    wait = retry.delay(attempt, spread).total_seconds()
    slack = 1e-6 + base * 1e-9
    assert base * (1 - jitter) - slack <= wait <= base * (1 + jitter) + slack
    assert wait >= 0


def test_retry_delay_is_capped_even_after_very_many_attempts():
    """Given a compensation policy meant to 'eventually succeed' (many attempts), when
    attempt 1100 fails, then the wait is the cap, not an OverflowError that would make
    every StepFailed/LeaseExpired for the step crash state.advance."""
    retry = Retry(attempts=5000, max_delay=timedelta(minutes=1), jitter=0)
    assert retry.delay(1100) == timedelta(minutes=1)


@pytest.mark.parametrize("kwargs", [
    {"attempts": 0}, {"attempts": -1}, {"multiplier": 0.5}, {"jitter": -0.1}, {"jitter": 1.5},
], ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_retry_rejects_impossible_policies(kwargs):
    with pytest.raises(ValueError):
        Retry(**kwargs)


class PaymentError(Exception):
    pass


class CardDeclined(PaymentError):
    pass


class Gateway:
    class Timeout(Exception):
        pass


def qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


@pytest.mark.parametrize(("non_retryable", "error", "retries"), [
    pytest.param((), ValueError("x"), True, id="everything-retries-by-default"),
    pytest.param((KeyError,), KeyError("x"), False, id="listed-type"),
    pytest.param((KeyError,), ValueError("x"), True, id="unlisted-type"),
    pytest.param((LookupError,), KeyError("x"), False, id="subclass-of-listed-type"),
    pytest.param((KeyError,), LookupError("x"), True, id="base-of-listed-type"),
    pytest.param(("ValueError",), ValueError("x"), False, id="bare-name"),
    pytest.param(("builtins.ValueError",), ValueError("x"), False, id="qualified-builtin"),
    pytest.param(("PaymentError",), CardDeclined(), False, id="name-of-a-base-class"),
    pytest.param((qualified(PaymentError),), CardDeclined(), False,
                 id="qualified-name-of-a-base-class"),
    pytest.param((qualified(CardDeclined),), PaymentError(), True,
                 id="qualified-name-of-a-subclass"),
    pytest.param(("Gateway.Timeout",), Gateway.Timeout(), False, id="nested-class-qualname"),
    pytest.param((qualified(Gateway.Timeout),), Gateway.Timeout(), False,
                 id="nested-class-qualified"),
    pytest.param(("Error",), ValueError("x"), True, id="no-suffix-matching"),
    pytest.param(("alueError",), ValueError("x"), True, id="no-partial-matching"),
    pytest.param(("payments.ValueError",), ValueError("x"), True, id="wrong-module"),
    pytest.param(("valueerror",), ValueError("x"), True, id="case-sensitive"),
    pytest.param((KeyError, "ValueError"), ValueError("x"), False, id="mixed-types-and-names"),
])
def test_retry_retries_unless_the_error_is_listed_as_non_retryable(non_retryable, error, retries):
    assert Retry(non_retryable=non_retryable).retries(error) is retries


# -- shape_hash -------------------------------------------------------------------------

BASE = [Step("a", act, compensate=undo), Parallel(s("b"), s("c")), s("d")]


def test_shape_hash_is_stable_for_the_same_graph():
    first = Saga("s", steps=BASE).shape_hash
    assert first == Saga("s", steps=list(BASE)).shape_hash
    assert len(first) == 16 and int(first, 16) >= 0


@pytest.mark.parametrize("steps", [
    pytest.param([Step("a", other, compensate=other), Parallel(s("b"), s("c")), s("d")],
                 id="other-callables"),
    pytest.param([Step("a", act, compensate=undo, retry=Retry(attempts=9)),
                  Parallel(s("b", timeout=timedelta(seconds=5)), s("c")), s("d")],
                 id="other-retry-and-timeout"),
    pytest.param([Step("a", act, compensate=undo), Parallel(s("c"), s("b")), s("d")],
                 id="parallel-members-swapped"),
])
def test_shape_hash_ignores_what_does_not_change_the_graph(steps):
    assert Saga("s", steps=steps).shape_hash == Saga("s", steps=BASE).shape_hash


@pytest.mark.parametrize("steps", [
    pytest.param([Step("a", act), Parallel(s("b"), s("c")), s("d")], id="compensation-removed"),
    pytest.param([Step("a", act, compensate=undo), Parallel(s("b"), s("c", compensate=undo)),
                  s("d")], id="compensation-added"),
    pytest.param([Step("a", act, compensate=undo), s("b"), s("c"), s("d")],
                 id="parallel-made-sequential"),
    pytest.param([Step("a", act, compensate=undo), Parallel(s("b"), s("c")), s("d"), s("e")],
                 id="step-added"),
    pytest.param([Step("a", act, compensate=undo), Parallel(s("b"), s("c")), s("e")],
                 id="step-renamed"),
    pytest.param([Step("a", act, compensate=undo), Parallel(s("b"), s("c", after=("b",))),
                  s("d")], id="after-added"),
    pytest.param([Step("a", act, compensate=undo), s("d"), Parallel(s("b"), s("c"))],
                 id="steps-reordered"),
    pytest.param([Step("a", act, compensate=undo), Parallel(s("b"), s("c")),
                  Wait("d", duration=timedelta(1))], id="step-became-a-timer"),
    pytest.param([Step("a", act, compensate=undo), Parallel(s("b"), s("c")),
                  WaitForSignal("d")], id="step-became-a-signal-wait"),
])
def test_shape_hash_changes_with_the_graph(steps):
    assert Saga("s", steps=steps).shape_hash != Saga("s", steps=BASE).shape_hash
