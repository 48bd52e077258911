"""The worker executes: claim a step, call the user's code under a heartbeat, report the outcome.

What the outcome means for the run is the engine's to decide; the worker only turns a
call into an event (`StepSucceeded` or `StepFailed`) and hands it back.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
from dataclasses import dataclass
from typing import Any

from saga.definitions import RemoteTask, Retry, Saga, resolve_action
from saga.engine import Claim, Dispatcher, Engine
from saga.errors import LeaseLost, NonRetryable, UnknownSaga
from saga.events import Event, StepFailed, StepSucceeded
from saga.registry import Registry
from saga.run import Role
from saga.store import Outage
from saga.testing.faults import crash_point
from saga.worker.context import StepContext
from saga.worker.heartbeat import Heartbeat

__all__ = ["Worker", "StepResult", "StepContext", "worker_name"]

log = logging.getLogger("saga.worker")
# Celery's soft limit and a RemoteTask's wait, matched by name to keep Celery at the edge.
TIMEOUT_ERRORS = frozenset({"SoftTimeLimitExceeded", "TimeoutError"})


@dataclass(frozen=True)
class StepResult:
    """What one delivery of a step message came to (for logs and tests)."""

    outcome: str  # "dropped", "succeeded", "failed", "superseded", "deferred"
    attempt: int = 0


def worker_name() -> str:
    """This process's name in leases and events: `host/pid`, as Celery's tasks name it."""
    return f"{socket.gethostname()}/{os.getpid()}"


class Worker:
    def __init__(self, engine: Engine, registry: Registry, dispatcher: Dispatcher,
                 inline_steps: int = 50) -> None:
        self.engine = engine
        self.registry = registry
        self.dispatcher = dispatcher  # for RemoteTask steps, which another service runs
        self.inline_steps = inline_steps
        self.outage = Outage(log, "worker")

    def run_step(self, run_id: str, step: str, role: Role, saga_name: str, version: int,
                 worker: str | None = None) -> StepResult:
        """Claim the step, run it under a heartbeat, report the outcome with the fence.

        Then, up to `inline_steps` times, run on with a step that outcome queued (claimed
        in the same commit) instead of publishing it: a sequence of steps costs one commit
        each, not a message, a claim and a commit.
        """
        try:
            result = self._run_step(run_id, step, role, saga_name, version,
                                    worker or worker_name())
        except Exception as exc:
            # The saga log is away: drop this hint (the step row stays queued, or its lease
            # runs out) and let the sweeper publish it again once the log answers.
            if self.outage.failed(exc):
                return StepResult("deferred")
            raise
        self.outage.answered()
        return result

    def _run_step(self, run_id: str, step: str, role: Role, saga_name: str, version: int,
                  worker: str) -> StepResult:
        try:
            saga = self.registry.get(saga_name, version)
        except UnknownSaga as exc:  # the sweeper publishes it again; a worker that has it runs it
            self.engine.park(run_id, f"waiting for {saga_name} v{version} to be loaded again: {exc}")
            return StepResult("dropped")
        definition = saga.by_name.get(step)
        if definition is None or definition.wait is not None:
            return StepResult("dropped")
        claim = self.engine.claim(run_id, saga, step, role, worker)
        if claim is None:
            return StepResult("dropped")
        # Steps taken inline run without Celery's time limits, so only after one without.
        budget = self.inline_steps if definition.timeout is None else 0
        first_attempt, result = claim.attempt, None
        while claim is not None:
            event = self._execute(saga, claim)
            outcome = self.engine.advance(run_id, event, worker=worker, known=saga,
                                          claim_next_for=worker if budget > 0 else None)
            if result is None:  # the first step's outcome is this message's
                done = "succeeded" if isinstance(event, StepSucceeded) else "failed"
                result = StepResult(done if outcome.changed else "superseded", first_attempt)
            claim = outcome.claim
            budget -= 1
        assert result is not None  # the loop ran at least once: there was a claim
        return result

    def _execute(self, saga: Saga, claim: Claim) -> Event:
        """Run one claimed step (or compensation) under a heartbeat; its outcome as an event."""
        definition = saga.by_name[claim.step]
        action, policy = definition.for_role(claim.role)
        beat = Heartbeat(lambda: self.engine.renew(claim), claim.lease_s)
        ctx = StepContext(run_id=claim.run_id, step=claim.step, role=str(claim.role),
                          attempt=claim.attempt, fence=claim.fence, input=claim.input,
                          outputs=claim.outputs, saga=saga.name, version=saga.version,
                          _beat=beat.beat)
        timeout = definition.timeout.total_seconds() if definition.timeout else None
        with beat:
            event = self._call(action, ctx, claim.role, policy, timeout)
            lost = beat.lost.is_set()
        if lost:  # the commit would be refused by the fence anyway; say why
            return StepFailed(claim.step, claim.role, claim.fence, "lease lost during the attempt")
        return event

    def _call(self, action: Any, ctx: StepContext, role: Role, policy: Retry,
              timeout: float | None) -> Event:
        label = f"{ctx.step}.compensate" if role is Role.COMPENSATE else ctx.step
        try:
            target = resolve_action(action)
            crash_point("before_effect", label)
            if isinstance(target, RemoteTask):
                output = self.dispatcher.call_remote(target, _payload(ctx), timeout)
            else:
                output = target(ctx)
            crash_point("after_effect", label)
        except LeaseLost as exc:
            return StepFailed(ctx.step, role, ctx.fence, str(exc))
        except NonRetryable as exc:
            return StepFailed(ctx.step, role, ctx.fence, _describe(exc), retryable=False)
        except Exception as exc:
            if type(exc).__name__ in TIMEOUT_ERRORS:
                return StepFailed(ctx.step, role, ctx.fence, f"exceeded its {timeout}s time limit",
                                  timed_out=True, spread=random.random())
            log.info("step %s of run %s attempt %s failed: %s", ctx.step, ctx.run_id,
                     ctx.attempt, _describe(exc))
            return StepFailed(ctx.step, role, ctx.fence, _describe(exc),
                              retryable=policy.retries(exc), spread=random.random())
        try:
            json.dumps(output)
        except (TypeError, ValueError) as exc:
            return StepFailed(ctx.step, role, ctx.fence, f"output is not JSON: {exc}",
                              retryable=False)
        return StepSucceeded(ctx.step, role, ctx.fence, output)


def _payload(ctx: StepContext) -> dict[str, Any]:
    # "kind" repeats "role" for services written against the first release.
    return {"run_id": ctx.run_id, "step": ctx.step, "role": ctx.role, "kind": ctx.role,
            "attempt": ctx.attempt, "fence": ctx.fence, "idempotency_key": ctx.idempotency_key,
            "input": ctx.input, "outputs": ctx.outputs}


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
