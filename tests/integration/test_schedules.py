"""Schedules and backfills against real PostgreSQL: firings start once, catch-up, backfills.

The broker is Kombu's in-memory transport: starting a run only publishes, and where a
run must finish the test runs its step in-process with `Engine.run_step`. Time moves by
the injectable clock (`Stack.advance_clock`) or by an explicit `now`; nothing sleeps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from saga import NonRetryable, Saga, Step
from saga.api import create_app
from saga.cli import main
from saga.registry import Registry
from saga.run import Role
from saga.schedules.cron import Schedule, iso, schedule_key
from saga.schedules.firing import CLAIM_S
from saga.settings import Settings
from saga.system import System, build
from saga.testing.clock import ShiftedClock
from tests.auth import authorize, create_token
from tests.stack import Stack, wait_for

MODULE = __name__  # SAGA_SAGAS for the CLI: the sagas below


def work(ctx):
    return {"logical_time": ctx.input.get("logical_time") if isinstance(ctx.input, dict) else None}


def scheduled_saga(name: str, schedule: Schedule) -> Saga:
    return Saga(name, steps=[Step("work", work)], schedule=schedule)


nightly = scheduled_saga("nightly", Schedule("0 3 * * *", "Europe/Paris", catch_up="latest"))
minutely = scheduled_saga("minutely", Schedule("* * * * *", catch_up="all"))  # real sweepers
reindex = Saga("reindex", steps=[Step("work", work)])  # event-driven: no schedule


def report(ctx):
    if ctx.input["logical_time"] == "2024-03-29T02:00:00Z":
        raise NonRetryable("the source was down")
    return work(ctx)


def unsend(ctx):
    raise NonRetryable("the report was mailed already")


# Nightly, and its run of March 29 fails for good (the compensation gives up): a run `failed`.
mailed = Saga("mailed", steps=[Step("report", report, compensate=unsend)],
              schedule=Schedule("0 3 * * *", "Europe/Paris"))
EVERY_10 = {policy: scheduled_saga(f"every10_{policy}", Schedule("*/10 * * * *", catch_up=policy))
            for policy in ("skip", "latest", "all")}


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture
def clock(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    """Only the stack's injectable clock: `clock.advance_clock(seconds)`."""
    with Stack(database_url, "memory://", tmp_path) as stack:
        yield stack


def make_settings(database_url: str, **more) -> Settings:
    return Settings(database_url=database_url, broker_url="memory://", **more)


def make_system(database_url: str, registry: Registry, clock: Stack | None = None,
                **more) -> System:
    """A system whose clock is the stack's injectable one (moved by `advance_clock`)."""
    shifted = ShiftedClock(clock.env["SAGA_TEST_CLOCK_FILE"]) if clock else None
    return build(make_settings(database_url, **more), registry, clock=shifted)


@pytest.fixture
def systems(database_url: str, clock: Stack) -> Iterator[list[System]]:
    """Two systems on one database, each with its own connections: two sweepers."""
    registry = Registry([nightly, reindex, mailed, *EVERY_10.values()])
    built = [make_system(database_url, registry, clock) for _ in range(2)]
    yield built
    for system in built:
        system.store.close()


@pytest.fixture
def system(systems: list[System]) -> System:
    return systems[0]


def query(system: System, sql: str, **params) -> list:
    with system.store.engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def runs_of(system: System, saga_name: str) -> list:
    return query(system, "SELECT id, idempotency_key, input, status FROM runs WHERE saga = :s "
                         "ORDER BY idempotency_key", s=saga_name)


def next_fire_at(system: System, saga_name: str) -> datetime:
    [(at,)] = query(system, "SELECT next_fire_at FROM schedules WHERE saga = :s", s=saga_name)
    return at.astimezone(UTC)


def move_clock_to(system: System, clock: Stack, target: datetime) -> None:
    """Advance the injectable clock so that the store's now() is `target`."""
    clock.advance_clock((target - system.store.now()).total_seconds())


def finish(system: System, run_id: str, saga_name: str) -> None:
    system.worker.run_step(run_id, "work", Role.FORWARD, saga_name, 1, worker="test")


# -- schedules ---------------------------------------------------------------------------

def test_a_new_schedule_starts_from_now_without_history(system: System):
    """Given a saga never scheduled before, When a sweep sees it, Then nothing from the past fires."""
    now = system.store.now()
    assert system.scheduler.fire() == []
    assert runs_of(system, "nightly") == []
    assert next_fire_at(system, "nightly") == nightly.schedule.next_after(now)


def test_a_due_firing_starts_one_run_keyed_by_its_logical_time(system: System, clock: Stack):
    """Given a schedule, When the clock passes its firing, Then one run with that logical time."""
    system.scheduler.fire()
    due = next_fire_at(system, "every10_skip")
    move_clock_to(system, clock, due + timedelta(seconds=5))

    fired = [f for f in system.scheduler.fire() if f.saga == "every10_skip"]
    again = [f for f in system.scheduler.fire() if f.saga == "every10_skip"]

    assert [(f.logical_time, f.created) for f in fired] == [(due, True)]
    assert again == []
    [run] = runs_of(system, "every10_skip")
    assert run.idempotency_key == f"schedule:{iso(due)}"
    assert run.input == {"logical_time": iso(due)}
    assert next_fire_at(system, "every10_skip") == due + timedelta(minutes=10)
    [(last,)] = query(system, "SELECT last_fire_at FROM schedules WHERE saga = 'every10_skip'")
    assert last.astimezone(UTC) == due


@pytest.mark.parametrize(("policy", "expected"), [
    ("skip", []),
    ("latest", [40]),
    ("all", [0, 10, 20, 30, 40]),
])
def test_after_downtime_the_catch_up_policy_applies(database_url, clock, policy, expected):
    """Given sweepers down from before a firing until 42.5 minutes later (5 firings missed),
    When a sweep runs again, Then skip starts none, latest the newest, all each (2 a sweep)."""
    registry = Registry([EVERY_10[policy]])
    system = make_system(database_url, registry, clock, sweep_batch=2)
    name = f"every10_{policy}"
    system.scheduler.fire()
    first = next_fire_at(system, name)
    move_clock_to(system, clock, first + timedelta(minutes=42, seconds=30))

    sweeps = [system.scheduler.fire() for _ in range(4)]

    started = [f.logical_time for sweep in sweeps for f in sweep]
    assert started == [first + timedelta(minutes=m) for m in expected]
    if policy == "all":
        assert [len(sweep) for sweep in sweeps] == [2, 2, 1, 0]
    assert [r.idempotency_key for r in runs_of(system, name)] == [schedule_key(t) for t in started]
    assert next_fire_at(system, name) == first + timedelta(minutes=50)
    system.store.close()


@pytest.mark.parametrize("claim_s", [CLAIM_S, 0.0], ids=["claimed", "claims-expire-at-once"])
def test_two_schedulers_never_start_one_firing_twice(systems: list[System], claim_s, monkeypatch):
    """Given two sweepers, When both fire the same due firing at once, 40 times over,
    Then each logical time has exactly one run, created by exactly one of them; even
    when claims expire at once and both sweepers start it, the key keeps it to one."""
    monkeypatch.setattr("saga.schedules.firing.CLAIM_S", claim_s)
    schedulers = [s.scheduler for s in systems]
    registry = Registry([EVERY_10["all"]])
    start = datetime(2030, 1, 1, tzinfo=UTC)
    schedulers[0].fire(registry=registry, now=start)
    first = next_fire_at(systems[0], "every10_all")
    created: list[list] = []
    for i in range(40):
        now = first + timedelta(minutes=10 * i, seconds=1)
        barrier = threading.Barrier(2)
        results: list = [None, None]

        def sweep(k: int, now: datetime = now, barrier=barrier, results=results) -> None:
            barrier.wait()
            results[k] = schedulers[k].fire(registry=registry, now=now)

        threads = [threading.Thread(target=sweep, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        created.append([(f.logical_time, f.run_id) for r in results for f in r if f.created])

    assert all(len(firing) == 1 for firing in created), created
    keys = [r.idempotency_key for r in runs_of(systems[0], "every10_all")]
    assert len(keys) == 40 == len(set(keys))
    assert keys == sorted(schedule_key(first + timedelta(minutes=10 * i)) for i in range(40))


def test_a_firing_repeated_after_a_lost_update_starts_nothing_new(systems: list[System]):
    """Given a firing started but its schedule row not moved on (the sweeper died),
    When two sweepers fire it again, Then the existing run is found, none created."""
    schedulers = [s.scheduler for s in systems]
    registry = Registry([EVERY_10["skip"]])
    start = datetime(2030, 1, 1, tzinfo=UTC)
    schedulers[0].fire(registry=registry, now=start)
    due = next_fire_at(systems[0], "every10_skip")
    [firing] = schedulers[0].fire(registry=registry, now=due)
    query_update(systems[0], "UPDATE schedules SET next_fire_at = :due", due=due)

    again = [sch.fire(registry=registry, now=due + timedelta(seconds=2)) for sch in schedulers]

    assert [(f.run_id, f.created) for sweep in again for f in sweep] == [(firing.run_id, False)]
    assert len(runs_of(systems[0], "every10_skip")) == 1


def test_a_dead_sweepers_claim_runs_out_and_another_fires(systems: list[System]):
    """Given a sweeper that claimed a due firing and died, When its claim runs out,
    Then another sweeper fires it, not before, and still on time."""
    schedulers = [s.scheduler for s in systems]
    registry = Registry([EVERY_10["skip"]])
    start = datetime(2030, 1, 1, tzinfo=UTC)
    schedulers[0].fire(registry=registry, now=start)
    due = next_fire_at(systems[0], "every10_skip")
    specs = {"every10_skip": EVERY_10["skip"].schedule.spec}
    claimed = systems[0].store.claim_due_schedules(specs, due, 10, CLAIM_S)
    assert claimed == [("every10_skip", due)]

    early = schedulers[1].fire(registry=registry, now=due + timedelta(seconds=1))
    late = schedulers[1].fire(registry=registry, now=due + timedelta(seconds=CLAIM_S - 1))
    expired = schedulers[1].fire(registry=registry, now=due + timedelta(seconds=CLAIM_S + 1))

    assert early == [] and late == []
    assert [(f.logical_time, f.created) for f in expired] == [(due, True)]


def query_update(system: System, sql: str, **params) -> None:
    with system.store.engine.begin() as conn:
        conn.execute(sa.text(sql), params)


# -- backfills of a schedule ----------------------------------------------------------------

@pytest.fixture
def cli_env(database_url: str) -> dict[str, str]:
    return {"SAGA_DATABASE_URL": database_url, "SAGA_BROKER_URL": "memory://",
            "SAGA_SAGAS": MODULE, "SAGA_TEST_CLOCK_FILE": ""}


def backfill_cli(env: dict[str, str], *args: str):
    return CliRunner().invoke(main, ["backfill", *args], env=env, catch_exceptions=False)


# 03:00 in Paris on March 28-31, 2024 (summer time from the 31st); April 1 is after `to`.
MARCH = ["2024-03-28T02:00:00Z", "2024-03-29T02:00:00Z", "2024-03-30T02:00:00Z",
         "2024-03-31T01:00:00Z"]


def test_backfill_dry_run_lists_the_missing_times_and_writes_nothing(system, cli_env):
    """Given one firing of the range already run, When a dry run, Then the others, no rows."""
    system.engine.start("nightly", {"logical_time": MARCH[1]}, f"schedule:{MARCH[1]}")

    result = backfill_cli(cli_env, "nightly", "--from", "2024-03-28", "--to", "2024-04-01",
                          "--dry-run")

    assert result.exit_code == 0, result.output
    listed = [line.split("\t")[:2] for line in result.stdout.splitlines()]
    assert listed == [["running" if t == MARCH[1] else "start", f"schedule:{t}"] for t in MARCH]
    assert "would start 3 runs of nightly (1 exist already: 1 running)" in result.stderr
    assert query(system, "SELECT count(*) FROM backfills") == [(0,)]
    assert len(runs_of(system, "nightly")) == 1


def test_backfill_starts_missing_runs_at_most_n_at_once(system, cli_env, client):
    """Given a range of 4 firings, one run, When backfilled with --max-running 2,
    Then 2 start now and the rest only as runs finish, never more than 2 unfinished."""
    run_id, _ = system.engine.start("nightly", {"logical_time": MARCH[1]}, f"schedule:{MARCH[1]}")
    finish(system, run_id, "nightly")

    result = backfill_cli(cli_env, "nightly", "--from", "2024-03-28T00:00:00+01:00",
                          "--to", "2024-04-01T00:00:00+02:00", "--max-running", "2")

    assert result.exit_code == 0, result.output
    backfill_id = result.stdout.strip()
    assert "3 runs of nightly to start, at most 2 at once (1 exist already: 1 unchanged); " \
        "2 started now" in result.stderr
    progress = client.get(f"/v1/backfills/{backfill_id}").get_json()
    assert progress["items"] == {"total": 3, "pending": 1, "started": 2, "running": 2,
                                 "finished": 0, "refused": 0}
    assert progress["from"].startswith("2024-03-27T23:00:00")
    assert progress["done"] is False
    assert system.scheduler.feed() == 0  # two still running: no room

    drive_to_the_end(system, "nightly", backfill_id, max_running=2)

    keys = [r.idempotency_key for r in runs_of(system, "nightly")]
    assert keys == [f"schedule:{t}" for t in MARCH]
    final = client.get(f"/v1/backfills/{backfill_id}").get_json()
    assert final["items"] == {"total": 3, "pending": 0, "started": 3, "running": 0,
                              "finished": 3, "refused": 0}
    assert final["done"] is True


def drive_to_the_end(system: System, saga_name: str, backfill_id: str, max_running: int) -> None:
    """Finish one unfinished run at a time and feed; check the limit at every step."""
    for _ in range(100):
        unfinished = query(system, "SELECT r.id FROM backfill_items i JOIN runs r "
                                   "ON r.id = i.run_id WHERE i.backfill_id = :b "
                                   "AND r.status = 'running' ORDER BY r.id", b=backfill_id)
        assert len(unfinished) <= max_running
        if not unfinished:
            assert system.scheduler.feed() == 0
            return
        finish(system, unfinished[0].id, saga_name)
        system.scheduler.feed()
        running = query(system, "SELECT count(*) FROM runs WHERE saga = :s AND status = "
                                "'running'", s=saga_name)
        assert running[0][0] <= max_running
    raise AssertionError("the backfill never finished")


def test_a_backfill_and_the_schedule_never_double_a_firing(system, clock):
    """Given a schedule that fired, When a backfill covers that firing, Then it skips it."""
    system.scheduler.fire()
    due = next_fire_at(system, "every10_all")
    move_clock_to(system, clock, due + timedelta(seconds=1))
    system.scheduler.fire()

    plan = system.scheduler.plan_backfill("every10_all", start=due - timedelta(minutes=20),
                                          end=due + timedelta(hours=5))
    assert [key for key, _ in plan.items] == [
        schedule_key(due - timedelta(minutes=20)), schedule_key(due - timedelta(minutes=10))]
    assert plan.existing == 1  # and the times after now are left to the schedule


# -- the API -----------------------------------------------------------------------------

@pytest.fixture
def client(database_url: str, system: System):
    return authorize(create_app(make_settings(database_url), system).test_client(),
                     create_token(system.store.engine))


def test_api_backfill_of_a_range_and_its_dry_run(client, system):
    """Given a scheduled saga, When backfilled by the API (dry run first), Then runs start."""
    body = {"from": "2024-03-28", "to": "2024-04-01", "max_running": 3}
    dry = client.post("/v1/sagas/nightly/backfills", json={**body, "dry_run": True})
    assert dry.status_code == 200, dry.get_json()
    assert [r["idempotency_key"] for r in dry.get_json()["would_start"]] == [
        f"schedule:{t}" for t in MARCH]
    assert dry.get_json()["would_start"][0]["input"] == {"logical_time": MARCH[0]}
    assert runs_of(system, "nightly") == []

    response = client.post("/v1/sagas/nightly/backfills", json=body)

    assert response.status_code == 201, response.get_json()
    view = response.get_json()
    assert response.headers["Location"] == f"/v1/backfills/{view['id']}"
    assert view["items"]["total"] == 4 and view["items"]["started"] == 3
    assert len(runs_of(system, "nightly")) == 3
    again = client.post("/v1/sagas/nightly/backfills", json={**body, "dry_run": True})
    assert [r["idempotency_key"] for r in again.get_json()["would_start"]] == [
        f"schedule:{MARCH[3]}"]  # the fourth is still waiting for a slot


@pytest.mark.parametrize(("path", "body", "status", "where"), [
    ("/v1/sagas/nope/backfills", {"from": "2024-01-01", "to": "2024-01-02"}, 404, None),
    ("/v1/sagas/nightly/backfills", {"from": "2024-02-01", "to": "2024-01-01"}, 422, "from"),
    ("/v1/sagas/nightly/backfills", {"from": "yesterday", "to": "2024-01-01"}, 422, "from"),
    ("/v1/sagas/nightly/backfills", {"from": "2024-01-01"}, 422, "to"),
    ("/v1/sagas/reindex/backfills", {"from": "2024-01-01", "to": "2024-01-02"}, 422, "from"),
    ("/v1/sagas/reindex/backfills", {"inputs": [], "max_running": 1}, 422, "inputs"),
    ("/v1/sagas/reindex/backfills", {"inputs": [{"a": "\u0000"}]}, 422, "inputs[0].a"),
    ("/v1/sagas/reindex/backfills", {"inputs": [1], "max_running": 0}, 422, "max_running"),
    ("/v1/sagas/reindex/backfills", {"inputs": [{"key": "k", "input": 1},
                                                {"key": "k", "input": 2}]}, 422, "inputs[1]"),
    ("/v1/sagas/reindex/backfills", {"inputs": [1], "from": "2024-01-01"}, 422, "inputs"),
])
def test_api_refuses_a_bad_backfill_writing_nothing(client, system, path, body, status, where):
    response = client.post(path, json=body)
    assert response.status_code == status, response.get_json()
    assert response.headers["Content-Type"] == "application/problem+json"
    if where is not None:
        assert where in response.get_json()["errors"], response.get_json()
    assert query(system, "SELECT count(*) FROM backfills") == [(0,)]
    assert query(system, "SELECT count(*) FROM runs") == [(0,)]


def test_api_unknown_backfill_is_a_404(client):
    response = client.get("/v1/backfills/no-such-id")
    assert response.status_code == 404
    assert response.get_json()["type"].endswith("backfill-not-found")


def test_api_lists_schedules_with_their_next_firing(client, system):
    system.scheduler.fire()
    listed = {s["saga"]: s for s in client.get("/v1/schedules").get_json()["schedules"]}
    assert listed["nightly"]["cron"] == "0 3 * * *"
    assert listed["nightly"]["timezone"] == "Europe/Paris"
    assert datetime.fromisoformat(listed["nightly"]["next_fire_at"]) == next_fire_at(
        system, "nightly")
    assert "reindex" not in listed


# -- a dry run's diff against the runs that ran ------------------------------------------------

SPELLED_OTHERWISE = "2024-03-30T03:00:00+01:00"  # MARCH[2], in Paris time


@pytest.fixture
def ran_three_ways(system: System) -> list[str]:
    """Given mailed's firings of March 28 (succeeded), 29 (failed: its compensation gave up)
    and 30 (succeeded, its time spelled otherwise); the 31st never ran. Their run ids."""
    run_ids = []
    for t, logical_time in ((MARCH[0], MARCH[0]), (MARCH[1], MARCH[1]),
                            (MARCH[2], SPELLED_OTHERWISE)):
        run_id, _ = system.engine.start("mailed", {"logical_time": logical_time},
                                        f"schedule:{t}")
        system.worker.run_step(run_id, "report", Role.FORWARD, "mailed", 1, worker="test")
        run_ids.append(run_id)
    wait_for(lambda: [r.status for r in runs_of(system, "mailed")] == [
        "succeeded", "failed", "succeeded"], 10, "the three runs to end")
    return run_ids


def test_cli_dry_run_shows_how_each_window_that_ran_differs(system, cli_env, ran_three_ways):
    """Given windows that succeeded, failed, ran with another input and never ran,
    When a dry run, Then one line each, in order, saying what differs; nothing written."""
    result = backfill_cli(cli_env, "mailed", "--from", "2024-03-28", "--to", "2024-04-01",
                          "--dry-run")

    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    succeeded, failed, changed = ran_three_ways
    assert lines == [
        ["unchanged", f"schedule:{MARCH[0]}", json.dumps({"logical_time": MARCH[0]}),
         f"run {succeeded} succeeded"],
        ["failed", f"schedule:{MARCH[1]}", json.dumps({"logical_time": MARCH[1]}),
         f"run {failed} failed", lines[1][4]],
        ["input_changed", f"schedule:{MARCH[2]}", json.dumps({"logical_time": MARCH[2]}),
         f"run {changed} succeeded", f"ran with {json.dumps({'logical_time': SPELLED_OTHERWISE})}"],
        ["start", f"schedule:{MARCH[3]}", json.dumps({"logical_time": MARCH[3]})],
    ]
    assert "the report was mailed already" in lines[1][4]
    assert ("would start 1 run of mailed (3 exist already: 1 input changed, 1 failed, "
            "1 unchanged); nothing written") in result.stderr
    assert "1 of them ended failed" in result.stderr and "saga retry RUN_ID" in result.stderr
    assert query(system, "SELECT count(*) FROM backfills") == [(0,)]
    assert len(runs_of(system, "mailed")) == 3


def test_api_dry_run_shows_how_each_window_that_ran_differs(client, system, ran_three_ways):
    """The same over the API: `already_ran` in window order, each with its run; then the
    backfill itself starts only the window that never ran."""
    body = {"from": "2024-03-28", "to": "2024-04-01"}

    dry = client.post("/v1/sagas/mailed/backfills", json={**body, "dry_run": True})

    assert dry.status_code == 200, dry.get_json()
    view = dry.get_json()
    succeeded, failed, changed = ran_three_ways
    assert view["would_start"] == [{"idempotency_key": f"schedule:{MARCH[3]}",
                                    "input": {"logical_time": MARCH[3]}}]
    assert view["existing"] == 3
    assert view["differences"] == {"input_changed": 1, "failed": 1, "unchanged": 1}
    ran = view["already_ran"]
    assert [(r["idempotency_key"], r["difference"], r["run"]["id"], r["run"]["status"])
            for r in ran] == [
        (f"schedule:{MARCH[0]}", "unchanged", succeeded, "succeeded"),
        (f"schedule:{MARCH[1]}", "failed", failed, "failed"),
        (f"schedule:{MARCH[2]}", "input_changed", changed, "succeeded")]
    assert ran[2]["input"] == {"logical_time": MARCH[2]}
    assert ran[2]["run"]["input"] == {"logical_time": SPELLED_OTHERWISE}
    assert "the report was mailed already" in ran[1]["run"]["error"]
    assert ran[0]["run"]["error"] is None
    assert query(system, "SELECT count(*) FROM backfills") == [(0,)]

    started = client.post("/v1/sagas/mailed/backfills", json=body)

    assert started.status_code == 201, started.get_json()
    assert started.get_json()["existing"] == 3 and started.get_json()["items"]["total"] == 1
    assert [r.idempotency_key for r in runs_of(system, "mailed")] == [
        f"schedule:{t}" for t in MARCH]


def test_openapi_documents_the_dry_runs_diff(client):
    schemas = client.get("/v1/openapi.json").get_json()["components"]["schemas"]
    dry_run = schemas["DryRun"]["properties"]
    assert {"would_start", "existing", "already_ran", "differences"} <= set(dry_run)
    skipped = schemas["SkippedRun"]["properties"]
    assert skipped["difference"]["enum"] == ["input_changed", "running", "failed", "unchanged"]
    assert set(schemas["EarlierRun"]["properties"]) == {"id", "status", "input", "error"}


# -- backfills of an event-driven saga -------------------------------------------------------

LINES = [
    '{"key": "user-1", "input": {"user": 1}}',
    "",
    '{"input": {"user": 2}}',
    '{"user": 3}',
    '{"key": 4, "input": {"user": 4}}',
]


def test_inputs_backfill_from_json_lines_is_idempotent(system, cli_env, tmp_path):
    """Given a JSON-lines file, When backfilled twice, Then one run per line, started once."""
    path = tmp_path / "users.jsonl"
    path.write_text("\n".join(LINES) + "\n")

    first = backfill_cli(cli_env, "reindex", "--inputs", str(path))
    second = backfill_cli(cli_env, "reindex", "--inputs", str(path))

    assert first.exit_code == 0, first.output
    assert "4 runs of reindex to start, at most 10 at once (0 exist already); 4 started" \
        in first.stderr
    assert second.exit_code == 0, second.output
    assert "0 runs of reindex to start, at most 10 at once (4 exist already: 4 running)" \
        in second.stderr
    runs = {r.idempotency_key: r.input for r in runs_of(system, "reindex")}
    assert len(runs) == 4
    assert runs["backfill:user-1"] == {"user": 1}
    assert runs["backfill:4"] == {"user": 4}
    hashed = {k: v for k, v in runs.items() if k not in ("backfill:user-1", "backfill:4")}
    assert sorted(hashed.values(), key=json.dumps) == [{"user": 2}, {"user": 3}]
    assert all(len(k) == len("backfill:") + 32 for k in hashed)
    done = system.store.get_backfill(second.stdout.strip())
    assert done["items"]["total"] == 0 and done["existing"] == 4 and done["done"] is True


def test_inputs_backfill_feeds_n_at_a_time(system):
    """Given 7 inputs and max_running 3, When runs finish one by one, Then never more than 3."""
    plan = system.scheduler.plan_backfill(
        "reindex", max_running=3,
        inputs=[(f"inputs[{i}]", {"key": f"u{i}", "input": {"user": i}}) for i in range(7)])
    backfill_id = system.scheduler.start_backfill(plan)
    assert len(runs_of(system, "reindex")) == 3

    drive_to_the_end(system, "reindex", backfill_id, max_running=3)

    assert len(runs_of(system, "reindex")) == 7
    assert system.store.get_backfill(backfill_id)["done"] is True


def test_a_malformed_line_is_refused_by_number_writing_nothing(system, cli_env, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"user": 1}\n{"user": 2\n')
    result = backfill_cli(cli_env, "reindex", "--inputs", str(path))
    assert result.exit_code == 1
    assert "line 2: not JSON" in result.stderr
    assert query(system, "SELECT count(*) FROM backfills") == [(0,)]
    assert runs_of(system, "reindex") == []


@pytest.mark.parametrize(("args", "code", "message"), [
    (["nope", "--from", "2024-01-01", "--to", "2024-01-02"], 1, "no saga named 'nope'"),
    (["nightly", "--from", "2024-02-01", "--to", "2024-01-01"], 1, "is after to"),
    (["reindex", "--from", "2024-01-01", "--to", "2024-01-02"], 1, "has no schedule"),
    (["nightly"], 2, "give --from and --to"),
    (["nightly", "--from", "2024-01-01"], 1, "needs both from and to"),
    (["nightly", "--from", "2024-01-01", "--to", "x", "--max-running", "0"], 2, "max-running"),
])
def test_cli_refuses_a_bad_backfill(system, cli_env, args, code, message):
    result = backfill_cli(cli_env, *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert query(system, "SELECT count(*) FROM backfills") == [(0,)]


# -- real sweeper processes ------------------------------------------------------------------

def test_real_sweepers_fire_each_minute_once_and_catch_up_after_downtime(
        database_url, broker_url, tmp_path):
    """Given two sweepers and a worker, When the clock passes a firing, Then one run of it
    succeeds; When both sweepers were down for 5 firings, Then catch_up="all" starts each once."""
    with Stack(database_url, broker_url, tmp_path, sagas=MODULE) as stack:
        sweepers = [stack.sweeper(), stack.sweeper()]
        stack.worker()
        first = wait_for(lambda: _stored_next(stack, "minutely"), 30, "the schedule row")

        stack.advance_clock((first - _db_now(stack)).total_seconds() + 5)
        wait_for(lambda: _succeeded(stack, "minutely") == [schedule_key(first)], 60,
                 "the first firing to succeed")

        for sweeper in sweepers:
            sweeper.stop()
        stack.advance_clock(5 * 60)
        sweepers = [stack.sweeper(), stack.sweeper()]  # back after the downtime
        expected = [schedule_key(first + timedelta(minutes=m)) for m in range(6)]
        wait_for(lambda: _succeeded(stack, "minutely") == expected, 60,
                 "the five missed firings to succeed")

        keys = stack.query("SELECT idempotency_key FROM runs WHERE saga = 'minutely'")
        assert sorted(k for (k,) in keys) == expected
        for process in stack.processes:
            assert "Traceback" not in process.output(), process.output()


def _db_now(stack: Stack) -> datetime:
    [(now,)] = stack.query("SELECT clock_timestamp()")
    return now.astimezone(UTC) + timedelta(seconds=stack.clock_offset)


def _stored_next(stack: Stack, saga_name: str) -> datetime | None:
    rows = stack.query("SELECT next_fire_at FROM schedules WHERE saga = :s", s=saga_name)
    return rows[0][0].astimezone(UTC) if rows else None


def _succeeded(stack: Stack, saga_name: str) -> list[str]:
    rows = stack.query("SELECT idempotency_key FROM runs WHERE saga = :s AND status = "
                       "'succeeded' ORDER BY idempotency_key", s=saga_name)
    return [key for (key,) in rows]
