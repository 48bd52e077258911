"""The console's overview, sagas and schedules pages on real PostgreSQL, signed in through
the login form: the numbers they show, and pause, resume and backfill with the API's scopes.

The runs are made by the engine itself (start, each step run in-process with
`Worker.run_step`, park) on Kombu's in-memory broker. A `MovableClock` (the database's
time plus an offset) gives runs and steps known durations: a step moves it as it works.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import flask
import pytest
import sqlalchemy as sa

from saga import NonRetryable, Retry, Saga, Schedule, Step, WaitForSignal
from saga.api import create_app
from saga.registry import Registry
from saga.run import Role
from saga.schedules.cron import schedule_key
from saga.settings import Settings
from saga.store.schedules import backfills
from saga.store.tokens import TokenStore
from saga.system import System, build
from saga.testing.clock import MovableClock
from tests.auth import create_token
from tests.conftest import template_copies

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
CLOCK = MovableClock()  # the module's system reads it; a step moves it to take time


def ok(ctx):
    return {"done": ctx.step}


def slow(ctx):
    CLOCK.advance(timedelta(seconds=5))
    return {"done": ctx.step}


def decline(ctx):
    raise NonRetryable("card declined")


def broken_undo(ctx):
    raise RuntimeError("warehouse API gone")


def flaky(ctx):
    if ctx.attempt == 1:
        raise RuntimeError("connection reset")
    return {"done": ctx.step}


def gateway(ctx):
    raise TimeoutError("the gateway did not answer")  # a timeout: it may have charged


def report(ctx):
    if ctx.input["logical_time"] == "2024-03-30T03:00:00Z":
        raise NonRetryable("the source was down")
    return {"reported": ctx.input["logical_time"]}


ORDER_V1 = Saga("order", version=1, steps=[Step("reserve", ok), WaitForSignal("label"),
                                           Step("ship", ok)])
ORDER_V2 = Saga("order", version=2, timeout=timedelta(days=3), steps=[
    Step("reserve", ok, compensate=ok, retry=Retry(attempts=5, first_delay=timedelta(seconds=2))),
    Step("pack", slow, timeout=timedelta(seconds=30), pivot=True), Step("ship", ok)])
SAGAS = [
    ORDER_V1, ORDER_V2,
    Saga("declined", steps=[Step("hold", ok, compensate=ok), Step("charge", decline)]),
    # Its compensation gives up at once, so the run ends `failed`.
    Saga("brittle", steps=[Step("hold", ok, compensate=broken_undo,
                                compensate_retry=Retry(attempts=1)), Step("charge", decline)]),
    Saga("flaky", steps=[Step("call", flaky, retry=Retry(attempts=3, first_delay=timedelta(0)))]),
    Saga("doubtful", steps=[Step("charge", gateway,
                                 retry=Retry(attempts=2, first_delay=timedelta(hours=1)))]),
    Saga("nightly", steps=[Step("report", report)], schedule=Schedule("0 3 * * *")),
    Saga("hourly", steps=[Step("tick", ok)], schedule=Schedule("0 * * * *", "Europe/Paris")),
]
MARCH = [f"2024-03-{day}T03:00:00Z" for day in (28, 29, 30, 31)]


def drive(system: System, run_id: str) -> str:
    """Run the run's queued steps in-process until none is queued; its status then."""
    for _ in range(20):
        run = system.store.get_run(run_id)
        queued = [(s["name"], role) for role, key in ((Role.FORWARD, "steps"),
                                                     (Role.COMPENSATE, "compensations"))
                  for s in run[key] if s["status"] == "queued"]
        if not queued:
            return str(run["status"])
        name, role = queued[0]
        system.worker.run_step(run_id, name, role, run["saga"], run["version"], worker="w-test")
    raise AssertionError(f"run {run_id} kept queueing steps")


def run(system: System, saga: str, input: Any = None, took: int = 0, **options: Any) -> str:
    """Start a run, let `took` seconds pass, run its steps; its status."""
    run_id, _ = system.engine.start(saga, {} if input is None else input, **options)
    CLOCK.advance(timedelta(seconds=took))
    return drive(system, run_id)


@pytest.fixture(scope="module")
def system(pg_template: str) -> Iterator[System]:
    with template_copies(pg_template, "console_pages") as make:
        settings = Settings(database_url=make(), broker_url="memory://", inline_steps=0)
        built = build(settings, Registry(SAGAS), clock=CLOCK)
        yield built
        built.store.close()


@pytest.fixture(scope="module")
def made(system: System) -> dict[str, Any]:
    """Runs in every state the pages count; what they came to."""
    ended = [run(system, "order", took=took, version=2) for took in (10, 20, 30)]
    ended += [run(system, saga) for saga in ("declined", "brittle", "flaky", "doubtful")]
    assert ended == ["succeeded"] * 3 + ["compensated", "failed", "succeeded", "running"]
    waiting, _ = system.engine.start("order", {}, version=1)
    assert drive(system, waiting) == "running"  # at its signal: v1 has a run in flight
    parked, _ = system.engine.start("declined", {})
    system.engine.park(parked, "waiting for a person")
    nightly_29, _ = system.engine.start("nightly", {"logical_time": MARCH[1]},
                                        schedule_key(datetime(2024, 3, 29, 3, tzinfo=UTC)))
    assert drive(system, nightly_29) == "succeeded"
    return {"waiting": waiting, "parked": parked, "nightly_29": nightly_29}


@pytest.fixture(scope="module")
def app(system: System) -> flask.Flask:
    return create_app(system.settings, system)


def signed_in(app: flask.Flask, system: System, scope: str, name: str) -> Any:
    """A browser signed in through the login form with a new token `name` of `scope`."""
    browser = app.test_client()
    form = CSRF.search(browser.get("/ui/login").text).group(1)
    token = create_token(system.store.engine, scope, name)
    assert browser.post("/ui/login", data={"token": token, "csrf_token": form}).status_code == 302
    return browser


@pytest.fixture(scope="module")
def reader(app: flask.Flask, system: System, made: dict[str, Any]) -> Any:
    return signed_in(app, system, "read", "console-read")


@pytest.fixture(scope="module")
def admin(app: flask.Flask, system: System, made: dict[str, Any]) -> Any:
    return signed_in(app, system, "admin", "console-admin")


def page(client: Any, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, response.text
    return response.text


def post(client: Any, path: str, data: dict[str, Any], status: int | None = 302) -> Any:
    """A console form as sent: with the session's CSRF token (from the Schedules page)."""
    token = CSRF.search(page(client, "/ui/schedules")).group(1)
    response = client.post(path, data={**data, "csrf_token": token})
    assert status is None or response.status_code == status, response.text
    return response


def secs(shown: str) -> float:
    """`25.1 s` as 25.1: real time adds a few ms to the clock's moves, more on a busy host."""
    number, unit = shown.split()
    assert unit == "s", shown
    return float(number)


def tiles(text: str) -> dict[str, str]:
    return {label: n for n, label in re.findall(
        r'<span class="n">([^<]+)</span><span class="label">([^<]+)</span>', text)}


def rows(text: str, section: str) -> list[list[str]]:
    """The table rows of a section (by its heading's id), each cell's text."""
    part = text.split(f'id="{section}"', 1)[1].split("</section>", 1)[0]
    return [[" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in
             re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", part.split("<tbody>", 1)[1], re.S)]


# -- the overview -------------------------------------------------------------------------

def test_the_overview_counts_runs_per_minute_and_the_runs_waiting_for_a_person(reader):
    """Given runs in every state, When the overview is read, Then the chart of runs started
    per minute counts each status, and the tiles count parked, failed and in doubt."""
    text = page(reader, "/ui/")
    assert ('aria-label="Runs started per minute, by status now: 5 succeeded, 3 running, '
            '1 compensated, 1 failed"') in text
    assert ('aria-label="Runs ended per minute, by how they ended: 5 succeeded, '
            '1 compensated, 1 failed"') in text
    assert tiles(text) == {"parked": "1", "failed": "1", "in doubt": "1"}
    assert 'href="/ui/runs?status=parked"' in text


def test_the_overview_lists_the_slowest_and_the_most_failing_steps(reader):
    """Given a step that takes 5 s, a flaky one retried once, declined charges and a
    compensation that gave up, Then each is in its table, slowest and most failing first."""
    text = page(reader, "/ui/")
    slowest = rows(text, "slowest")
    assert slowest[0][:2] == ["order", "pack"] and slowest[0][4] == "3"
    assert 5.0 <= secs(slowest[0][2]) <= secs(slowest[0][3]) < 5.5
    failing = {(r[0], r[1]): r[2:] for r in rows(text, "failing")}
    assert failing[("flaky", "call")] == ["1", "0", "1"]
    assert failing[("declined", "charge")] == ["1", "1", "1"]
    assert failing[("brittle", "hold (compensation)")] == ["1", "1", "1"]
    assert ("order", "reserve") not in failing
    assert page(reader, "/ui/?window=day").count("<tr>") == text.count("<tr>")


def test_the_overview_refuses_a_window_it_does_not_have(reader):
    assert "window must be one of hour, day" in page(reader, "/ui/?window=week", 400)


# -- sagas --------------------------------------------------------------------------------

def test_the_sagas_page_shows_each_version_with_its_runs_in_flight_and_durations(reader):
    """Given order v1 with a run at its signal and v2 with runs of 15, 25 and 35 s, Then v1
    cannot retire yet, and v2 shows its success rate, p50 and p99 (interpolated)."""
    text = page(reader, "/ui/sagas")
    versions = {r[0]: r[1:] for r in rows(text, "saga-order")}
    assert versions["v2 newest"][:3] == ["0", "3", "100 %"]
    assert 25.0 <= secs(versions["v2 newest"][3]) < 25.5  # 15, 25 and 35 s
    assert 34.8 <= secs(versions["v2 newest"][4]) < 35.3  # interpolated, as percentile_cont
    assert versions["v1"] == ["1", "0", "-", "-", "-"]  # in flight: not "can retire"
    assert 'href="/ui/runs?saga=order&amp;version=1"' in text
    assert text.count("<svg") >= len({s.name for s in SAGAS})  # each saga's graph
    assert rows(text, "saga-flaky")[0][:4] == ["v1 newest", "0", "1", "100 %"]


def test_a_version_page_shows_its_definition(reader):
    text = page(reader, "/ui/sagas/order/2")
    assert tiles(text)["in flight"] == "0" and 25.0 <= secs(tiles(text)["p50 duration"]) < 25.5
    steps = {r[0]: r for r in rows(text, "steps")}
    assert steps["pack pivot"][1] == "reserve"
    assert "timeout: 30.0 s" in steps["pack pivot"][4]
    assert "retry: 5 attempts, waiting 2.0 s" in steps["reserve"][4]
    assert steps["reserve"][3] == "tests.integration.test_console_pages:ok"
    assert "v2 is the newest" in page(reader, "/ui/sagas/order/1")
    assert "has no version 9" in page(reader, "/ui/sagas/order/9", 404)


# -- schedules ----------------------------------------------------------------------------

def test_the_schedules_page_lists_the_next_firings_without_buttons_for_a_reader(reader):
    text = page(reader, "/ui/schedules")
    nightly = text.split('id="schedule-nightly"', 1)[1].split("</tr>", 1)[0]
    firings = re.findall(r'<time datetime="([^"]+)">', nightly)
    assert len(firings) == 5
    assert all(t.endswith("03:00:00+00:00") for t in firings)
    hourly = text.split('id="schedule-hourly"', 1)[1].split("</tr>", 1)[0]
    assert "CET)" in hourly or "CEST)" in hourly  # its own time zone beside UTC
    assert "Pause</button>" not in text and "Dry run" not in text


def test_an_admin_pauses_and_resumes_a_schedule_as_its_token(admin, reader, system):
    """Given a reader and an admin, When the reader posts pause, Then 403 and nothing
    changes; When the admin pauses, Then the schedule is paused by the admin's token and
    shows no next firing; When resumed, Then its firings are back."""
    post(reader, "/ui/schedules/hourly/pause", {}, status=403)
    assert not system.scheduler.state("hourly")["paused"]
    assert admin.post("/ui/schedules/hourly/pause").status_code == 400  # no CSRF token
    post(admin, "/ui/schedules/hourly/pause", {})
    state = system.scheduler.state("hourly")
    assert state["paused"] and state["paused_by"] == "console-admin"
    text = page(admin, "/ui/schedules")
    assert "Schedule of hourly paused." in text
    assert "none while paused" in text.split('id="schedule-hourly"', 1)[1].split("</tr>")[0]
    post(admin, "/ui/schedules/hourly/resume", {})
    assert not system.scheduler.state("hourly")["paused"]
    assert "Schedule of hourly resumed." in page(admin, "/ui/schedules")
    post(admin, "/ui/schedules/order/pause", {}, status=404)


# -- backfills ----------------------------------------------------------------------------

def backfill_rows(system: System) -> int:
    with system.store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(backfills)).scalar_one()


def test_a_backfill_dry_run_shows_what_it_would_start_then_starts_it(admin, system, made):
    """Given nightly's firing of March 29 ran, When an admin dry-runs March 28 to 31, Then
    the page lists the three runs it would start and the skipped window, unchanged, and
    nothing is written; When confirmed, Then the backfill starts them as the admin, and
    its page counts the runs that succeeded and the one that failed."""
    form = {"saga": "nightly", "from": "2024-03-28", "to": "2024-03-31T23:00", "max_running": "5"}
    text = post(admin, "/ui/backfills/plan", form, status=200).text
    assert "It would start <strong>3 runs</strong>" in text
    assert [r[0] for r in rows(text, "would-start")] == [
        f"schedule:{t}" for t in (MARCH[0], MARCH[2], MARCH[3])]
    [skipped] = rows(text, "already-ran")
    assert skipped[:2] == ["schedule:2024-03-29T03:00:00Z", "unchanged"]
    assert f'href="/ui/runs/{made["nightly_29"]}"' in text
    assert 'name="max_runs" value="3"' in text and backfill_rows(system) == 0

    started = post(admin, "/ui/backfills", {**form, "max_runs": "3"})
    backfill_id = started.headers["Location"].rsplit("/", 1)[1]
    with system.store.engine.connect() as conn:
        run_ids = list(conn.execute(sa.text(
            "SELECT run_id FROM backfill_items WHERE backfill_id = :b ORDER BY seq"),
            {"b": backfill_id}).scalars())
    assert len(run_ids) == 3 and all(run_ids)
    assert [drive(system, run_id) for run_id in run_ids] == ["succeeded", "compensated",
                                                             "succeeded"]
    text = page(admin, f"/ui/backfills/{backfill_id}")
    counts = tiles(text)
    assert (counts["started"], counts["succeeded"], counts["failed"], counts["pending"]) == (
        "3", "2", "1", "0")
    assert rows(text, "failed") == [[run_ids[1], f"schedule:{MARCH[2]}", "compensated",
                                     "step &#39;report&#39; failed: NonRetryable: the source "
                                     "was down"]]
    assert "by console-admin" in text and "data-live" not in text  # done: no refresh
    listed = rows(page(admin, "/ui/schedules"), "backfills")
    assert listed[0][1:] == ["nightly", "done", "3 / 3", "3", "1", "0"]


def test_a_confirm_that_would_start_more_than_it_showed_starts_nothing(admin, system):
    before = backfill_rows(system)
    form = {"saga": "nightly", "from": "2024-02-01", "to": "2024-02-03T23:00", "max_runs": "2"}
    text = post(admin, "/ui/backfills", form, status=409).text
    assert "would now start 3 runs, more than the 2 you confirmed" in text
    assert backfill_rows(system) == before


@pytest.mark.parametrize(("form", "message"), [
    ({"saga": "nightly", "from": "2024-03-05", "to": "2024-03-01"}, "from: 2024-03-05T00:00:00Z is after"),
    ({"saga": "order", "from": "2024-03-01", "to": "2024-03-02"}, "has no schedule"),
    ({"saga": "order", "inputs": "{not json"}, "line 1: not JSON"),
    ({"saga": "nosuch", "inputs": "{}"}, "no saga named"),
    ({"saga": "nightly", "from": "2024-03-01", "to": "2024-03-02", "max_running": "0"},
     "max_running: A whole number from 1"),
])
def test_a_bad_backfill_is_refused_naming_what_is_wrong(admin, system, form, message):
    before = backfill_rows(system)
    text = post(admin, "/ui/backfills/plan", form, status=422).text
    assert message in text and 'role="alert"' in text
    assert backfill_rows(system) == before


def test_a_reader_can_neither_dry_run_nor_start_a_backfill(reader, system):
    """As the API: a backfill, even its dry run, needs the admin scope."""
    form = {"saga": "nightly", "from": "2024-01-01", "to": "2024-01-02", "max_runs": "2"}
    post(reader, "/ui/backfills/plan", form, status=403)
    post(reader, "/ui/backfills", form, status=403)
    assert "No such backfill" in page(reader, "/ui/backfills/nothing-here", 404)


def test_a_revoked_token_sees_no_page(app, system, made):
    browser = signed_in(app, system, "read", "leaver")
    assert browser.get("/ui/sagas").status_code == 200
    TokenStore(system.store.engine).revoke("leaver")
    assert browser.get("/ui/sagas").status_code == 302



def test_backfill_dry_runs_count_against_the_tokens_rate_limit(system, made):
    """As the API's backfills: past SAGA_RATE_LIMIT the console answers 429, nothing planned."""
    settings = dataclasses.replace(system.settings, rate_limit="2/minute",
                                   rate_limit_storage="memory://")
    browser = signed_in(create_app(settings, system), system, "admin", "hasty")
    form = {"saga": "nightly", "from": "2024-01-01", "to": "2024-01-02"}
    assert [post(browser, "/ui/backfills/plan", form, status=None).status_code
            for _ in range(3)] == [200, 200, 429]
