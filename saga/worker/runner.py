"""The worker executes: claim a step, call the user's code under a heartbeat, report the outcome.

What the outcome means for the run is the engine's to decide; the worker only turns a
call into an event (`StepSucceeded` or `StepFailed`, or the `StepChecked` answer of a
step's verify) and hands it back.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import socket
from dataclasses import dataclass, replace
from time import monotonic
from typing import Any, Protocol

from saga import state
from saga.definitions import RemoteTask, Retry, Saga, Verified, resolve_action
from saga.engine import Claim, Dispatcher, Engine
from saga.errors import LeaseLost, NonRetryable, RunNotFound, UnknownSaga
from saga.events import Event, StepChecked, StepFailed, StepSucceeded
from saga.observe.context import bound as log_fields
from saga.registry import Registry
from saga.run import Checked, Role
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

    outcome: str  # "dropped", "succeeded", "failed", "parked", "superseded", "deferred"
    attempt: int = 0
    event: Event | None = None  # the first attempt's outcome; None when none ran
    inline: int = 0  # attempts run on inline after it
    retried: bool = False  # the committed run gives that step another attempt


class AttemptListener(Protocol):
    """Told when each attempt begins and how it ended; `inline` when it came without a
    message of its own (saga/tasks sends these as task events for Flower). Never raises."""

    def began(self, saga: Saga, claim: Claim, inline: bool) -> None: ...

    def ended(self, saga: Saga, claim: Claim, event: Event, changed: bool,
              inline: bool, retried: bool) -> None: ...

    def delivered(self) -> None:
        """The message's attempts are over (it may hold what it was told until then)."""


def worker_name() -> str:
    """This process's name in leases and events: `host/pid`, as Celery's tasks name it."""
    return f"{socket.gethostname()}/{os.getpid()}"


class Worker:
    def __init__(self, engine: Engine, registry: Registry, dispatcher: Dispatcher,
                 inline_steps: int = 50, attempts: AttemptListener | None = None,
                 inline_for_s: float | None = None) -> None:
        self.engine = engine
        self.registry = registry
        self.dispatcher = dispatcher  # for RemoteTask steps, which another service runs
        self.inline_steps = inline_steps
        # The message stays unacknowledged while its inline steps run: none is taken on past
        # this (saga.tasks.limits.inline_window_s), before the broker redelivers or cancels it.
        self.inline_for_s = inline_for_s
        self.attempts = attempts
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
        except RunNotFound:
            _unknown_run(run_id)
            return StepResult("dropped")
        except Exception as exc:
            # The saga log is away: drop this hint (the step row stays queued, or its lease
            # runs out) and let the sweeper publish it again once the log answers.
            if self.outage.failed(exc):
                return StepResult("deferred")
            raise
        finally:
            if self.attempts is not None:
                self.attempts.delivered()
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
        window_ends = None if self.inline_for_s is None else monotonic() + self.inline_for_s
        first_attempt, result, inline = claim.attempt, None, 0
        while claim is not None:
            if self.attempts is not None:
                self.attempts.began(saga, claim, inline > 0)
            # Every line logged while the attempt runs (the step's own too) names it.
            with log_fields(run_id=run_id, saga=saga.name, version=saga.version,
                            step=claim.step, role=str(claim.role), attempt=claim.attempt,
                            worker=worker):
                event = self._execute(saga, claim)
            go_on = budget > 0 and (window_ends is None or monotonic() < window_ends)
            outcome = self.engine.advance(run_id, event, worker=worker, known=saga,
                                          claim_next_for=worker if go_on else None)
            retried = outcome.retried(claim.step, claim.role, claim.attempt)
            if self.attempts is not None:
                self.attempts.ended(saga, claim, event, outcome.changed, inline > 0, retried)
            if result is None:  # the first step's outcome is this message's
                done = _ended(event)
                result = StepResult(done if outcome.changed else "superseded", first_attempt,
                                    event, retried=retried)
            claim = outcome.claim
            if claim is not None:
                inline += 1  # the next attempt runs on here, without a message of its own
            budget -= 1
        assert result is not None  # the loop ran at least once: there was a claim
        return replace(result, inline=inline)

    def _execute(self, saga: Saga, claim: Claim) -> Event:
        """Run one claimed step (or compensation) under a heartbeat; its outcome as an event."""
        definition = saga.by_name[claim.step]
        action, policy = definition.for_role(claim.role)
        beat = Heartbeat(lambda: self.engine.renew(claim), claim.lease_s)
        ctx = StepContext(run_id=claim.run_id, step=claim.step, role=str(claim.role),
                          attempt=claim.attempt, fence=claim.fence, raw_input=claim.input,
                          outputs=claim.outputs, saga=saga.name, version=saga.version,
                          output=claim.forward_output, forward_error=claim.forward_error,
                          input_schema=saga.input, _beat=beat.beat)
        timeout = definition.timeout.total_seconds() if definition.timeout else None
        with beat, ctx:  # ctx closes what the attempt opened (its http session)
            event = self._check(saga, claim, ctx, policy)
            if event is None:
                event = self._call(action, ctx, claim.role, policy, timeout)
            lost = beat.lost.is_set()
        if lost:  # the commit would be refused by the fence anyway; say why
            return StepFailed(claim.step, claim.role, claim.fence, "lease lost during the attempt")
        return event

    def _check(self, saga: Saga, claim: Claim, ctx: StepContext, policy: Retry) -> Event | None:
        """Ask the step's `verify` first if the state says so (an earlier attempt in doubt, or
        an undo of a step that did not succeed): None to go on and act, else the outcome.

        An answer that lets the attempt act is committed first, under its fence.
        """
        verify = saga.by_name[claim.step].verify
        if verify is None or not claim.check_first:
            return None
        fail = functools.partial(StepFailed, claim.step, claim.role, claim.fence)
        try:
            # The check looks up the forward call: its key, whoever asks.
            check = resolve_action(verify)
            assert callable(check)  # a RemoteTask is refused when the saga is defined
            with replace(ctx, role=str(Role.FORWARD), attempt=claim.forward_attempt,
                         fence=claim.forward_fence) as forward:
                answer = check(forward)
        except LeaseLost as exc:
            return fail(str(exc))
        except Exception as exc:  # the attempt failed; the step stays as much in doubt
            return fail(f"verify failed: {_describe(exc)}", spread=random.random(),
                        retryable=not isinstance(exc, NonRetryable) and policy.retries(exc),
                        timed_out=type(exc).__name__ in TIMEOUT_ERRORS)
        if not isinstance(answer, Verified):
            return fail(f"verify returned {answer!r}, not a saga.Verified", retryable=False)
        try:
            json.dumps(answer.output)
        except (TypeError, ValueError) as exc:
            return fail(f"verify's output is not JSON: {exc}", retryable=False)
        event = StepChecked(claim.step, claim.role, claim.fence, answer.answer, answer.output)
        if not state.acts_after(event):
            return event
        if not self.engine.advance(claim.run_id, event, known=saga).changed:
            return fail("lease lost during the check")
        return None

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
            if type(exc).__name__ in TIMEOUT_ERRORS:  # a call that timed out: outcome unknown
                said = f"exceeded its {timeout}s time limit" if timeout else _describe(exc)
                return StepFailed(ctx.step, role, ctx.fence, said, timed_out=True,
                                  spread=random.random())
            # saga.runs logs the failure once committed; its traceback is only here.
            log.debug("attempt failed: %s", _describe(exc), exc_info=exc)
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
            "input": ctx.raw_input, "outputs": ctx.outputs, "forward_key": ctx.forward_key,
            "output": ctx.output, "forward_error": ctx.forward_error}


_told_unknown_run = False  # whether this process has said why it drops such messages


def _unknown_run(run_id: str) -> None:
    """A message for a run this database does not have: said once, then quietly dropped."""
    global _told_unknown_run
    level = logging.DEBUG if _told_unknown_run else logging.WARNING
    _told_unknown_run = True
    log.log(level, "dropped a message for run %s, which this database does not have: its run "
            "was pruned since, or another deployment sent it on this queue (see SAGA_QUEUE)",
            run_id)


def _ended(event: Event) -> str:
    """How an attempt's outcome names it: a check that found the step done (or nothing to
    undo) succeeded, one that could not tell parked it."""
    if isinstance(event, StepChecked):
        return "parked" if event.answer is Checked.UNKNOWN else "succeeded"
    return "succeeded" if isinstance(event, StepSucceeded) else "failed"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
