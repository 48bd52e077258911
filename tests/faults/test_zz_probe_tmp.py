from tests.faults.test_worker_faults import *  # noqa

def test_probe(stack, registry):
    [worker] = start(stack, dict(concurrency=1), sweepers=0)
    order_id = new_order()
    run_id = stack.post_run("die_then_park", {"order_id": order_id})
    started_pid(stack, run_id, "fragile", 1)
    wait_for(lambda: stack.query("SELECT 1 FROM steps WHERE run_id = :r AND name = 'fragile' AND status = 'running' AND lease_expires_at < clock_timestamp()", r=run_id), 10, "lease to expire")
    stack.celery().send_task("saga.step", args=[run_id, "fragile", "die_then_park", 1], queue=stack.queue)
    stack.sweeper()
    time.sleep(5)
    run = stack.run(run_id)
    print(run["status"], run["parked"], step_of(run, "fragile"))
    for e in events(stack, run_id):
        print(e.type, e.step, e.attempt, e.data)
