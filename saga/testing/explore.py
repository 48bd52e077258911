"""Explore a saga's failures: one run per step x fault, the author's invariant checked after each.

    kit.explore(book_trip, trip, nothing_held_unless_booked, reset=travel.reset)

`scenarios(saga)` lists the runs, in this order: one with no fault; then, for each step
with an action (in the saga's order), each fault kind at each point it can strike, on the
first attempt; then, for each step with a compensation, the same faults in the
compensation, in a run made to compensate by a NonRetryable at the saga's last step.
Left out: a timeout in a step with no `timeout`, and a NonRetryable in a compensation (it
gives up by design: the run ends failed, for a person, which would prove only that).

The invariant is a function of the `Result` that raises AssertionError (a plain `assert`)
or returns False when the world the run leaves behind is wrong. The first run that breaks
it raises `InvariantBroken`, whose message says which step, which fault, which attempt,
the invariant's message, and the run's timeline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from saga.definitions import Saga
from saga.run import Role
from saga.testing.inject import KINDS, POINTS, Fault

if TYPE_CHECKING:
    from saga.testing.kit import Result, SagaKit

__all__ = ["Scenario", "Exploration", "InvariantBroken", "scenarios", "explore"]

Invariant = Callable[["Result"], Any]


@dataclass(frozen=True)
class Scenario:
    """One run of an exploration: the fault under test, and what makes the run compensate."""

    fault: Fault | None = None
    trigger: Fault | None = None  # a failure at the last step, so a compensation's fault strikes

    @property
    def faults(self) -> tuple[Fault, ...]:
        return tuple(f for f in (self.trigger, self.fault) if f is not None)

    def __str__(self) -> str:
        if self.fault is None:
            return "no fault"
        if self.trigger is None:
            return self.fault.describe()
        return f"{self.fault.describe()}, once {self.trigger.describe()} made the run compensate"


def scenarios(saga: Saga, kinds: Iterable[str] = KINDS, points: Iterable[str] = POINTS,
              compensations: bool = True) -> list[Scenario]:
    """The runs `explore` makes, in order (pass a part of them as `only=`)."""
    kinds, points = tuple(kinds), tuple(points)
    actions = [saga.by_name[name] for name in saga.order if saga.by_name[name].wait is None]
    found = [Scenario()]
    for step in actions:
        found += [Scenario(f) for f in _faults(step, Role.FORWARD, kinds, points)]
    if compensations and actions:
        trigger = Fault.nonretryable(actions[-1].name)
        for step in actions:
            if step.compensate is not None:
                found += [Scenario(f, trigger)
                          for f in _faults(step, Role.COMPENSATE, kinds, points)]
    return found


def _faults(step: Any, role: Role, kinds: tuple[str, ...],
            points: tuple[str, ...]) -> Iterable[Fault]:
    for kind in kinds:
        if kind == "timeout" and step.timeout is None:
            continue
        if kind == "nonretryable" and role is Role.COMPENSATE:
            continue
        for at in POINTS if kind == "crash" else POINTS[:2]:
            if at in points:
                yield Fault(kind, step.name, at, role)


@dataclass(frozen=True)
class Exploration:
    """What `explore` ran, every run keeping the invariant.

    `missed`: scenarios whose fault never struck (the run never got that far), so they
    proved nothing about it.
    """

    saga: str
    tried: tuple[Scenario, ...]
    missed: tuple[Scenario, ...]

    def __str__(self) -> str:
        text = f"{len(self.tried)} runs of {self.saga} kept the invariant"
        if self.missed:
            text += "; these faults never struck: " + "; ".join(map(str, self.missed))
        return text


class InvariantBroken(AssertionError):
    """A run under an injected fault broke the author's invariant; the message shows it all."""

    def __init__(self, invariant: str, scenario: Scenario, result: Result, message: str,
                 number: int, total: int) -> None:
        self.invariant = invariant
        self.scenario = scenario
        self.result = result
        self.message = message
        self.number = number
        self.total = total
        super().__init__(self.report())

    def report(self) -> str:
        result, scenario = self.result, self.scenario
        before = self.number - 1
        lines = [f"invariant {self.invariant} broken in scenario {self.number} of {self.total} "
                 f"({before} before it kept it)",
                 f"  saga      {result.saga} v{result.version}, run {result.id}"]
        struck = {s.fault: s for s in result.struck}
        if scenario.fault is None:
            lines.append("  fault     none: the run as it goes with nothing injected")
        else:
            hit = struck.get(scenario.fault)
            lines.append(f"  fault     {hit or scenario.fault}"
                         + ("" if hit else "  (it never struck: the run did not get there)"))
        if scenario.trigger is not None:
            lines.append(f"  because   {struck.get(scenario.trigger) or scenario.trigger}, "
                         "the run compensated")
        message = self.message.replace("\n", "\n            ")
        lines.append(f"  message   {message}")
        lines.append(f"  run       {result.status.upper()}"
                     + (f": {result.error}" if result.error else ""))
        undone = [f"{c['name']} {c['status']} -> {json.dumps(c['output'])}"
                  for c in result.compensations]
        if undone:
            lines.append("  undone    " + "\n            ".join(undone))
        faults = ", ".join(f.code() for f in scenario.faults)
        lines.append(f"  replay    kit.run({result.saga}, input, faults=[{faults}])")
        lines.append("timeline:")
        lines.append(result.timeline)
        return "\n".join(lines)


def explore(kit: SagaKit, saga: Saga, input: Any, invariant: Invariant, *,
            signals: Mapping[str, Any] | None = None, reset: Callable[[], Any] | None = None,
            kinds: Iterable[str] = KINDS, points: Iterable[str] = POINTS,
            compensations: bool = True, only: Iterable[Scenario] | None = None) -> Exploration:
    """Run `saga` once per scenario and check `invariant` on each result.

    `input`: the run's input, or a function returning a fresh one per run. `reset` is
    called before each run (empty your fakes there). `signals` (name → payload) are sent
    when a run waits for them. `kinds`, `points`, `compensations` narrow the scenarios;
    `only` replaces them. Raises `InvariantBroken` at the first run that breaks it.
    """
    from saga.testing.kit import KitError

    chosen = list(only) if only is not None else scenarios(saga, kinds, points, compensations)
    name = getattr(invariant, "__name__", repr(invariant))
    missed = []
    for number, scenario in enumerate(chosen, 1):
        if reset is not None:
            reset()
        result = kit.run(saga, input() if callable(input) else input,
                         faults=scenario.faults, signals=signals)
        if not result.status.terminal and not result.parked:
            waiting = ", ".join(result.waiting_for) or "nothing the kit can see"
            raise KitError(f"scenario {number} ({scenario}): run {result.id} stopped "
                           f"{result.status}, waiting for {waiting}; pass signals={{name: "
                           f"payload}} to explore\n{result.timeline}")
        message, error = _verdict(invariant, result)
        if message is not None:
            raise InvariantBroken(name, scenario, result, message, number,
                                  len(chosen)) from error
        if scenario.fault is not None and scenario.fault not in {s.fault for s in result.struck}:
            missed.append(scenario)
    return Exploration(saga.name, tuple(chosen), tuple(missed))


def _verdict(invariant: Invariant, result: Result) -> tuple[str | None, Exception | None]:
    """(what broke, the exception) or (None, None) when the invariant holds."""
    try:
        verdict = invariant(result)
    except AssertionError as exc:
        return str(exc).strip() or "an assert failed (it gave no message)", exc
    except Exception as exc:
        return f"the invariant raised {type(exc).__name__}: {exc}", exc
    if verdict is False:
        return "the invariant returned False", None
    return None, None
