"""The saga DSL: Saga, Step, Parallel, Retry and RemoteTask, validated when built.

A saga is a named, versioned graph of steps. Sequences are lists, parallel groups are
`Parallel(...)`; both compile to one dependency graph (`Saga.graph`) that the pure plan
in `saga.state` walks. A bad definition raises `DefinitionError` naming the step, so it
fails when the module defining it is imported.

    fulfillment = Saga("order_fulfillment", version=1, input=OrderSchema, steps=[
        Step("reserve_inventory", reserve, compensate=release),
        Step("charge_card", charge, compensate=refund, retry=Retry(attempts=5)),
        Parallel(
            Step("create_shipment", ship, compensate=cancel_shipment),
            Step("email_warehouse", email_warehouse),
        ),
    ])
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Union

from saga.errors import DefinitionError
from saga.schedules.cron import Schedule

__all__ = ["Saga", "Step", "Parallel", "Retry", "RemoteTask", "Wait", "WaitForSignal", "Timer",
           "Signal", "Node", "resolve_action"]


@dataclass(frozen=True)
class Retry:
    """When and how often a failed attempt is tried again.

    The delay before attempt n+1 is `first_delay * multiplier**(n-1)`, capped at
    `max_delay`, then spread by up to `jitter` (a fraction) either way.
    `non_retryable` lists exception types (or their qualified names) that end the
    step at once, beside `saga.NonRetryable`.
    """

    attempts: int = 3
    first_delay: timedelta = timedelta(seconds=1)
    multiplier: float = 2.0
    max_delay: timedelta = timedelta(minutes=5)
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException] | str, ...] = ()

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Retry.attempts must be at least 1")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("Retry needs multiplier >= 1 and 0 <= jitter <= 1")

    def delay(self, attempt: int, spread: float = 0.5) -> timedelta:
        """Wait after failed `attempt` (1-based); `spread` in [0, 1) picks the jitter."""
        first, cap = self.first_delay.total_seconds(), self.max_delay.total_seconds()
        try:
            base = min(first * self.multiplier ** (attempt - 1), cap)
        except OverflowError:  # a long policy's wait is simply the cap
            base = cap
        return timedelta(seconds=max(0.0, base * (1 + self.jitter * (2 * spread - 1))))

    def retries(self, error: BaseException) -> bool:
        names = {f"{t.__module__}.{t.__qualname__}" for t in type(error).__mro__}
        names |= {t.__qualname__ for t in type(error).__mro__}
        for kind in self.non_retryable:
            if isinstance(kind, str) and kind in names:
                return False
            if isinstance(kind, type) and isinstance(error, kind):
                return False
        return True


@dataclass(frozen=True)
class RemoteTask:
    """A Celery task that another service's worker runs, by name (and queue)."""

    name: str
    queue: str | None = None


Action = Union[Callable[..., Any], RemoteTask, str]


@dataclass(frozen=True)
class Timer:
    """A durable wait: a fixed `duration`, or `until(input, outputs)` giving an aware datetime."""

    duration: timedelta | None = None
    until: Callable[[Any, dict[str, Any]], Any] | None = None


@dataclass(frozen=True)
class Signal:
    """A wait for the external signal `name`; its payload becomes the step's output.

    `on_timeout`: "compensate" (the step fails and the run compensates) or "continue"
    (the step succeeds with output `{"timed_out": true}` and the saga goes on).
    """

    name: str
    timeout: timedelta | None = None
    on_timeout: str = "compensate"
    schema: Any = None  # a marshmallow Schema (class or instance) validating the payload

TIMEOUT_POLICIES = ("retry", "compensate", "park")
DEFAULT_COMPENSATE_RETRY = Retry(attempts=10, first_delay=timedelta(seconds=1),
                                 max_delay=timedelta(minutes=1))


@dataclass(frozen=True)
class Step:
    """One step: an action, its optional compensation, how to retry it, its time limits.

    An action is a callable taking a `saga.StepContext`, a `"module:function"` import
    path, or a `RemoteTask`. `after` adds dependencies beyond the step's place in its
    sequence. Time limits, each measuring one thing:

    - `timeout` (start to close): the soft limit raises inside the step, and the hard
      limit (a few seconds later) kills it.
    - `heartbeat_timeout`: the lease; without a heartbeat within it the attempt failed.
    - `schedule_to_start`: queued longer than this without a worker taking it.

    `on_timeout` says what a timed-out attempt leads to: "retry" (by `retry`),
    "compensate" (fail the step now), or "park" (stop and flag the run for a person).
    """

    name: str
    action: Action | None
    compensate: Action | None = None
    retry: Retry = Retry()
    compensate_retry: Retry = DEFAULT_COMPENSATE_RETRY
    timeout: timedelta | None = None
    heartbeat_timeout: timedelta | None = None
    schedule_to_start: timedelta | None = None
    on_timeout: str = "retry"
    after: tuple[str, ...] = ()
    queue: str | None = None
    wait: Timer | Signal | None = None  # set by Wait / WaitForSignal: a step that holds no worker


def Wait(name: str, duration: timedelta | None = None,
         until: Callable[[Any, dict[str, Any]], Any] | None = None,
         after: tuple[str, ...] = ()) -> Step:
    """A durable timer step: "wait 20 minutes", or until a time computed from the run.

    The wait is a row with a due time: a waiting run holds no worker and no message.

        Wait("cool_off", duration=timedelta(minutes=20))
        Wait("trial_over", until=lambda input, outputs: parse(input["trial_ends_at"]))
    """
    return Step(name, None, wait=Timer(duration, until), after=after)


def WaitForSignal(name: str, signal: str | None = None, timeout: timedelta | None = None,
                  on_timeout: str = "compensate", schema: Any = None,
                  after: tuple[str, ...] = ()) -> Step:
    """A step that waits for `POST /v1/runs/{id}/signals/{signal}` (the step's name by default).

        WaitForSignal("shipping_label", timeout=timedelta(days=2), schema=LabelSchema)
    """
    return Step(name, None, wait=Signal(signal or name, timeout, on_timeout, schema), after=after)


class Parallel:
    """Members that run at once; each member is a Step or a list (a sequence)."""

    def __init__(self, *members: Node) -> None:
        if len(members) < 2:
            raise DefinitionError("Parallel needs at least two members")
        self.members = tuple(members)

    def __repr__(self) -> str:
        return f"Parallel{self.members!r}"


Node = Union[Step, Parallel, Sequence["Node"]]


@dataclass(frozen=True)
class Saga:
    """A named, versioned definition; `graph` maps each step to the steps it waits for."""

    name: str
    steps: Sequence[Node]
    version: int = 1
    input: Any = None  # a marshmallow Schema class or instance validating the input
    timeout: timedelta | None = None
    schedule: Schedule | None = None  # a cron on a time zone; each firing starts one run
    graph: Mapping[str, frozenset[str]] = field(init=False, repr=False)
    by_name: Mapping[str, Step] = field(init=False, repr=False)
    order: tuple[str, ...] = field(init=False, repr=False)
    followers: Mapping[str, tuple[str, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise DefinitionError(f"saga name {self.name!r} must be letters, digits, _ or -")
        if self.version < 1:
            raise DefinitionError(f"saga {self.name!r}: version must be at least 1")
        if self.schedule is not None:
            if not isinstance(self.schedule, Schedule):
                raise DefinitionError(f"saga {self.name!r}: schedule must be a saga.Schedule")
            self.schedule.check(self)
        steps: dict[str, Step] = {}
        graph: dict[str, frozenset[str]] = {}
        _compile(list(self.steps), frozenset(), steps, graph)
        if not steps:
            raise DefinitionError(f"saga {self.name!r} has no steps")
        for name, step in steps.items():
            unknown = set(step.after) - steps.keys()
            if unknown:
                raise DefinitionError(f"step {name!r}: 'after' names unknown step(s) {sorted(unknown)}")
            graph[name] = graph[name] | frozenset(step.after)
        object.__setattr__(self, "by_name", steps)
        object.__setattr__(self, "graph", graph)
        order = _topological(graph)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "followers",
                           {n: tuple(m for m in order if n in graph[m]) for n in order})

    @functools.cached_property
    def shape_hash(self) -> str:
        """A digest of the step graph, to notice a definition changed under one version."""
        shape = {n: [sorted(self.graph[n]), self.by_name[n].compensate is not None,
                     _kind(self.by_name[n])] for n in self.order}
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    @functools.cached_property
    def has_signals(self) -> bool:
        return any(isinstance(s.wait, Signal) for s in self.by_name.values())

    def signal_steps(self, signal: str) -> list[Step]:
        """The steps waiting for this signal name (empty: the saga does not declare it)."""
        return [s for s in self.by_name.values()
                if isinstance(s.wait, Signal) and s.wait.name == signal]

    def successors(self, name: str) -> tuple[str, ...]:
        """The steps that wait directly for `name`."""
        return self.followers[name]

    def describe(self) -> dict[str, Any]:
        """The step graph as plain data (for `GET /v1/sagas`)."""
        return {
            "name": self.name,
            "version": self.version,
            "steps": [
                {
                    "name": n,
                    "after": sorted(self.graph[n]),
                    "kind": _kind(self.by_name[n]),
                    "action": _action_name(self.by_name[n].action),
                    "compensate": _action_name(self.by_name[n].compensate),
                    "retry_attempts": self.by_name[n].retry.attempts,
                    "timeout_s": (self.by_name[n].timeout.total_seconds()
                                  if self.by_name[n].timeout else None),
                }
                for n in self.order
            ],
        }


def _compile(node: Node, deps: frozenset[str], steps: dict[str, Step],
             graph: dict[str, frozenset[str]]) -> frozenset[str]:
    """Add `node` after `deps`; return the names the next node must wait for."""
    if isinstance(node, Step):
        _check_step(node)
        if node.name in steps:
            raise DefinitionError(f"step {node.name!r} is defined twice")
        steps[node.name] = node
        graph[node.name] = deps
        return frozenset({node.name})
    if isinstance(node, Parallel):
        exits: frozenset[str] = frozenset()
        for member in node.members:
            exits |= _compile(member, deps, steps, graph)
        return exits
    if isinstance(node, (list, tuple)):
        for member in node:
            deps = _compile(member, deps, steps, graph)
        return deps
    raise DefinitionError(f"not a step, Parallel or list: {node!r}")


def _check_step(step: Step) -> None:
    if not isinstance(step.name, str) or not step.name.isidentifier():
        raise DefinitionError(f"step name {step.name!r} must be an identifier")
    if isinstance(step.after, str):
        raise DefinitionError(f"step {step.name!r}: after= takes a tuple of step names, "
                              f"e.g. after=({step.after!r},)")
    if step.wait is not None:
        _check_wait(step)
    elif step.action is None:
        what = "a compensation on nothing" if step.compensate is not None else "no action"
        raise DefinitionError(f"step {step.name!r} has {what}")
    for role, action in (("action", step.action), ("compensation", step.compensate)):
        if action is not None:
            try:
                resolve_action(action)
            except DefinitionError as exc:
                raise DefinitionError(f"step {step.name!r}: {role} {exc}") from None
    for limit in ("timeout", "heartbeat_timeout", "schedule_to_start"):
        value = getattr(step, limit)
        if value is not None and value <= timedelta(0):
            raise DefinitionError(f"step {step.name!r}: {limit} must be positive")
    if step.on_timeout not in TIMEOUT_POLICIES:
        raise DefinitionError(f"step {step.name!r}: on_timeout must be one of "
                              f"{', '.join(TIMEOUT_POLICIES)}, not {step.on_timeout!r}")


def _check_wait(step: Step) -> None:
    wait = step.wait
    if step.action is not None or step.compensate is not None:
        raise DefinitionError(f"step {step.name!r}: a wait has no action and nothing to compensate")
    if isinstance(wait, Timer):
        if (wait.duration is None) == (wait.until is None):
            raise DefinitionError(f"step {step.name!r}: a Wait needs a duration or until, not both")
        if wait.duration is not None and wait.duration < timedelta(0):
            raise DefinitionError(f"step {step.name!r}: a Wait's duration must not be negative")
    elif isinstance(wait, Signal):
        if not wait.name or not wait.name.replace("_", "").replace("-", "").isalnum():
            raise DefinitionError(f"step {step.name!r}: signal name {wait.name!r} must be "
                                  "letters, digits, _ or -")
        if wait.on_timeout not in ("compensate", "continue"):
            raise DefinitionError(f"step {step.name!r}: on_timeout must be 'compensate' or "
                                  f"'continue', not {wait.on_timeout!r}")
        if wait.timeout is not None and wait.timeout <= timedelta(0):
            raise DefinitionError(f"step {step.name!r}: the signal timeout must be positive")
    else:
        raise DefinitionError(f"step {step.name!r}: wait must be a Timer or a Signal")


def resolve_action(action: Action) -> Callable[..., Any] | RemoteTask:
    """A callable or RemoteTask for an action; a "module:function" path is imported."""
    if isinstance(action, RemoteTask) or callable(action):
        return action
    if isinstance(action, str):
        module, _, attr = action.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr) if attr else None
        except (ImportError, AttributeError):
            target = None
        if not callable(target):
            raise DefinitionError(
                f"names unknown task {action!r} (use 'module:function' or RemoteTask(name))")
        return target
    raise DefinitionError(f"must be a callable, 'module:function' or RemoteTask, not {action!r}")


def _kind(step: Step) -> str:
    if isinstance(step.wait, Timer):
        return "timer"
    if isinstance(step.wait, Signal):
        return f"signal:{step.wait.name}"
    return "action"


def _action_name(action: Action | None) -> str | None:
    if action is None:
        return None
    if isinstance(action, RemoteTask):
        return f"task:{action.name}"
    if isinstance(action, str):
        return action
    return f"{getattr(action, '__module__', '?')}:{getattr(action, '__qualname__', repr(action))}"


def _topological(graph: Mapping[str, frozenset[str]]) -> tuple[str, ...]:
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise DefinitionError(f"step {name!r} is in a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        state[name] = 2
        order.append(name)

    for name in graph:
        visit(name, [])
    return tuple(order)
