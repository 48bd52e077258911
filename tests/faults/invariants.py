"""The invariants of RELIABILITY.md, checked against the saga log and the demo effect log.

Call `check(stack, run_ids)` after a fault test has waited for its runs to finish.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from saga.registry import Registry
from tests.stack import TERMINAL, Stack

UNDO = {"reserve": "release", "charge": "refund", "ship": "cancel"}


def check(stack: Stack, run_ids: list[str], registry: Registry | None = None) -> None:
    """Assert I1 to I5 for these runs (I4 needs the definitions: pass `registry`)."""
    runs = {r.id: r for r in stack.query(
        "SELECT id, saga, version, status, error, input FROM runs WHERE id = ANY(:ids)",
        ids=list(run_ids))}
    # I5 no loss: every accepted start has its run.
    assert set(runs) == set(run_ids), f"runs lost: {set(run_ids) - set(runs)}"
    # I3 terminal, and a failed run says why.
    for run in runs.values():
        assert run.status in TERMINAL, f"run {run.id} is still {run.status}"
        if run.status == "failed":
            assert run.error, f"run {run.id} failed without a reason"
    # I5 the outbox drains: nothing left queued or leased.
    pending = stack.query("SELECT run_id, name, role, status FROM steps WHERE run_id = ANY(:ids) "
                          "AND status IN ('queued', 'running', 'retry_wait')", ids=list(run_ids))
    assert not pending, f"steps still pending: {pending}"
    _single_committer(stack, run_ids)
    _effect_once(stack, runs)
    if registry is not None:
        _reverse_order(stack, runs, registry)


def _single_committer(stack: Stack, run_ids: list[str]) -> None:
    """I2: per step and role, at most one attempt reaches succeeded."""
    rows = stack.query("SELECT run_id, step, type, count(*) AS n FROM events "
                       "WHERE run_id = ANY(:ids) AND type IN ('step.succeeded', "
                       "'compensation.succeeded') GROUP BY run_id, step, type HAVING count(*) > 1",
                       ids=list(run_ids))
    assert not rows, f"a step committed twice: {rows}"


def _effect_once(stack: Stack, runs: dict[str, Any]) -> None:
    """I1: one effect per idempotency key; a compensated order has one undo per effect."""
    for run in runs.values():
        order_id = (run.input or {}).get("order_id")
        if order_id is None:
            continue
        effects = stack.effects(order_id)
        keys = Counter(key for _, key in effects)
        assert all(n == 1 for n in keys.values()), f"effect applied twice: {effects}"
        actions = Counter(action for action, _ in effects)
        if run.status == "compensated":
            for forward, undo in UNDO.items():
                assert actions[forward] == actions[undo] <= 1, \
                    f"run {run.id}: {forward} x{actions[forward]} but {undo} x{actions[undo]}"
        if run.status == "succeeded":
            assert not any(actions[u] for u in UNDO.values()), f"undo in a succeeded run: {effects}"


def _reverse_order(stack: Stack, runs: dict[str, Any], registry: Registry) -> None:
    """I4: compensations in reverse order of the graph, never while the forward step is live."""
    events = defaultdict(list)
    for row in stack.query("SELECT run_id, id, type, step FROM events WHERE run_id = ANY(:ids) "
                           "ORDER BY id", ids=list(runs)):
        events[row.run_id].append(row)
    for run_id, history in events.items():
        run = runs[run_id]
        saga = registry.get(run.saga, run.version)
        started = {e.step: e.id for e in history if e.type == "compensation.running"}
        finished = {e.step: e.id for e in history if e.type == "compensation.succeeded"}
        settled = {e.step: e.id for e in history
                   if e.type in ("step.succeeded", "step.failed", "step.cancelled")}
        for step, at in started.items():
            assert step in settled and settled[step] < at, \
                f"run {run_id}: {step} compensated while its forward step was live"
            for later in saga.successors(step):
                if later in started:
                    assert later in finished and finished[later] < at, \
                        f"run {run_id}: {step} undone before {later}"
