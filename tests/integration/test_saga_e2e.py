"""The saga core end to end: real PostgreSQL, a real broker (RabbitMQ and Redis), real processes."""

from __future__ import annotations

import signal
from collections import Counter

from tests.stack import Stack, wait_for


def _effect_actions(stack: Stack, order_id: str) -> list[str]:
    return [action for action, _ in stack.effects(order_id)]


def _order_id(stack: Stack, run_id: str) -> str:
    return stack.run(run_id)["input"]["order_id"]


def test_order_succeeds_and_applies_each_effect_once(stack: Stack) -> None:
    """Given the API and a worker, when an order is placed, then it ships once, charged once."""
    stack.api()
    stack.worker()
    run_id = stack.post_order()
    run = stack.wait_terminal(run_id)
    assert run["status"] == "succeeded", run
    assert [s["status"] for s in run["steps"]] == ["succeeded"] * 5
    assert run["compensations"] == []
    assert _effect_actions(stack, _order_id(stack, run_id)) == ["reserve", "charge", "ship"]


def test_declined_card_releases_inventory(stack: Stack) -> None:
    """Given a declined card, the charge fails without retry and the reservation is released."""
    stack.api()
    stack.worker()
    run_id = stack.post_order(card="declined")
    run = stack.wait_terminal(run_id)
    assert run["status"] == "compensated", run
    charge = next(s for s in run["steps"] if s["name"] == "charge_card")
    assert charge["status"] == "failed" and charge["attempts"] == 1
    assert _effect_actions(stack, _order_id(stack, run_id)) == ["reserve", "release"]


def test_failed_shipment_refunds_then_releases(stack: Stack) -> None:
    """Given an undeliverable address, the card is refunded, then the inventory released."""
    stack.api()
    stack.worker()
    run_id = stack.post_order(address="nowhere")
    run = stack.wait_terminal(run_id)
    assert run["status"] == "compensated", run
    assert _effect_actions(stack, _order_id(stack, run_id)) == ["reserve", "charge", "refund",
                                                                 "release"]
    undone = {c["name"]: c for c in run["compensations"]}
    assert undone["charge_card"]["finished_at"] <= undone["reserve_inventory"]["started_at"]


def test_flaky_card_is_retried_until_it_succeeds(stack: Stack) -> None:
    """Given a card failing twice, the charge takes three attempts and charges once."""
    stack.api()
    stack.worker()
    stack.sweeper()  # fires the retries when their backoff is over
    run_id = stack.post_order(card="flaky")
    run = stack.wait_terminal(run_id)
    assert run["status"] == "succeeded", run
    charge = next(s for s in run["steps"] if s["name"] == "charge_card")
    assert charge["attempts"] == 3
    assert Counter(_effect_actions(stack, _order_id(stack, run_id)))["charge"] == 1


def test_parallel_members_finishing_together_join_once(stack: Stack) -> None:
    """Given two parallel steps that finish at the same moment, the join step runs once."""
    stack.api()
    stack.worker(concurrency=2)
    response = stack.post_run("barrier", {})
    run = stack.wait_terminal(response)
    assert run["status"] == "succeeded", run
    join = next(s for s in run["steps"] if s["name"] == "join")
    assert join["attempts"] == 1 and join["output"] == {"saw": ["left", "right"]}
    # Queued once (by whichever member finished last) and so started once.
    started = stack.query("SELECT count(*) FROM events WHERE run_id = :r AND step = 'join' "
                          "AND type = 'step.running'", r=response)
    assert started[0][0] == 1


def test_duplicate_step_messages_apply_the_effect_once(stack: Stack) -> None:
    """Given a step message published three times before any worker runs, one attempt wins."""
    stack.api()
    run_id = stack.post_order()
    app = stack.celery()
    for _ in range(2):
        app.send_task("saga.step", args=[run_id, "validate_order", "order_fulfillment", 1],
                      queue=stack.queue)
    worker = stack.worker()
    run = stack.wait_terminal(run_id)
    assert run["status"] == "succeeded"
    # The duplicates of the later steps are published once the earlier step is done.
    for _ in range(2):
        app.send_task("saga.step", args=[run_id, "reserve_inventory", "order_fulfillment", 1],
                      queue=stack.queue)
        app.send_task("saga.compensate",
                      args=[run_id, "reserve_inventory", "order_fulfillment", 1],
                      queue=stack.queue)
    wait_for(lambda: worker.output().count("'dropped'") == 6, 30,
             "the worker to drop all six duplicate messages")
    run = stack.run(run_id)
    assert all(s["attempts"] == 1 for s in run["steps"]), run["steps"]
    assert run["compensations"] == []
    assert _effect_actions(stack, _order_id(stack, run_id)) == ["reserve", "charge", "ship"]


def test_worker_killed_between_commit_and_publish_is_finished_by_the_sweeper(stack: Stack) -> None:
    """Given a worker that dies right after committing a step, the sweeper publishes the next."""
    stack.api()
    worker = stack.worker(env={"SAGA_FAULTS": "after_commit:reserve_inventory:once"})
    run_id = stack.post_order()
    wait_for(lambda: (stack.folder / "fault-after_commit-reserve_inventory").exists(), 30,
             "the worker child to crash after its commit")
    assert worker.alive(), "the pool replaces a killed child; the worker itself stays up"
    charge = wait_for(lambda: next((s for s in stack.run(run_id)["steps"]
                                    if s["name"] == "charge_card"), None), 10,
                      "charge_card to be recorded")
    # Committed, but never run: queued with its message lost, or taken by the dead worker
    # to run inline, its lease running out.
    assert charge["status"] in ("queued", "running") and charge["finished_at"] is None
    stack.sweeper()
    run = stack.wait_terminal(run_id)
    assert run["status"] == "succeeded", run
    assert _effect_actions(stack, _order_id(stack, run_id)) == ["reserve", "charge", "ship"]


def test_whole_worker_killed_then_replaced_resumes_the_run(stack: Stack) -> None:
    """Given the worker SIGKILLed mid-run, a new worker and the sweeper finish the run."""
    stack.api()
    worker = stack.worker(env={"SAGA_FAULTS": "before_effect:charge_card:once"})
    run_id = stack.post_order()
    wait_for(lambda: (stack.folder / "fault-before_effect-charge_card").exists(), 30,
             "the charge attempt to crash")
    worker.signal(signal.SIGKILL)
    stack.worker()
    stack.sweeper()
    run = stack.wait_terminal(run_id)
    assert run["status"] == "succeeded", run
    charge = next(s for s in run["steps"] if s["name"] == "charge_card")
    assert charge["attempts"] == 2
    assert _effect_actions(stack, _order_id(stack, run_id)) == ["reserve", "charge", "ship"]


def test_remote_task_step_runs_on_another_services_worker(database_url, broker_url, tmp_path):
    """Given a step naming another service's Celery task, its result becomes the output."""
    backend = "redis://127.0.0.1:6379/1"
    with Stack(database_url, broker_url, tmp_path) as stack:
        remote_queue = f"{stack.queue}-remote"
        stack.other_queues.append(remote_queue)
        stack.env.update(SAGA_RESULT_BACKEND=backend, SAGA_TEST_REMOTE_QUEUE=remote_queue)
        stack.api()
        stack.worker()
        service = stack.start_process("remote", [
            "-m", "celery", "-A", "tests.remote_service", "worker", "-Q", remote_queue,
            "-c", "1", "--without-gossip", "--without-mingle", "--loglevel=INFO",
            "-n", f"remote-{stack.queue}@%h"])
        wait_for(lambda: " ready." in service.output(), 60, "the remote service's worker")
        run_id = stack.post_run("remote", {"n": 21})
        run = stack.wait_terminal(run_id)
        assert run["status"] == "succeeded", run
        double = next(s for s in run["steps"] if s["name"] == "double")
        assert double["output"] == {"doubled": 42, "key": f"{run_id}:double:forward"}
