"""A saga: a named, versioned graph of steps, compiled from sequences and `Parallel` groups."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Union

from saga.definitions.steps import Step, _action_name, _check_step, _kind
from saga.definitions.waits import Signal
from saga.errors import DefinitionError
from saga.schedules.cron import Schedule


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
    pivot: str | None = field(init=False, repr=False)  # the step past which nothing is undone

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise DefinitionError(f"saga name {self.name!r} must be letters, digits, _ or -")
        if self.version < 1:
            raise DefinitionError(f"saga {self.name!r}: version must be at least 1")
        if self.schedule is not None:
            if not isinstance(self.schedule, Schedule):
                raise DefinitionError(f"saga {self.name!r}: schedule must be a saga.Schedule")
            self.schedule.check(self)
        try:
            steps, graph, order = _build(self.steps)
            pivot = _check_pivot(steps, graph)
        except DefinitionError as exc:  # say which saga too: a module may define many
            raise DefinitionError(f"saga {self.name!r} v{self.version}, {exc}") from None
        if not steps:
            raise DefinitionError(f"saga {self.name!r} has no steps")
        object.__setattr__(self, "by_name", steps)
        object.__setattr__(self, "graph", graph)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "followers",
                           {n: tuple(m for m in order if n in graph[m]) for n in order})
        object.__setattr__(self, "pivot", pivot)

    @functools.cached_property
    def shape_hash(self) -> str:
        """A digest of the step graph, to notice a definition changed under one version."""
        shape = {n: [sorted(self.graph[n]), self.by_name[n].compensate is not None,
                     _kind(self.by_name[n])] for n in self.order}
        if self.pivot is not None:  # only then, so sagas without one keep their digest
            shape[self.pivot].append("pivot")
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
                    "timeout_s": _seconds(self.by_name[n].timeout),
                    "pivot": self.by_name[n].pivot,
                    "verify": _action_name(self.by_name[n].verify),
                    "compensate_failed": self.by_name[n].compensate_failed,
                }
                for n in self.order
            ],
        }


def _build(nodes: Sequence[Node]) -> tuple[dict[str, Step], dict[str, frozenset[str]],
                                            tuple[str, ...]]:
    """Steps by name, each step's dependencies, and an order that respects them."""
    steps: dict[str, Step] = {}
    graph: dict[str, frozenset[str]] = {}
    _compile(list(nodes), frozenset(), steps, graph)
    for name, step in steps.items():
        unknown = set(step.after) - steps.keys()
        if unknown:
            raise DefinitionError(f"step {name!r}: 'after' names unknown step(s) {sorted(unknown)}")
        graph[name] = graph[name] | frozenset(step.after)
    return steps, graph, _topological(graph)


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


def _check_pivot(steps: Mapping[str, Step], graph: Mapping[str, frozenset[str]]) -> str | None:
    """The pivot's name, if there is one; refuse a pivot that could not hold its promise.

    Every other step must run wholly before the pivot or wholly after it: one beside it
    (in a Parallel group, or unordered by `after=`) could fail once the pivot succeeded,
    when nothing may be undone, or still run while it does. A second pivot would say
    nothing more: after the first, nothing is compensated anyway.
    """
    pivots = [name for name, step in steps.items() if step.pivot]
    if len(pivots) > 1:
        raise DefinitionError(f"steps {' and '.join(map(repr, pivots))} are both pivots: a "
                              "saga has one point of no return (after the first, nothing is "
                              "compensated anyway)")
    if not pivots:
        return None
    pivot = pivots[0]
    before, after = _reach(graph, pivot), _reach(_reversed(graph), pivot)
    beside = [name for name in steps if name != pivot and name not in before | after]
    if beside:
        raise DefinitionError(
            f"step {pivot!r} is the pivot but {', '.join(map(repr, sorted(beside)))} may run "
            "beside it (a Parallel group, or no after= between them): such a step could fail "
            "once the pivot succeeded, when nothing can be undone. Put it before the pivot "
            "or after it")
    undone = sorted(name for name in after if steps[name].compensate is not None)
    if undone:
        raise DefinitionError(
            f"{', '.join(map(repr, undone))} comes after the pivot {pivot!r}, so it is never "
            "compensated: remove its compensate= (after the pivot a step that cannot succeed "
            "parks the run for a person)")
    return pivot


def _reach(graph: Mapping[str, frozenset[str]], start: str) -> set[str]:
    """Every step reachable from `start` along `graph` (its dependencies, transitively)."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def _reversed(graph: Mapping[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    followers: dict[str, set[str]] = {name: set() for name in graph}
    for name, deps in graph.items():
        for dep in deps:
            followers[dep].add(name)
    return {name: frozenset(found) for name, found in followers.items()}


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


def _seconds(value: timedelta | None) -> float | None:
    return value.total_seconds() if value is not None else None
