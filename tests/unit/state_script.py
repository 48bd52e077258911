"""Helpers for the state-machine tables: a simulated claim and a tiny script language."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from saga import events, state
from saga.definitions import Retry, Saga, Step
from saga.events import (
    CompensateStep,
    LeaseExpired,
    RetryDue,
    RunStep,
    StepFailed,
    StepSucceeded,
    WakeUpDue,
)
from saga.run import Role, Run, StepStatus

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
FWD, COMP = Role.FORWARD, Role.COMPENSATE


def act(ctx):
    return None


NO_WAIT = Retry(attempts=3, first_delay=timedelta(0))
ONCE = Retry(attempts=1)
BACKOFF = Retry(attempts=3, first_delay=timedelta(seconds=10), multiplier=2, jitter=0)


def step(name: str, *, comp: bool = True, retry: Retry = ONCE,
         comp_retry: Retry = Retry(attempts=3, first_delay=timedelta(seconds=5), jitter=0),
         **kwargs) -> Step:
    return Step(name, act, compensate=act if comp else None, retry=retry,
                compensate_retry=comp_retry, **kwargs)


def key(token: str) -> tuple[str, Role]:
    """'a' is the forward step a, '~a' its compensation."""
    return (token[1:], COMP) if token.startswith("~") else (token, FWD)


def claim(run: Run, token: str, now: datetime = T0) -> Run:
    """What the store's claim does in SQL: QUEUED -> RUNNING, attempt+1, fence+1, a lease."""
    current = run.steps[key(token)]
    assert current.status is StepStatus.QUEUED, f"{token} is {current.status}, not queued"
    claimed = replace(current, status=StepStatus.RUNNING, attempt=current.attempt + 1,
                      fence=current.fence + 1, started_at=now, lease_expires_at=now + LEASE,
                      lease_owner="worker-1")
    return replace(run, steps={**run.steps, key(token): claimed})


def play(saga: Saga, script: str, run: Run | None = None, now: datetime = T0,
         ) -> tuple[Run, list[events.Command]]:
    """Start (unless given a run) and play `script`; return the run and the last commands.

    Each `;`-separated instruction is `<step> <verb>`: `claim`, `ok` (success), `fail`
    (retryable), `fail!` (non-retryable), `timeout` (its soft time limit), `expire` (its
    lease ran out), `due` (its retry wait is over), `wake` (its timer or signal wait is
    over). `ok`, `fail`, `fail!`, `timeout`, `expire` claim a queued step first. `~a` is a's
    compensation. A bare `+10s` moves the clock.
    """
    commands: list[events.Command] = []
    if run is None:
        run, commands = state.start(saga, "run-1", {"order": 7}, now)
    for instruction in filter(None, (part.strip() for part in script.split(";"))):
        if instruction.startswith("+"):
            now += timedelta(seconds=float(instruction[1:].rstrip("s")))
            continue
        token, verb = instruction.split()
        name, role = key(token)
        if verb == "claim" or (verb in ("ok", "fail", "fail!", "timeout", "expire")
                               and run.steps[(name, role)].status is StepStatus.QUEUED):
            run = claim(run, token, now)
            if verb == "claim":
                continue
        current = run.steps[(name, role)]
        if verb == "ok":
            event = StepSucceeded(name, role, current.fence, output=f"{token}-out")
        elif verb in ("fail", "fail!"):
            event = StepFailed(name, role, current.fence, f"{token} broke",
                               retryable=verb == "fail")
        elif verb == "timeout":  # the soft time limit raised inside the step
            event = StepFailed(name, role, current.fence, "soft time limit", timed_out=True)
        elif verb == "expire":
            now = max(now, current.lease_expires_at)
            event = LeaseExpired(name, role, current.fence)
        elif verb == "due":
            now = max(now, current.next_attempt_at)
            event = RetryDue(name, role)
        elif verb == "wake":
            now = max(now, current.wake_at)
            event = WakeUpDue(name, role)
        else:
            raise ValueError(f"unknown verb in {instruction!r}")
        run, commands = state.advance(saga, run, event, now)
    return run, commands


def view(run: Run) -> dict[str, str]:
    """Each step's status, '~name' for compensations: the shape the tables below use."""
    return {("~" if k is COMP else "") + n: str(s.status) for (n, k), s in run.steps.items()}


def dispatch(commands: list[events.Command]) -> list[events.Command]:
    """The steps to dispatch, without alerts (tested on their own)."""
    return [c for c in commands if isinstance(c, (RunStep, CompensateStep))]


def cmds(*tokens: str) -> list[events.Command]:
    return [CompensateStep(t[1:]) if t.startswith("~") else RunStep(t) for t in tokens]
