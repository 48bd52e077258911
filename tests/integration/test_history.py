"""History and search on real PostgreSQL: run filters, event filters, the as-of view, the CLI,
retention, and (marked slow) the query plans and timings over a million events.

The broker is Kombu's in-memory transport and steps run in-process with `Engine.run_step`,
so every run is driven one step at a time and its state can be captured between steps.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import flask
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from saga import NonRetryable, Parallel, Retry, Saga, Step, WaitForSignal
from saga.api import create_app
from saga.cli import main
from saga.events import LeaseExpired, RetryDue, StepSucceeded
from saga.registry import Registry
from saga.run import Role
from saga.settings import Settings
from saga.store import Store
from saga.system import System, build
from saga.timeline import attempts, state_at
from tests.auth import authorize, create_token
from tests.conftest import PG_ADMIN_URL, template_copies

TERMINAL = {"succeeded", "compensated", "failed"}


# -- the sagas under test ----------------------------------------------------------------

def ok(ctx):
    return {"done": ctx.step}


def charge(ctx):
    if ctx.attempt <= ctx.input.get("flaky", 0):
        raise ConnectionError("Bank unavailable")
    if ctx.input.get("decline"):
        raise NonRetryable("card declined: over the limit")
    return {"charged": True}


def broken_undo(ctx):
    raise RuntimeError("warehouse API gone")


def shop(name: str, version: int = 1) -> Saga:
    """reserve → (charge ‖ notify) → ship; a charge is retried once after 50 ms."""
    return Saga(name, version=version, steps=[
        Step("reserve", ok, compensate=ok),
        Parallel(Step("charge", charge, retry=Retry(attempts=3, first_delay=timedelta(
                     milliseconds=50), jitter=0)),
                 Step("notify", ok)),
        Step("ship", ok),
    ])


SAGAS = [shop("shop", 1), shop("shop", 2), shop("pay"),
         Saga("misc", steps=[Step("only", ok)]),
         Saga("parcel", steps=[Step("pack", ok), WaitForSignal("label", timeout=timedelta(
             minutes=5)), Step("send", ok)]),
         Saga("brittle", steps=[
             Step("hold", ok, compensate=broken_undo, compensate_retry=Retry(attempts=1)),
             Step("fail", charge)])]


# -- fixtures ----------------------------------------------------------------------------

def _admin() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def new_database(pg_template: str) -> Iterator[Callable[[], str]]:
    """Makes fresh migrated databases (copies of the template), dropped after."""
    with template_copies(pg_template, "hist") as make:
        yield make


@pytest.fixture(scope="module")
def db_url(new_database: Callable[[], str]) -> str:
    return new_database()


@pytest.fixture(scope="module")
def system(db_url: str) -> Iterator[System]:
    built = build(Settings(database_url=db_url, broker_url="memory://", inline_steps=0),
                  Registry(SAGAS))
    yield built
    built.store.close()


@pytest.fixture(scope="module")
def app(system: System) -> flask.Flask:
    return create_app(system.settings, system)


@pytest.fixture
def client(app: flask.Flask, system: System):
    return authorize(app.test_client(), create_token(system.store.engine))


def drive(system: System, run_id: str, actions: int = 50,
          after: Callable[[], None] | None = None, settle: bool = True) -> dict:
    """Run the run's queued steps and due retries one at a time, `actions` at most (all of
    them, unless `settle`: then until the run ends or waits); `after` sees each change."""
    engine = system.engine
    for _ in range(actions):
        run = system.store.get_run(run_id)
        pending = [(s, Role.FORWARD) for s in run["steps"]] + \
                  [(s, Role.COMPENSATE) for s in run["compensations"]]
        queued = [(s["name"], role) for s, role in pending if s["status"] == "queued"]
        waiting = [(s, role) for s, role in pending if s["status"] == "retry_wait"]
        if run["status"] in TERMINAL or not (queued or waiting):
            return run
        if queued:
            name, role = queued[0]
            system.worker.run_step(run_id, name, role, run["saga"], run["version"], worker="w-test")
        else:
            step, role = waiting[0]
            time.sleep(max(0.0, (step["next_attempt_at"] - system.store.now()).total_seconds()))
            assert engine.advance(run_id, RetryDue(step["name"], role)).changed
        if after:
            after()
    assert not settle, f"run {run_id} did not settle in {actions} actions"
    return system.store.get_run(run_id)


def start(system: System, saga: str, version: int | None = None, **input) -> str:
    return system.engine.start(saga, input, version=version)[0]


@pytest.fixture(scope="module")
def seeded(system: System) -> dict[str, dict]:
    """Runs in every state the filters tell apart, started in this order (keys)."""
    runs: dict[str, str] = {}
    for n in (1, 2, 3):
        runs[f"ok{n}"] = start(system, "shop", 1)
        drive(system, runs[f"ok{n}"])
    for n in (1, 2):
        runs[f"declined{n}"] = start(system, "shop", 1, decline=True)
        drive(system, runs[f"declined{n}"])
    runs["retrying"] = start(system, "shop", 2, flaky=5)
    drive(system, runs["retrying"], actions=2, settle=False)  # reserve; charge fails once
    runs["fresh"] = start(system, "shop", 2)
    runs["misc_done"] = start(system, "misc")
    drive(system, runs["misc_done"])
    runs["misc_running"] = start(system, "misc")
    return {key: system.store.get_run(run_id) for key, run_id in runs.items()}


def listed(client, **query) -> list[str]:
    response = client.get("/v1/runs", query_string={"limit": 200, **query})
    assert response.status_code == 200, response.get_json()
    return [r["id"] for r in response.get_json()["runs"]]


def keys(seeded: dict[str, dict], ids: list[str]) -> list[str]:
    """The seeded runs among `ids`, by key, in the listing's order."""
    by_id = {run["id"]: key for key, run in seeded.items()}
    return [by_id[i] for i in ids if i in by_id]


def stamp(value: datetime) -> str:
    return value.isoformat()


# -- the seeded runs are what the filters assume -------------------------------------------

def test_the_seeded_runs_are_in_the_states_the_filters_tell_apart(seeded):
    status = {key: run["status"] for key, run in seeded.items()}
    assert status == {"ok1": "succeeded", "ok2": "succeeded", "ok3": "succeeded",
                      "declined1": "compensated", "declined2": "compensated",
                      "retrying": "running", "fresh": "running", "misc_done": "succeeded",
                      "misc_running": "running"}
    charge = {s["name"]: s for s in seeded["retrying"]["steps"]}["charge"]
    assert (charge["status"], charge["error"]) == ("retry_wait", "ConnectionError: Bank unavailable")
    assert seeded["retrying"]["error"] is None


# -- GET /v1/runs filters ----------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ({"saga": "shop"}, ["fresh", "retrying", "declined2", "declined1", "ok3", "ok2", "ok1"]),
    ({"saga": "misc"}, ["misc_running", "misc_done"]),
    ({"saga": "shop", "version": 2}, ["fresh", "retrying"]),
    ({"saga": "shop", "version": 1, "status": "compensated"}, ["declined2", "declined1"]),
    ({"status": "running"}, ["misc_running", "fresh", "retrying"]),
    ({"step": "ship"}, ["ok3", "ok2", "ok1"]),
    ({"step": "charge", "step_status": "failed"}, ["declined2", "declined1"]),
    ({"step": "charge", "step_status": "retry_wait"}, ["retrying"]),
    ({"step": "notify", "step_status": "cancelled"}, ["declined2", "declined1"]),
    ({"step": "only"}, ["misc_running", "misc_done"]),
    ({"step": "no_such_step"}, []),
    ({"error": "CARD DECLINED"}, ["declined2", "declined1"]),  # the run's own error
    ({"error": "bank unavail"}, ["retrying"]),  # only a step's error holds it
    ({"error": "%"}, []),  # LIKE's wildcards are plain text here
    ({"error": "_"}, []),
    ({"saga": "shop", "status": "running", "error": "bank"}, ["retrying"]),
    ({"saga": "shop", "version": 2, "step": "reserve", "step_status": "succeeded"}, ["retrying"]),
])
def test_each_filter_keeps_exactly_the_matching_runs_newest_first(client, seeded, query, expected):
    """Given runs in every state, When listed with a filter, Then exactly those, newest first."""
    assert keys(seeded, listed(client, **query)) == expected


def test_started_range_is_half_open_on_created_at(client, seeded):
    """Given runs started in order, When listed from ok2 up to declined2, Then ok2..declined1."""
    found = listed(client, started_after=stamp(seeded["ok2"]["created_at"]),
                   started_before=stamp(seeded["declined2"]["created_at"]))
    assert keys(seeded, found) == ["declined1", "ok3", "ok2"]


def test_finished_range_keeps_finished_runs_only(client, seeded):
    """Given runs finished in order and some still running, Then only finished ones in range."""
    found = listed(client, finished_after=stamp(seeded["ok1"]["finished_at"]),
                   finished_before=stamp(seeded["declined1"]["finished_at"]))
    assert keys(seeded, found) == ["ok3", "ok2", "ok1"]
    since_ok3 = listed(client, finished_after=stamp(seeded["ok3"]["finished_at"]))
    assert keys(seeded, since_ok3) == ["misc_done", "declined2", "declined1", "ok3"]


def test_times_with_an_offset_mean_the_same_moment(client, seeded):
    """Given a bound written in +05:00, Then it selects as the same instant in UTC would."""
    plus5 = seeded["ok2"]["created_at"].astimezone(timezone(timedelta(hours=5)))
    assert listed(client, saga="shop", started_before=plus5.isoformat()) == \
        listed(client, saga="shop", started_before=stamp(seeded["ok2"]["created_at"]))


@pytest.mark.parametrize("query", [
    {"saga": "shop"},
    {"step": "reserve"},
    {"error": "e", "saga": "shop"},
    {"saga": "shop", "started_after": "2000-01-01T00:00:00Z", "finished_before": "2100-01-01"},
])
def test_pages_with_filters_give_every_match_once_in_order(client, seeded, query):
    """Given filters, When paged 2 at a time, Then the pages join to the unpaged listing."""
    whole = listed(client, **query)
    seen, cursor = [], None
    while True:
        page = client.get("/v1/runs", query_string={**query, "limit": 2,
                                                   **({"cursor": cursor} if cursor else {})})
        body = page.get_json()
        assert page.status_code == 200 and len(body["runs"]) <= 2
        seen += [r["id"] for r in body["runs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == whole and len(whole) >= 3


@pytest.mark.parametrize("query, field", [
    ("version=0", "version"), ("version=two&saga=shop", "version"), ("version=2", "version"),
    ("started_after=yesterday", "started_after"), ("started_before=2025-13-01", "started_before"),
    ("finished_after=12:00", "finished_after"), ("finished_before=", "finished_before"),
    ("step=", "step"), ("step_status=lost&step=charge", "step_status"),
    ("step_status=failed", "step_status"), ("error=", "error"), ("error=a%00b", "error"),
    ("error=" + "x" * 201, "error"), ("status=lost", "status"), ("limit=0", "limit"),
    ("started_after=2025-05-02T00:00:00Z&started_before=2025-05-01T00:00:00Z", "started_before"),
    ("finished_after=2025-05-02T00:00:00Z&finished_before=2025-05-01T00:00:00Z",
     "finished_before"),
])
def test_a_bad_filter_is_a_422_naming_it(client, query, field):
    response = client.get(f"/v1/runs?{query}")
    assert response.status_code == 422, response.get_json()
    assert response.headers["Content-Type"] == "application/problem+json"
    assert field in response.get_json()["errors"]


# -- the as-of view equals the live state at every moment ----------------------------------

def snapshot_of(view: dict) -> tuple:
    steps = {(s["name"], "forward"): s for s in view["steps"]}
    steps |= {(s["name"], "compensate"): s for s in view["compensations"]}
    return view["status"], view["error"], view["parked"], {
        key: (s["status"], s["attempts"], s["error"], s["worker"]) for key, s in steps.items()}


def rebuilt(state) -> tuple:
    return state.status, state.error, state.parked, {
        key: (s.status, s.attempt, s.error, s.worker) for key, s in state.steps.items()}


@pytest.fixture(scope="module")
def journey(system: System) -> dict:
    """A `pay` run through a dead worker, a retry after a wait, a decline and compensation,
    with the live view and the database time captured after every change."""
    store = system.store
    taken: list[tuple[datetime, dict]] = []

    def capture() -> None:
        view = store.get_run(run_id)
        taken.append((store.now(), view))

    run_id = start(system, "pay", flaky=1, decline=True)
    capture()
    # A claim under a lease of 50 ms, as a worker that then froze would hold it.
    lease_s, system.engine.lease_s = system.engine.lease_s, 0.05
    dead = system.engine.claim(run_id, system.registry.get("pay"), "reserve", Role.FORWARD,
                               "w-dead")
    system.engine.lease_s = lease_s
    capture()
    deadline = time.monotonic() + 10
    while store.now() <= dead.lease_expires_at:  # w-dead's lease runs out
        assert time.monotonic() < deadline, "the lease never ran out"
        time.sleep(0.01)
    # What the sweeper does with it: the attempt failed; the step is retried by its policy.
    assert system.engine.advance(run_id, LeaseExpired("reserve", Role.FORWARD, dead.fence)).changed
    capture()
    # w-dead wakes up and reports: its fence is stale, the result is discarded.
    assert not system.engine.advance(run_id, StepSucceeded("reserve", Role.FORWARD, dead.fence),
                                     worker="w-dead").changed
    capture()
    final = drive(system, run_id, after=capture)
    return {"id": run_id, "taken": taken, "final": final, "events": store.events(run_id)}


def test_the_journey_went_through_every_kind_of_change(journey):
    statuses = [view["status"] for _, view in journey["taken"]]
    assert journey["final"]["status"] == "compensated"
    assert {"running", "compensating", "compensated"} <= set(statuses)
    step_statuses = {s for _, view in journey["taken"]
                     for s, *_ in snapshot_of(view)[3].values()}
    assert {"queued", "running", "retry_wait", "succeeded", "failed"} <= step_statuses


def test_state_at_each_moment_equals_the_live_view_then(journey):
    """Given the live view captured after every change, When the state is rebuilt from the
    final event log as of each capture's time, Then they are equal."""
    assert len(journey["taken"]) >= 8
    for moment, view in journey["taken"]:
        assert rebuilt(state_at(journey["events"], moment)) == snapshot_of(view), moment


def test_state_at_each_moment_of_a_signal_wait_equals_the_live_view_then(system):
    """Given a run that waits for a signal, When the state is rebuilt as of each capture,
    Then it equals the live view then, and the wait is one span in the timeline."""
    store, taken = system.store, []
    run_id = start(system, "parcel")

    def capture() -> None:
        taken.append((store.now(), store.get_run(run_id)))

    capture()
    assert drive(system, run_id, after=capture)["status"] == "running"  # waits for the label
    system.engine.signal(run_id, "label", {"tracking": "T-1"})
    capture()
    assert drive(system, run_id, after=capture)["status"] == "succeeded"
    history = store.events(run_id)
    assert "waiting" in {s["status"] for _, view in taken for s in view["steps"]}
    for moment, view in taken:
        assert rebuilt(state_at(history, moment)) == snapshot_of(view), moment
    [wait] = [a for a in attempts(history) if a.wait]
    assert (wait.step, wait.outcome, wait.worker) == ("label", "succeeded", None)


def test_attempts_from_the_log_tell_the_journey(journey):
    found = [(a.step, a.role, a.attempt, a.worker, a.outcome) for a in attempts(journey["events"])]
    assert found == [
        ("reserve", "forward", 1, "w-dead", "failed, will retry"),
        ("reserve", "forward", 2, "w-test", "succeeded"),
        ("charge", "forward", 1, "w-test", "failed, will retry"),
        ("notify", "forward", 1, "w-test", "succeeded"),
        ("charge", "forward", 2, "w-test", "failed"),
        ("reserve", "compensate", 1, "w-test", "succeeded"),
    ]
    first = attempts(journey["events"])[0]
    assert "no heartbeat within the lease" in first.error
    assert first.note == "its late result (succeeded) was discarded"


# -- GET /v1/runs/{id}/events filters ------------------------------------------------------

@pytest.mark.parametrize("query, check", [
    ({}, lambda e: True),
    ({"type": "compensation."}, lambda e: e["type"].startswith("compensation.")),
    ({"type": "compensation"}, lambda e: e["type"].startswith("compensation.")),
    ({"type": "step.failed"}, lambda e: e["type"] == "step.failed"),
    ({"type": "run"}, lambda e: e["type"].startswith("run.")),
    ({"step": "charge"}, lambda e: e["step"] == "charge"),
    ({"step": "reserve", "type": "step.running"},
     lambda e: (e["step"], e["type"]) == ("reserve", "step.running")),
    ({"type": "step.fail"}, lambda e: False),  # a type, or a family ending in ".", not any prefix
])
def test_event_filters_keep_the_matching_events_oldest_first(client, journey, query, check):
    everything = client.get(f"/v1/runs/{journey['id']}/events").get_json()["events"]
    response = client.get(f"/v1/runs/{journey['id']}/events", query_string=query)
    assert response.status_code == 200
    found = response.get_json()["events"]
    assert found == [e for e in everything if check(e)]
    assert found or query == {"type": "step.fail"}


def test_event_filters_on_an_unknown_run_are_a_404_and_bad_ones_a_422(client, journey):
    assert client.get(f"/v1/runs/{uuid.uuid4()}/events?type=run.").status_code == 404
    for query, field in (("step=", "step"), ("type=a%01b", "type"), ("type=" + "x" * 61, "type")):
        response = client.get(f"/v1/runs/{journey['id']}/events?{query}")
        assert response.status_code == 422 and field in response.get_json()["errors"]


# -- the CLI ---------------------------------------------------------------------------------

def cli(db_url: str, *args: str):
    return CliRunner().invoke(main, list(args), env={"SAGA_DATABASE_URL": db_url},
                              catch_exceptions=False)


def test_cli_runs_prints_one_line_per_matching_run(db_url, seeded):
    result = cli(db_url, "runs", "--saga", "shop", "--status", "compensated", "--error", "declined",
                 "--since", stamp(seeded["ok1"]["created_at"]), "--until", "2100-01-01T00:00")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == [seeded["declined2"]["id"],
                                                   seeded["declined1"]["id"]]
    assert all("shop v1  compensated" in line and "card declined" in line for line in lines)


def test_cli_runs_filters_by_step_and_pages_with_a_cursor(db_url, seeded):
    first = CliRunner().invoke(main, ["runs", "--step", "ship", "--limit", "2"],
                               env={"SAGA_DATABASE_URL": db_url})
    assert first.exit_code == 0
    assert [line.split()[0] for line in first.stdout.splitlines()] == [
        seeded["ok3"]["id"], seeded["ok2"]["id"]]
    cursor = first.stderr.split("--cursor ")[1].strip()
    rest = cli(db_url, "runs", "--step", "ship", "--step-status", "succeeded", "--cursor", cursor)
    assert [line.split()[0] for line in rest.output.splitlines()] == [seeded["ok1"]["id"]]


@pytest.mark.parametrize("args, message", [
    (["--since", "25:99"], "'25:99' is not a time"),
    (["--until", "tomorrow"], "is not a time: give HH:MM"),
    (["--step-status", "failed"], "needs --step"),
    (["--version", "2"], "needs --saga"),
    (["--status", "lost"], "'lost' is not one of"),
])
def test_cli_runs_refuses_bad_options_clearly(db_url, args, message):
    result = CliRunner().invoke(main, ["runs", *args], env={"SAGA_DATABASE_URL": db_url})
    assert result.exit_code == 2 and message in result.output, result.output


def test_cli_runs_help_says_what_a_time_is(db_url):
    text = cli(db_url, "runs", "--help").output
    assert "HH:MM" in text and "ISO 8601" in text and "local time" in text


def test_cli_show_prints_each_attempt_with_worker_outcome_and_error(db_url, journey):
    result = cli(db_url, "show", journey["id"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"run {journey['id']}  pay v1  COMPENSATED"
    assert lines[1].startswith("  started  ") and "finished" in lines[1]
    assert "error    step 'charge' failed: NonRetryable: card declined" in lines[2]
    body = "\n".join(lines[3:])
    for expected in ("w-dead  failed, will retry", "no heartbeat within the lease", "w-test  succeeded",
                     "w-test  failed, will retry at", "error: ConnectionError: Bank unavailable",
                     "w-test  failed  error: NonRetryable: card declined: over the limit",
                     "its late result (succeeded) was discarded", "compensation reserve"):
        assert expected in body, body
    assert sum(" → " in line for line in lines) == 6


def test_cli_show_at_a_moment_prints_the_state_then(db_url, journey):
    moment, view = next((t, v) for t, v in journey["taken"] if v["status"] == "compensating")
    result = cli(db_url, "show", journey["id"], "--at", moment.isoformat())
    assert result.exit_code == 0, result.output
    assert "status   COMPENSATING" in result.output
    for step in view["steps"] + view["compensations"]:
        assert f" {step['status']}" in result.output
    assert "compensation reserve" in result.output


def test_cli_show_refuses_an_unknown_run_and_a_bad_time(db_url, journey):
    unknown = CliRunner().invoke(main, ["show", str(uuid.uuid4())], env={"SAGA_DATABASE_URL": db_url})
    assert unknown.exit_code == 1 and "no run has id" in unknown.output
    bad = CliRunner().invoke(main, ["show", journey["id"], "--at", "noon"],
                             env={"SAGA_DATABASE_URL": db_url})
    assert bad.exit_code == 2 and "'noon' is not a time" in bad.output


# -- retention -----------------------------------------------------------------------------

def test_prune_deletes_old_finished_runs_with_their_history_in_batches(new_database):
    """Given finished, failed and running runs, When pruned in batches of 2, Then the
    finished ones go with their steps and events; failed and running ones stay."""
    system = build(Settings(database_url=new_database(), broker_url="memory://", inline_steps=0),
                   Registry(SAGAS))
    store = system.store
    done = [start(system, "misc") for _ in range(3)]
    for run_id in done:
        drive(system, run_id)
    failed = start(system, "brittle", decline=True)
    assert drive(system, failed)["status"] == "failed"
    running = start(system, "misc")
    before_any = store.get_run(done[0])["created_at"]

    assert store.prune_finished(before_any, batch=2) == 0
    cutoff = store.now()
    assert [store.prune_finished(cutoff, batch=2) for _ in range(3)] == [2, 1, 0]
    with store.engine.connect() as conn:
        left = {table: conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE run_id = ANY(:ids)"),
                                    {"ids": done}).scalar_one() for table in ("steps", "events")}
        assert left == {"steps": 0, "events": 0}
        assert set(conn.execute(sa.text("SELECT id FROM runs")).scalars()) == {failed, running}
    assert store.prune_finished(cutoff, batch=10, include_failed=True) == 1
    assert store.get_run(running)["status"] == "running"
    store.close()


# -- SQLite, the embedded default, runs the same queries ----------------------------------

def test_filters_and_prune_work_on_sqlite(tmp_path):
    from saga import migrations

    url = f"sqlite:///{tmp_path / 'saga.db'}"
    migrations.upgrade(url)
    system = build(Settings(database_url=url, broker_url="memory://", inline_steps=0),
                   Registry(SAGAS))
    store = system.store
    ok_run = start(system, "shop", 1)
    drive(system, ok_run)
    declined = start(system, "shop", 1, decline=True)
    drive(system, declined)
    fresh = start(system, "shop", version=2)
    created = store.get_run(declined)["created_at"]

    def ids(**filters) -> list[str]:
        return [r["id"] for r in store.list_runs(limit=10, **filters)[0]]

    assert ids() == [fresh, declined, ok_run]
    assert ids(saga="shop", version=1) == [declined, ok_run]
    assert ids(error="CARD declined") == [declined]
    assert ids(step="charge", step_status="failed") == [declined]
    assert ids(started_after=created) == [fresh, declined]
    assert ids(started_before=created.astimezone(timezone(timedelta(hours=-7)))) == [ok_run]
    assert ids(finished_after=created) == [declined]
    page, cursor = store.list_runs(limit=2)
    assert [r["id"] for r in store.list_runs(limit=2, cursor=cursor)[0]] == [ok_run]
    assert [e["type"] for e in store.events(declined, type="run")] == [
        "run.started", "run.compensating", "run.compensated"]
    assert store.prune_finished(store.now(), batch=10) == 2
    assert ids() == [fresh]
    store.close()


# -- a million events: indexes and timings ---------------------------------------------------

RUNS, EVENTS_PER_RUN = 50_000, 20
BULK = [
    # 50,000 runs over 30 days: 90% succeeded, 4% compensated, 1% failed, 5% running.
    f"""INSERT INTO runs (id, saga, version, shape, status, input, error, created_at, updated_at,
                          finished_at)
    SELECT lpad(to_hex(g), 8, '0') || '-0000-4000-8000-000000000000', 'saga_' || (g % 5),
           1 + g % 3, 'x',
           CASE WHEN g % 100 < 90 THEN 'succeeded' WHEN g % 100 < 94 THEN 'compensated'
                WHEN g % 100 < 95 THEN 'failed' ELSE 'running' END,
           '{{}}'::jsonb,
           CASE WHEN g % 100 BETWEEN 90 AND 94
                THEN 'step ''charge'' failed: NonRetryable: card declined #' || g END,
           now() - interval '30 days' + g * interval '50 s',
           now() - interval '30 days' + g * interval '50 s',
           CASE WHEN g % 100 < 95 THEN now() - interval '30 days' + g * interval '50 s'
                                       + interval '3 s' END
    FROM generate_series(1, {RUNS}) g""",
    """INSERT INTO steps (run_id, name, role, status, attempt, fence, dispatches, error,
                          queued_at, started_at, finished_at)
    SELECT r.id, s.name, s.role,
           CASE WHEN r.status IN ('compensated', 'failed') AND s.name = 'charge'
                     AND s.role = 'forward' THEN 'failed'
                WHEN r.status = 'running' AND s.name = 'ship' THEN 'running'
                ELSE 'succeeded' END,
           1, 1, 1,
           CASE WHEN r.status IN ('compensated', 'failed') AND s.name = 'charge'
                     AND s.role = 'forward' THEN 'NonRetryable: card declined #' || r.id END,
           r.created_at, r.created_at, r.finished_at
    FROM runs r JOIN (VALUES ('reserve', 'forward'), ('charge', 'forward'), ('ship', 'forward'),
                             ('email', 'forward'), ('reserve', 'compensate')) s(name, role)
      ON s.role = 'forward' OR r.status IN ('compensated', 'failed')""",
    f"""INSERT INTO events (run_id, at, type, step, role, attempt, worker, data)
    SELECT r.id, r.created_at + e * interval '100 ms',
           CASE WHEN e = 0 THEN 'run.started' WHEN e = {EVENTS_PER_RUN - 1} THEN 'run.succeeded'
                WHEN e % 3 = 1 THEN 'step.queued' WHEN e % 3 = 2 THEN 'step.running'
                ELSE 'step.succeeded' END,
           CASE WHEN e IN (0, {EVENTS_PER_RUN - 1}) THEN NULL ELSE 'step_' || (e / 3) END,
           CASE WHEN e IN (0, {EVENTS_PER_RUN - 1}) THEN NULL ELSE 'forward' END,
           CASE WHEN e IN (0, {EVENTS_PER_RUN - 1}) THEN NULL ELSE 1 END,
           CASE WHEN e % 3 = 2 THEN 'worker-' || (e % 7) END,
           CASE WHEN e % 3 = 2 THEN jsonb_build_object('fence', 1) ELSE '{{}}'::jsonb END
    FROM (SELECT id, created_at FROM runs ORDER BY id) r,
         LATERAL generate_series(0, {EVENTS_PER_RUN - 1}) e""",
]


JOINS_STEPS = {"step charge failed", "step nobody has", "error: common", "error: one run",
               "error: nowhere", "all combined"}


def scans(plan: dict) -> list[tuple[str, str | None]]:
    """(node type, relation or index) of every node of an EXPLAIN (FORMAT JSON) plan."""
    found = [(plan["Node Type"], plan.get("Relation Name") or plan.get("Index Name"))]
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


@pytest.mark.slow
def test_history_queries_use_indexes_and_stay_fast_over_a_million_events(new_database):
    """Given 1,000,000 events of 50,000 runs, When each listing filter and the event query
    run, Then no plan reads events or steps sequentially (nor runs, unless it joins steps),
    a run's events come by `events_run`, and each answers well under 100 ms."""
    url = new_database()
    store = Store(url)
    began = time.perf_counter()
    with store.engine.begin() as conn:
        try:  # skip the per-row foreign-key triggers while loading, where allowed
            with conn.begin_nested():
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        except sa.exc.DBAPIError:
            pass
        for statement in BULK:
            step_began = time.perf_counter()
            conn.execute(sa.text(statement))
            print(f"  {statement.split()[2]:<8} {time.perf_counter() - step_began:5.1f} s")
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
        total = conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
        some_run = conn.exec_driver_sql(
            "SELECT id FROM runs ORDER BY created_at OFFSET 20000 LIMIT 1").scalar_one()
        rare = conn.exec_driver_sql("SELECT error FROM runs WHERE error IS NOT NULL "
                                    "ORDER BY created_at LIMIT 1 OFFSET 300").scalar_one()
    print(f"\nloaded {total:,} events of {RUNS:,} runs in {time.perf_counter() - began:.1f} s")
    assert total == RUNS * EVENTS_PER_RUN

    now = store.now()
    week_ago = now - timedelta(days=7)
    _, cursor = store.list_runs(status="compensated", limit=50)
    queries: dict[str, Callable[[], object]] = {
        "newest page": lambda: store.list_runs(),
        "saga": lambda: store.list_runs("saga_3"),
        "saga + version": lambda: store.list_runs("saga_3", version=2),
        "status failed": lambda: store.list_runs(status="failed"),
        "status page 2": lambda: store.list_runs(status="compensated", cursor=cursor),
        "started: one hour": lambda: store.list_runs(
            started_after=week_ago, started_before=week_ago + timedelta(hours=1)),
        "finished: one hour": lambda: store.list_runs(
            finished_after=week_ago, finished_before=week_ago + timedelta(hours=1)),
        "step charge failed": lambda: store.list_runs(step="charge", step_status="failed"),
        "step nobody has": lambda: store.list_runs(step="no_such_step"),
        "error: common": lambda: store.list_runs(error="DECLINED"),
        "error: one run": lambda: store.list_runs(error=rare.split("failed: ")[1]),
        "error: nowhere": lambda: store.list_runs(error="no such error text"),
        "all combined": lambda: store.list_runs(
            "saga_2", "compensated", version=1, started_after=now - timedelta(days=20),
            finished_before=now - timedelta(days=2), step="charge", step_status="failed",
            error="declined"),
        "events of a run": lambda: store.events(some_run),
        "events: step + type": lambda: store.events(some_run, step="step_2", type="step."),
    }
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append((statement, parameters))

    timings: dict[str, float] = {}
    for name, query in queries.items():
        query()  # warm: plan caches, buffers
        samples = []
        for _ in range(5):
            began = time.perf_counter()
            query()
            samples.append((time.perf_counter() - began) * 1000)
        timings[name] = statistics.median(samples)
        sa.event.listen(store.engine, "before_cursor_execute", record)
        statements.clear()
        query()
        sa.event.remove(store.engine, "before_cursor_execute", record)
        with store.engine.connect() as conn:
            for statement, parameters in statements:
                if "clock_timestamp" in statement:
                    continue
                [[plan]] = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement,
                                                parameters).one()
                nodes = scans(plan["Plan"])
                print(f"  {name:<20} {sorted({n for n in nodes if n[1]})}")
                assert ("Seq Scan", "events") not in nodes, (name, plan)
                assert ("Seq Scan", "steps") not in nodes, (name, plan)
                if name in JOINS_STEPS:  # the planner may hash-join a whole (small) runs table
                    continue
                assert ("Seq Scan", "runs") not in nodes, (name, plan)
                if "FROM events" in statement:
                    assert any(n[1] == "events_run" for n in nodes), (name, plan)
    for name, ms in timings.items():
        print(f"  {name:<20} {ms:7.2f} ms")
    slow = {name: ms for name, ms in timings.items() if ms >= 100}
    assert not slow, slow
    store.close()
