"""Worker faults on real processes: killed, frozen, hung and poisoned workers, racing sweepers.

Each test starts the real `saga api` / `saga worker` / `saga sweeper` processes on a fresh
PostgreSQL database and a real broker (RabbitMQ and Redis, by the `broker_url` fixture),
injects one fault, waits on conditions with deadlines, then asserts what RELIABILITY.md
promises and runs the invariant checker (I1-I5). Recovery times are measured from the
fault to the step's next `step.running` event (the events table's `at`, the database's
clock) and printed (`pytest -s`).

The demo saga `order_fulfillment` and the sagas in `tests.faults.worker_sagas` are loaded;
see that module for how its steps hold, hang or kill themselves on cue. One test is a
test pins down a bug that was in `saga` (a late delivery reclaimed an expired lease
behind the sweeper's back, bypassing on_timeout, the backoff and the alert).
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from saga.registry import Registry
from saga.tasks import HARD_LIMIT_GRACE_S
from tests.faults import invariants
from tests.faults.worker_sagas import EXECUTIONS, HOLD_LEASE, STEP_TIMEOUT
from tests.stack import Stack, wait_for

SAGAS = "examples.fulfillment,tests.faults.worker_sagas"
LEASE_S = 3.0  # the Stack's SAGA_LEASE_S: the lease of steps without a heartbeat_timeout
SWEEP_S = 0.2  # the Stack's SAGA_SWEEP_INTERVAL_S
HOLD_LEASE_S = HOLD_LEASE.total_seconds()  # the lease of the test sagas' frozen steps
HARD_LIMIT_S = STEP_TIMEOUT.total_seconds() + HARD_LIMIT_GRACE_S  # kills a hung `stubborn`
# Beyond lease + sweep interval: the step's retry backoff (QUICK_RETRY: 0.2 s), the sweep
# that fires it, the publish and the claim, on a busy two-core machine.
SLACK_S = 2.0
# A worker started after the fault: its fresh children connect to the database and the
# demo services on their first task.
COLD_START_S = 1.5
HOLD = {"SAGA_TEST_HOLD": "1"}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_modules(SAGAS.split(","))


@pytest.fixture
def stack(database_url: str, broker_url: str, tmp_path: Path) -> Any:
    """The processes of one test, loading the test sagas too; all killed at the end."""
    with Stack(database_url, broker_url, tmp_path, sagas=SAGAS) as running:
        try:
            yield running
        finally:
            # The test is over: nothing is left to shut down gracefully, or to wait for.
            for process in running.processes:
                for sig in (signal.SIGKILL, signal.SIGCONT):
                    try:
                        os.killpg(process.pid, sig)
                    except ProcessLookupError:
                        pass


# -- helpers ------------------------------------------------------------------------------

def start(stack: Stack, *workers: dict[str, Any], sweepers: int = 1) -> list[Any]:
    """Sweepers, then the API starting while the workers start (one after another, as
    their log names must differ); returns the workers once every process is ready."""
    for _ in range(sweepers):
        stack.sweeper()
    with ThreadPoolExecutor(1) as pool:
        api = pool.submit(stack.api)
        started = [stack.worker(**options) for options in workers]
        api.result()
    return started


def broker(stack: Stack) -> str:
    return stack.broker_url.split(":", 1)[0].replace("amqp", "rabbitmq")


def new_order() -> str:
    return f"o-{uuid.uuid4().hex[:8]}"


def events(stack: Stack, run_id: str, step: str | None = None,
           type: str | None = None) -> list[Any]:
    sql = ("SELECT id, at, type, step, role, attempt, worker, data FROM events "
           "WHERE run_id = :r")
    if step is not None:
        sql += " AND step = :s"
    if type is not None:
        sql += " AND type = :t"
    return stack.query(sql + " ORDER BY id", r=run_id, s=step, t=type)


def step_history(stack: Stack, run_id: str, step: str) -> list[Any]:
    """The `step.*` events of one forward step, oldest first."""
    return [e for e in events(stack, run_id, step) if e.type.startswith("step.")]


def lease_failure(stack: Stack, run_id: str, step: str) -> Any:
    """The event of the sweeper failing an attempt whose lease ran out, if there is one."""
    return next((e for e in step_history(stack, run_id, step)
                 if "no heartbeat within the lease" in (e.data or {}).get("error", "")), None)


def rerun_event(stack: Stack, run_id: str, step: str, attempt: int) -> Any:
    """The `step.running` event of one attempt, once it exists."""
    return wait_for(lambda: next((e for e in events(stack, run_id, step, "step.running")
                                  if e.attempt == attempt), None),
                    30, f"attempt {attempt} of {step} to start")


def step_of(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["name"] == name)


def started_pid(stack: Stack, run_id: str, step: str, attempt: int) -> int:
    path = stack.folder / f"started-{run_id}-{step}-{attempt}"
    wait_for(path.exists, 30, f"attempt {attempt} of {step} to start in a worker child")
    return int(path.read_text())


def executions(stack: Stack, key: str) -> list[str]:
    """Lines of the non-idempotent execution log for one idempotency key."""
    path = stack.folder / EXECUTIONS
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if line.split(" ", 1)[0] == key]


def mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_group(process: Any, sig: int) -> None:
    os.killpg(process.pid, sig)


def queue_depth(stack: Stack) -> int:
    """Messages ready in the stack's queue (Redis drops an empty list: no queue is none)."""
    from kombu import Connection
    from kombu.exceptions import ChannelError

    with Connection(stack.broker_url, connect_timeout=3) as conn:
        try:
            return conn.default_channel.queue_declare(stack.queue, passive=True).message_count
        except ChannelError:
            if broker(stack) == "redis":
                return 0
            raise


def report(what: str, seconds: float, bound: float) -> str:
    line = f"RECOVERY {what}: {seconds:.2f}s (bound {bound:.2f}s)"
    print(line)
    return line


def effects_by_key(stack: Stack, order_id: str) -> Counter:
    return Counter(key for _, key in stack.effects(order_id))


# -- 1. a worker child killed mid-step ---------------------------------------------------

# Where a worker child SIGKILLs itself, once each: before the effect, after the effect but
# before the commit, and inside the commit (the run row locked, the transaction open).
CRASHES = {"before_effect": "reserve_inventory", "after_effect": "charge_card",
           "before_commit": "create_shipment"}


def test_children_killed_before_after_and_during_a_commit_are_retried_after_their_leases(
        stack: Stack, registry: Registry) -> None:
    """Given a worker whose child SIGKILLs itself once at each point of CRASHES (before
    reserve_inventory's effect, after charge_card's effect, inside create_shipment's commit),
    when three orders are placed at once,
    then each killed attempt is retried only once its lease has expired, within lease +
    sweep interval + slack of the crash, every order succeeds with each killed step on its
    second attempt (every other step on its first), and every effect is applied once."""
    faults = ",".join(f"{point}:{step}:once" for point, step in CRASHES.items())
    [worker] = start(stack, dict(concurrency=2, env={"SAGA_FAULTS": faults}))
    run_ids = [stack.post_order() for _ in range(3)]
    runs = {run_id: stack.wait_terminal(run_id, 45) for run_id in run_ids}
    assert all(run["status"] == "succeeded" for run in runs.values()), runs
    assert worker.alive(), "the pool replaces a killed child; the worker itself stays up"

    for point, step in CRASHES.items():
        marker = stack.folder / f"fault-{point}-{step}"
        assert marker.exists(), f"no child crashed at {point} of {step}"
        crashed_at = mtime(marker)
        attempts = {run_id: step_of(run, step)["attempts"] for run_id, run in runs.items()}
        [run_id] = [r for r, n in attempts.items() if n == 2]
        assert sorted(attempts.values()) == [1, 1, 2], (step, attempts)
        first = rerun_event(stack, run_id, step, 1)
        retried = rerun_event(stack, run_id, step, 2)
        held = (retried.at - first.at).total_seconds()
        assert held >= LEASE_S, f"{step} retried {held:.2f}s after its claim, before its lease"
        assert [(e.type, e.attempt) for e in step_history(stack, run_id, step)
                if e.type == "step.succeeded"] == [("step.succeeded", 2)]
        # The sweeper fails the attempt (retry_wait, QUICK_RETRY's backoff), then fires the
        # retry; a requeued delivery of the killed task can no longer claim the step itself.
        failed = lease_failure(stack, run_id, step)
        assert failed is not None and failed.type == "step.retry_wait" and failed.attempt == 1, \
            failed
        assert first.id < failed.id < retried.id
        detected = (failed.at - crashed_at).total_seconds()
        assert detected <= LEASE_S + SWEEP_S + SLACK_S, f"{step}: noticed after {detected:.2f}s"
        how = f"the sweeper failed the attempt after {detected:.2f}s"
        recovery = (retried.at - crashed_at).total_seconds()
        bound = LEASE_S + SWEEP_S + SLACK_S
        what = f"[{broker(stack)}] child killed {point} of {step} ({how})"
        assert recovery <= bound, report(what, recovery, bound)
        report(what, recovery, bound)

    for run in runs.values():
        effects = stack.effects(run["input"]["order_id"])
        assert [action for action, _ in effects] == ["reserve", "charge", "ship"], effects
    invariants.check(stack, run_ids, registry)


def test_redelivery_after_a_dead_workers_lease_expired_respects_on_timeout_park(
        stack: Stack) -> None:
    """Given a step with on_timeout="park" whose worker child died mid-attempt, and no
    sweeper running yet,
    when its lease has expired and a delivery of its message arrives (as Celery's requeue
    of a lost task, or a duplicate, can), and then a sweeper starts,
    then the attempt counts as timed out and the run is parked for a person: the late
    delivery must not run the step again."""
    [worker] = start(stack, dict(concurrency=1), sweepers=0)
    run_id = stack.post_run("die_then_park", {"order_id": new_order()})
    started_pid(stack, run_id, "fragile", 1)
    wait_for(lambda: stack.query(
        "SELECT 1 FROM steps WHERE run_id = :r AND name = 'fragile' AND status = 'running' "
        "AND lease_expires_at < clock_timestamp()", r=run_id), 15, "the dead child's lease to expire")
    late = stack.celery().send_task("saga.step", args=[run_id, "fragile", "die_then_park", 1],
                                    queue=stack.queue)
    wait_for(lambda: f"saga.step[{late.id}] succeeded" in worker.output(), 15,
             "the worker to handle the late delivery")
    stack.sweeper()

    def settled() -> dict[str, Any] | None:
        found = stack.run(run_id)
        return found if found["parked"] or found["status"] != "running" else None

    run = wait_for(settled, 15, "the run to be parked or to end")
    fragile = step_of(run, "fragile")
    assert (fragile["status"], fragile["attempts"]) == ("parked", 1), (run, fragile)
    assert events(stack, run_id, "fragile", "alert.timeout")


# -- 2. the whole worker killed while it holds messages -------------------------------------

def test_whole_worker_killed_holding_messages_is_replaced_and_every_run_finishes(
        stack: Stack, registry: Registry) -> None:
    """Given a worker (concurrency 2) whose two children are mid-step on two of six runs,
    with the other four runs' messages queued behind them,
    when the whole worker (parent and children) is SIGKILLed and a new worker started,
    then every run succeeds, the two killed steps on their second attempt, every effect
    applied once, and the killed attempts never reached their effect."""
    [doomed] = start(stack, dict(concurrency=2, env=HOLD))
    orders = {stack.post_run("held_order", {"order_id": o}): o
              for o in [new_order() for _ in range(6)]}
    run_ids = list(orders)

    def both_children_held() -> list[str] | None:
        rows = stack.query("SELECT run_id FROM steps WHERE run_id = ANY(:ids) AND name = 'hold' "
                           "AND status = 'running'", ids=run_ids)
        return [r.run_id for r in rows] if len(rows) == 2 else None

    held = wait_for(both_children_held, 30, "both worker children to hold a step")
    for run_id in held:
        started_pid(stack, run_id, "hold", 1)
    waiting = queue_depth(stack)
    kill_group(doomed, signal.SIGKILL)
    doomed.popen.wait(10)
    killed_at = datetime.now(UTC)
    print(f"[{broker(stack)}] worker killed holding 2 messages, {waiting} ready in the broker")
    stack.worker(concurrency=2)
    ready_at = datetime.now(UTC)

    finished = {run_id: stack.wait_terminal(run_id, 30) for run_id in run_ids}
    drained = (datetime.now(UTC) - killed_at).total_seconds()
    for run_id, run in finished.items():
        assert run["status"] == "succeeded", run
        expected = 2 if run_id in held else 1
        assert step_of(run, "hold")["attempts"] == expected, (run_id in held, run["steps"])
        key = f"{run_id}:hold:forward"
        assert len(executions(stack, key)) == 1, executions(stack, key)
        assert set(effects_by_key(stack, orders[run_id]).values()) == {1}
    for run_id in held:
        retried = rerun_event(stack, run_id, "hold", 2)
        since_kill = (retried.at - killed_at).total_seconds()
        since_ready = (retried.at - ready_at).total_seconds()
        bound = (max(HOLD_LEASE_S + SWEEP_S, (ready_at - killed_at).total_seconds())
                 + SLACK_S + COLD_START_S)
        assert since_kill <= bound, report(f"[{broker(stack)}] whole worker killed",
                                           since_kill, bound)
        report(f"[{broker(stack)}] whole worker killed (new worker ready after "
               f"{(ready_at - killed_at).total_seconds():.2f}s, then {since_ready:.2f}s)",
               since_kill, bound)
    print(f"[{broker(stack)}] all 6 runs finished {drained:.2f}s after the kill")
    invariants.check(stack, run_ids, registry)


# -- 3 and 4b. a worker frozen past its lease ------------------------------------------------

@pytest.mark.parametrize("frozen", ["worker", "child"])
def test_worker_frozen_past_its_lease_is_superseded_and_cannot_commit(
        stack: Stack, frozen: str, registry: Registry) -> None:
    """Given a step mid-attempt in a worker child,
    when that worker's process group (or only the child) is SIGSTOPped past the step's
    lease, another worker (or child) takes the step over and finishes the run, and then
    the frozen one gets SIGCONT,
    then the lease expiry failed the frozen attempt and the sweeper retried it within
    lease + sweep interval + slack, the woken attempt commits nothing (a `step.superseded`
    event records its discarded result), the step succeeded once, and its effect ran once."""
    if frozen == "worker":
        workers = start(stack, dict(concurrency=1, env=HOLD), dict(concurrency=1, env=HOLD))
    else:
        workers = start(stack, dict(concurrency=2, env=HOLD))
    order_id = new_order()
    run_id = stack.post_run("held_order", {"order_id": order_id})
    pid = started_pid(stack, run_id, "hold", 1)
    owner = next(w for w in workers if pid in w.children())
    stopped = False
    try:
        if frozen == "worker":
            kill_group(owner, signal.SIGSTOP)
        else:
            os.kill(pid, signal.SIGSTOP)
        stopped = True
        stopped_at = datetime.now(UTC)
        run = stack.wait_terminal(run_id, 30)
        assert run["status"] == "succeeded", run
        assert step_of(run, "hold")["attempts"] == 2
        (stack.folder / "release").touch()
    finally:
        if stopped:
            if frozen == "worker":
                kill_group(owner, signal.SIGCONT)
            else:
                os.kill(pid, signal.SIGCONT)

    superseded = wait_for(lambda: events(stack, run_id, "hold", "step.superseded"), 15,
                          "the woken attempt to report its discarded result")
    assert len(superseded) == 1, superseded
    assert superseded[0].worker.endswith(f"/{pid}"), superseded[0].worker
    assert superseded[0].data == {"fence": 1, "current_fence": 2, "outcome": "failed"}
    # The frozen worker still holds its delivery: only the sweeper could fail the attempt.
    first = rerun_event(stack, run_id, "hold", 1)
    failed = lease_failure(stack, run_id, "hold")
    retried = rerun_event(stack, run_id, "hold", 2)
    [succeeded] = [e for e in step_history(stack, run_id, "hold") if e.type == "step.succeeded"]
    assert failed is not None and failed.attempt == 1, step_history(stack, run_id, "hold")
    assert first.id < failed.id < retried.id < succeeded.id < superseded[0].id
    assert succeeded.attempt == 2
    run = stack.run(run_id)
    assert run["status"] == "succeeded" and step_of(run, "hold")["attempts"] == 2, run
    # The frozen attempt stopped at its heartbeat check: its effect code never ran.
    assert [line.split()[1] for line in executions(stack, f"{run_id}:hold:forward")] == [
        "attempt=2"]
    assert [a for a, _ in stack.effects(order_id)] == ["reserve", "charge", "ship"]

    recovery = (retried.at - stopped_at).total_seconds()
    bound = HOLD_LEASE_S + SWEEP_S + SLACK_S
    assert recovery <= bound, report(f"[{broker(stack)}] {frozen} frozen", recovery, bound)
    report(f"[{broker(stack)}] {frozen} frozen", recovery, bound)
    assert all(w.alive() for w in workers)
    invariants.check(stack, [run_id], registry)


# -- 4. hard limit, park ---------------------------------------------------------------------

def test_step_hanging_past_its_hard_limit_is_killed_and_counted_per_policy(
        stack: Stack, registry: Registry) -> None:
    """Given two runs whose `stubborn` step (timeout 3 s) swallows its soft time limit and
    hangs, one with on_timeout="retry" and one with on_timeout="compensate",
    when the hard limit (timeout + 5 s) kills the worker child,
    then each attempt is counted as failed once its lease expires: the first run retries
    the step and succeeds on attempt 2, the second fails the step and is compensated."""
    [worker] = start(stack, dict(concurrency=2))
    orders = {stack.post_run(saga, {"order_id": o}): o
              for saga, o in (("hang_then_retry", new_order()),
                              ("hang_then_compensate", new_order()))}
    retried_id, compensated_id = orders
    pids = {run_id: started_pid(stack, run_id, "stubborn", 1) for run_id in orders}

    retried = stack.wait_terminal(retried_id, 30)
    compensated = stack.wait_terminal(compensated_id, 30)
    assert retried["status"] == "succeeded", retried
    assert step_of(retried, "stubborn")["attempts"] == 2
    assert compensated["status"] == "compensated", compensated
    stubborn = step_of(compensated, "stubborn")
    assert stubborn["status"] == "failed" and stubborn["attempts"] == 1, stubborn
    assert "no heartbeat within the lease" in stubborn["error"]
    assert [c["name"] for c in compensated["compensations"]] == ["reserve"]

    for run_id, pid in pids.items():
        assert (stack.folder / f"soft-limit-{run_id}").exists(), "the soft limit never fired"
        wait_for(lambda pid=pid: not pid_alive(pid), 10, f"child {pid} to be gone")
        first = rerun_event(stack, run_id, "stubborn", 1)
        failed = next(e for e in events(stack, run_id, "stubborn")
                      if e.type in ("step.queued", "step.failed") and e.attempt == 1)
        took = (failed.at - first.at).total_seconds()
        bound = HARD_LIMIT_S + HOLD_LEASE_S + SWEEP_S + SLACK_S
        report(f"[{broker(stack)}] hung step killed, attempt failed", took, bound)
        assert HARD_LIMIT_S <= took <= bound, took
        assert len(executions(stack, f"{run_id}:stubborn:forward")) == (
            1 if run_id == retried_id else 0)
    assert worker.output().count(f"Hard time limit ({HARD_LIMIT_S}s) exceeded") == 2
    assert [a for a, _ in stack.effects(orders[retried_id])] == ["reserve", "charge"]
    assert [a for a, _ in stack.effects(orders[compensated_id])] == ["reserve", "release"]
    invariants.check(stack, list(orders), registry)


def test_step_parked_on_timeout_holds_the_run_until_it_is_retried(
        stack: Stack, registry: Registry) -> None:
    """Given a step with on_timeout="park" whose first attempt overruns its 3 s limit,
    when it times out, then the run is parked: still running, flagged with a reason naming
    the step, nothing compensated and nothing left to dispatch; when
    `POST /v1/runs/<id>/retry` is called, the step runs again with a fresh attempt budget
    and the run succeeds, each effect applied once."""
    start(stack, dict(concurrency=1), sweepers=0)
    order_id = new_order()
    run_id = stack.post_run("park_on_timeout", {"order_id": order_id})

    run = wait_for(lambda: (found := stack.run(run_id))["parked"] and found, 30,
                   "the run to be parked")
    assert run["status"] == "running", run
    assert "'slow_once' parked after a timeout" in run["parked"], run["parked"]
    parked = step_of(run, "slow_once")
    assert parked["status"] == "parked" and parked["attempts"] == 1, parked
    assert run["compensations"] == []
    assert not stack.query("SELECT name FROM steps WHERE run_id = :r AND status IN "
                           "('queued', 'running', 'retry_wait')", r=run_id)
    assert [a for a, _ in stack.effects(order_id)] == ["reserve"]
    assert events(stack, run_id, "slow_once", "alert.parked")
    assert events(stack, run_id, type="run.parked")

    response = stack.http.post(f"{stack.base}/v1/runs/{run_id}/retry", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "running" and not response.json()["parked"]
    run = stack.wait_terminal(run_id, 30)
    assert run["status"] == "succeeded", run
    assert step_of(run, "slow_once")["attempts"] == 1  # a fresh budget after the retry
    assert [e.attempt for e in events(stack, run_id, "slow_once", "step.running")] == [1, 1]
    assert [a for a, _ in stack.effects(order_id)] == ["reserve", "charge"]
    invariants.check(stack, [run_id], registry)


# -- 5. a poison step ----------------------------------------------------------------------

def test_poison_step_killing_its_worker_is_capped_at_its_attempts_then_compensated(
        stack: Stack, registry: Registry) -> None:
    """Given a step that SIGKILLs its worker child on every attempt, Retry(attempts=3),
    when a run reaches it,
    then it is claimed exactly three times, the run is compensated within a bounded time
    (three leases plus sweeps), the message is not redelivered forever and the worker
    itself stays up."""
    [worker] = start(stack, dict(concurrency=2))
    order_id = new_order()
    started = time.monotonic()
    run_id = stack.post_run("poison_pill", {"order_id": order_id})

    run = stack.wait_terminal(run_id, 30)
    took = time.monotonic() - started
    bound = 3 * (1.0 + SWEEP_S + SLACK_S)
    report(f"[{broker(stack)}] poison step capped, run compensated", took, bound)
    assert took <= bound
    assert run["status"] == "compensated", run
    poison = step_of(run, "poison")
    assert poison["status"] == "failed" and poison["attempts"] == 3, poison
    assert [e.attempt for e in events(stack, run_id, "poison", "step.running")] == [1, 2, 3]
    assert [a for a, _ in stack.effects(order_id)] == ["reserve", "release"]
    for attempt in (1, 2, 3):
        assert (stack.folder / f"started-{run_id}-poison-{attempt}").exists()

    # Every delivery left is dropped at the claim: the queue drains and no 4th attempt starts.
    wait_for(lambda: queue_depth(stack) == 0, 15, "the queue to drain")
    wait_for(lambda: worker.output().count("exited with 'signal 9 (SIGKILL)'") >= 3, 10,
             "the worker to log its three lost children")
    assert worker.output().count("exited with 'signal 9 (SIGKILL)'") == 3
    assert not (stack.folder / f"started-{run_id}-poison-4").exists()
    assert worker.alive()
    invariants.check(stack, [run_id], registry)


# -- 7. two sweepers racing --------------------------------------------------------------

SWEEP_LINE = re.compile(r"sweep: Sweep\(([^)]*)\)")


def sweeper_totals(process: Any) -> Counter:
    """What one sweeper says it did, summed over its `sweep: Sweep(name=n, ...)` log lines."""
    totals: Counter = Counter()
    for match in SWEEP_LINE.finditer(process.output()):
        for name, number in re.findall(r"(\w+)=(\d+)", match.group(1)):
            totals[name] += int(number)
    return totals


def test_two_sweepers_racing_fire_each_retry_and_expire_each_lease_once(
        stack: Stack, registry: Registry) -> None:
    """Given two sweepers, and eight runs whose first step fails at once (their retries
    fall due together) and whose `hold` step is then held by a worker of concurrency 2,
    when that worker is SIGKILLed whole (both leases expire together, their retries then
    fall due together) and another worker takes over,
    then every run succeeds, no step commits twice, every effect applies once, and each
    retry was fired exactly once: one `step.queued` per `step.retry_wait`, and the
    sweepers' own counts add up to exactly the retries and lease expiries recorded."""
    [doomed] = start(stack, dict(concurrency=2, env=HOLD), sweepers=2)
    sweepers = [p for p in stack.processes if p.name == "sweeper"]
    orders = {stack.post_run("retry_storm", {"order_id": o}): o
              for o in [new_order() for _ in range(8)]}
    run_ids = list(orders)

    def both_held() -> list[str] | None:
        rows = stack.query("SELECT run_id FROM steps WHERE run_id = ANY(:ids) AND name = 'hold' "
                           "AND status = 'running'", ids=run_ids)
        return [r.run_id for r in rows] if len(rows) == 2 else None

    held = wait_for(both_held, 30, "both worker children to hold a step")
    for run_id in held:
        started_pid(stack, run_id, "hold", 1)
    kill_group(doomed, signal.SIGKILL)
    doomed.popen.wait(10)
    killed_at = datetime.now(UTC)
    # Both sweepers find the two expired leases due at once; no worker is there yet.
    wait_for(lambda: not stack.query("SELECT 1 FROM steps WHERE run_id = ANY(:ids) AND "
                                     "status = 'running'", ids=run_ids),
             15, "the sweepers to expire the dead worker's leases")
    stack.worker(concurrency=2)

    finished = {run_id: stack.wait_terminal(run_id, 45) for run_id in run_ids}
    assert all(run["status"] == "succeeded" for run in finished.values()), finished
    for run_id in run_ids:
        assert step_of(finished[run_id], "tick")["attempts"] == 2
        assert step_of(finished[run_id], "hold")["attempts"] == (2 if run_id in held else 1)
        for step in ("tick", "reserve", "hold"):
            history = [e.type for e in step_history(stack, run_id, step)]
            # Each wait ends in one firing: one `step.queued`, then the claim.
            fired = [history[i + 1:i + 3] for i, t in enumerate(history) if t == "step.retry_wait"]
            assert all(f == ["step.queued", "step.running"] for f in fired), (run_id, step, history)
            assert history.count("step.succeeded") == 1, (run_id, step, history)
        assert len(executions(stack, f"{run_id}:hold:forward")) == 1
        assert set(effects_by_key(stack, orders[run_id]).values()) == {1}

    retry_waits = stack.query("SELECT count(*) FROM events WHERE run_id = ANY(:ids) "
                              "AND type = 'step.retry_wait'", ids=run_ids)[0][0]
    lease_failures = stack.query("SELECT count(*) FROM events WHERE run_id = ANY(:ids) "
                                 "AND type = 'step.retry_wait' "
                                 "AND data->>'error' LIKE 'no heartbeat within the lease%'",
                                 ids=run_ids)[0][0]
    assert retry_waits == len(run_ids) + len(held) and lease_failures == len(held)

    def counted() -> list[Counter] | None:
        totals = [sweeper_totals(s) for s in sweepers]
        fired = sum(t["retries_fired"] for t in totals)
        expired = sum(t["leases_expired"] for t in totals)
        return totals if fired >= retry_waits and expired >= lease_failures else None

    totals = wait_for(counted, 10, "the sweepers' logs to count every retry and expiry")
    for number, total in enumerate(totals, 1):
        print(f"[{broker(stack)}] sweeper {number}: {dict(total)}")
    assert sum(t["retries_fired"] for t in totals) == retry_waits, totals
    assert sum(t["leases_expired"] for t in totals) == lease_failures, totals
    assert all(s.alive() for s in sweepers)
    for run_id in held:  # I7: the dead worker's leases were expired within lease + sweep
        failed = lease_failure(stack, run_id, "hold")
        expired = (failed.at - killed_at).total_seconds()
        bound = HOLD_LEASE_S + SWEEP_S + SLACK_S
        assert expired <= bound, report(f"[{broker(stack)}] racing sweepers, lease expired",
                                        expired, bound)
        report(f"[{broker(stack)}] racing sweepers, dead worker's lease expired", expired, bound)
    invariants.check(stack, run_ids, registry)
