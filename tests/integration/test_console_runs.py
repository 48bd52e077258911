"""The console's runs page on real PostgreSQL: filters, the search box, counts per status,
cursor pages and the live fragment, signed in with a read token through the login form.

The runs are made by the engine itself (start, each step run in-process with
`Worker.run_step`, cancel, park) on Kombu's in-memory broker: the page only reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import flask
import pytest
from marshmallow import Schema, fields

from saga import NonRetryable, Parallel, Saga, Step, WaitForSignal
from saga.api import create_app
from saga.api.console import runs as runs_page
from saga.registry import Registry
from saga.run import Role
from saga.settings import Settings
from saga.store import search
from saga.store.search import RunFilter
from saga.system import System, build
from tests.auth import create_token
from tests.conftest import template_copies

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
RUN_LINK = re.compile(r'href="/ui/runs/([0-9a-f-]{36})"')


class OrderInput(Schema):
    order_id = fields.Str(required=True)
    email = fields.Str()
    amount_cents = fields.Int()
    card = fields.Str(metadata={"sensitive": True})


def ok(ctx):
    return {"done": ctx.step}


def decline(ctx):
    raise NonRetryable("card declined")


ORDER = [Saga("order", version=v, input=OrderInput, steps=[
    Step("reserve", ok, compensate=ok), Step("charge", ok)] + ([Step("email", ok)] if v == 2 else []))
    for v in (1, 2)]
DECLINED = Saga("declined", steps=[Step("reserve", ok, compensate=ok), Step("charge", decline)])
PARCEL = Saga("parcel", steps=[Step("pack", ok), WaitForSignal("label", timeout=timedelta(hours=1)),
                               Step("send", ok)])


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


def order(n: int, **extra: Any) -> dict[str, Any]:
    return {"order_id": f"o-{n}", "email": f"buyer{n}@example.com", "amount_cents": 1000 + n,
            "card": f"4242-{n}", **extra}


@pytest.fixture(scope="module")
def system(pg_template: str) -> Iterator[System]:
    with template_copies(pg_template, "console_runs") as make:
        settings = Settings(database_url=make(), broker_url="memory://", inline_steps=0)
        built = build(settings, Registry([*ORDER, DECLINED, PARCEL]))
        yield built
        built.store.close()


@pytest.fixture(scope="module")
def made(system: System) -> dict[str, str]:
    """One run in each status, oldest first; name -> run id."""
    engine, runs = system.engine, {}
    runs["succeeded"] = engine.start("order", order(1), idempotency_key="ticket-7", version=1)[0]
    drive(system, runs["succeeded"])
    runs["v2"] = engine.start("order", order(2), version=2)[0]
    drive(system, runs["v2"])
    runs["compensated"] = engine.start("declined", {"order_id": "o-3"})[0]
    drive(system, runs["compensated"])
    runs["waiting"] = engine.start("parcel", {"order_id": "o-4", "weight": 1042, "carrier": "dhl"})[0]
    drive(system, runs["waiting"])
    runs["cancelled"] = engine.start("parcel", {"order_id": "o-5", "carrier": "dhl"})[0]
    engine.cancel(runs["cancelled"], actor="test")
    drive(system, runs["cancelled"])
    runs["parked"] = engine.start("parcel", {"order_id": "o-6", "carrier": "dhl"})[0]
    engine.park(runs["parked"], "waiting for parcel v9 to be loaded again")
    runs["running"] = engine.start("parcel", {"order_id": "o-7", "carrier": "dhl"})[0]  # its first step queued
    statuses = {name: system.store.get_run(run_id)["status"] for name, run_id in runs.items()}
    assert statuses == {"succeeded": "succeeded", "v2": "succeeded", "compensated": "compensated",
                        "waiting": "running", "cancelled": "cancelled", "parked": "running",
                        "running": "running"}
    return runs


@pytest.fixture(scope="module")
def app(system: System) -> flask.Flask:
    return create_app(system.settings, system)


@pytest.fixture
def client(app: flask.Flask, system: System, made: dict[str, str]) -> Any:
    """A browser signed in with a read token through the login form."""
    browser = app.test_client()
    form = CSRF.search(browser.get("/ui/login").text).group(1)
    response = browser.post("/ui/login", data={
        "token": create_token(system.store.engine, "read"), "csrf_token": form})
    assert response.status_code == 302
    return browser


def listed(client: Any, query: str = "", **headers: str) -> list[str]:
    response = client.get(f"/ui/runs{query}", headers=headers)
    assert response.status_code == 200, response.text
    return RUN_LINK.findall(response.text)


def counts(client: Any, query: str = "") -> dict[str, int]:
    text = client.get(f"/ui/runs{query}").text
    return {label: int(n) for n, label in re.findall(
        r'<span class="n">(\d+)</span><span class="label">([a-z]+)</span>', text)}


# -- the list, its statuses and counts ----------------------------------------------------

def test_the_list_shows_every_run_newest_first_with_counts_per_status(client, made):
    assert listed(client) == list(reversed(made.values()))
    assert counts(client) == {"all": 7, "running": 3, "waiting": 1, "compensating": 0,
                              "succeeded": 2, "compensated": 1, "failed": 0, "cancelled": 1,
                              "parked": 1}


@pytest.mark.parametrize(("status", "expected"), [
    ("running", ["running", "parked", "waiting"]),
    ("waiting", ["waiting"]),  # running, and its only unfinished step is the signal wait
    ("parked", ["parked"]),
    ("succeeded", ["v2", "succeeded"]),
    ("compensated", ["compensated"]),
    ("cancelled", ["cancelled"]),
    ("failed", []),
])
def test_each_status_keeps_its_runs(client, made, status, expected):
    assert listed(client, f"?status={status}") == [made[name] for name in expected]


def test_a_waiting_run_is_marked_waiting_in_the_list(client, made):
    text = client.get("/ui/runs?status=running").text
    row = text[text.index(made["waiting"]):text.index(made["waiting"]) + 1500]
    assert '<span class="status status-waiting">waiting</span>' in row


def test_a_run_waits_only_once_no_forward_step_is_busy(pg_template):
    """Given a run whose signal wait runs beside a step, When the step is still queued,
    Then the run is running but not waiting; When the step is done and only the wait is
    left, Then it is counted and listed as waiting (found from the waiting steps)."""
    fork = Saga("fork", steps=[Step("pack", ok), Parallel(WaitForSignal("label"),
                                                          Step("weigh", ok)), Step("send", ok)])
    with template_copies(pg_template, "console_waiting") as make:
        system = build(Settings(database_url=make(), broker_url="memory://", inline_steps=0),
                       Registry([fork]))
        try:
            store, run_id = system.store, system.engine.start("fork", {})[0]
            system.worker.run_step(run_id, "pack", Role.FORWARD, "fork", 1, worker="w-test")
            assert {s["name"]: s["status"] for s in store.get_run(run_id)["steps"]} == {
                "pack": "succeeded", "label": "waiting", "weigh": "queued"}
            assert store.count_runs(RunFilter())[search.WAITING] == 0
            assert store.search_runs(RunFilter(status="waiting"))[0] == []
            assert store.search_runs(RunFilter())[0][0]["waiting"] is False

            system.worker.run_step(run_id, "weigh", Role.FORWARD, "fork", 1, worker="w-test")
            assert store.count_runs(RunFilter())[search.WAITING] == 1
            assert [r["id"] for r in store.search_runs(RunFilter(status="waiting"))[0]] == [run_id]
            assert store.search_runs(RunFilter())[0][0]["waiting"] is True
            assert store.runs_page(RunFilter(text=run_id)).counts[search.WAITING] == 1
        finally:
            system.store.close()


# -- the search box -----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("ticket-7", ["succeeded"]),  # an idempotency key
    ("buyer2@example.com", ["v2"]),  # a string anywhere in the input
    ("o-3", ["compensated"]),
    ("1042", ["waiting"]),  # a number in the input
    ("o-", []),  # whole values only, not parts of them
    ("nobody@example.com", []),
    ('o-3" || @ == "o-4', []),  # the text is a value, never a part of the jsonpath
])
def test_the_search_finds_a_run_by_key_or_a_value_in_its_input(client, made, text, expected):
    assert listed(client, f"?q={text}") == [made[name] for name in expected]


def test_the_search_finds_a_run_by_its_id_and_counts_what_it_found(client, made):
    assert listed(client, f"?q={made['parked']}") == [made["parked"]]
    assert counts(client, f"?q={made['parked']}")["parked"] == 1
    assert counts(client, "?q=o-4") == {"all": 1, "running": 1, "waiting": 1, "compensating": 0,
                                        "succeeded": 0, "compensated": 0, "failed": 0,
                                        "cancelled": 0, "parked": 0}


def test_a_search_with_more_matches_than_read_at_once_gives_the_same_answer(system, made,
                                                                           monkeypatch):
    store = system.store
    searches = [(RunFilter(text="dhl"), 2), (RunFilter(text="dhl", status="running"), 1),
                (RunFilter(text="o-5"), 50)]
    # Read at once: the matches give the page and the counts.
    pages = [_pages(store, where, limit) for where, limit in searches]
    assert [r["id"] for r in pages[0][0].runs + pages[0][1].runs] == \
        [made[n] for n in ("running", "parked", "cancelled", "waiting")]
    monkeypatch.setattr(search, "MATCHES_READ", 1)  # too many: read newest first instead
    assert [_pages(store, where, limit) for where, limit in searches] == pages


def _pages(store: Any, where: RunFilter, limit: int) -> tuple[Any, Any]:
    first = store.runs_page(where, limit)
    return first, first.cursor and store.runs_page(where, limit, first.cursor)


def test_sensitive_input_is_shown_masked(client, made):
    text = client.get("/ui/runs?q=ticket-7").text
    assert "4242-1" not in text
    assert "&#34;card&#34;: &#34;•••&#34;" in text and "buyer1@example.com" in text


# -- the other filters and paging ---------------------------------------------------------

def test_saga_version_and_time_range_filters(client, system, made):
    assert listed(client, "?saga=order") == [made["v2"], made["succeeded"]]
    assert listed(client, "?saga=order&version=1") == [made["succeeded"]]
    waiting_at = system.store.get_run(made["waiting"])["created_at"]
    since = waiting_at.isoformat().replace("+00:00", "")  # as a datetime-local field sends it
    assert listed(client, f"?from={since}") == [made[n] for n in
                                                ("running", "parked", "cancelled", "waiting")]
    assert listed(client, f"?to={since}&saga=order") == [made["v2"], made["succeeded"]]
    assert listed(client, f"?from={since}&status=cancelled") == [made["cancelled"]]


def test_pages_follow_the_cursor_and_keep_the_filters(client, made, monkeypatch):
    monkeypatch.setattr(runs_page, "PAGE_SIZE", 2)
    seen, query = [], "?status=running"
    for _ in range(5):
        text = client.get(f"/ui/runs{query}").text
        seen += RUN_LINK.findall(text)
        older = re.search(r'href="/ui/runs(\?[^"]+)" rel="next"', text)
        if older is None:
            break
        query = older.group(1).replace("&amp;", "&")
        assert "status=running" in query
    assert seen == [made["running"], made["parked"], made["waiting"]]


def test_the_live_refresh_gets_the_list_alone_for_the_same_filters(client, made):
    response = client.get("/ui/runs?saga=parcel&status=running",
                          headers={"HX-Request": "true", "HX-Target": "runs-live"})
    assert response.status_code == 200
    assert response.text.lstrip().startswith('<div id="runs-live"')
    assert "<form" not in response.text and "<html" not in response.text
    assert 'hx-get="/ui/runs?saga=parcel&amp;status=running"' in response.text
    assert 'hx-trigger="every 3s"' in response.text
    assert RUN_LINK.findall(response.text) == [made["running"], made["parked"], made["waiting"]]


def test_the_counts_refresh_alone_and_less_often_than_the_list(client, made):
    """The list's refresh reads one page and no counts; the counts' own refresh, every
    15 s, reads the counts for the same filters and no page."""
    headers = {"HX-Request": "true", "HX-Target": "runs-counts"}
    response = client.get("/ui/runs?saga=parcel&status=running", headers=headers)
    assert response.status_code == 200
    assert response.text.lstrip().startswith('<div id="runs-counts"')
    assert 'hx-trigger="every 15s"' in response.text
    assert RUN_LINK.findall(response.text) == [] and "<table" not in response.text
    shown = {label: int(n) for n, label in re.findall(
        r'<span class="n">(\d+)</span><span class="label">([a-z]+)</span>', response.text)}
    assert shown == {"all": 4, "running": 3, "waiting": 1, "compensating": 0, "succeeded": 0,
                     "compensated": 0, "failed": 0, "cancelled": 1, "parked": 1}
    listed_alone = client.get("/ui/runs?saga=parcel", headers={**headers, "HX-Target": "runs-live"})
    assert 'class="counts"' not in listed_alone.text and RUN_LINK.findall(listed_alone.text)
    whole = client.get("/ui/runs?saga=parcel").text  # the page has both, each refreshing
    assert '<div id="runs-counts"' in whole and '<div id="runs-live"' in whole


def test_bad_filters_answer_400_and_name_what_is_wrong(client):
    response = client.get("/ui/runs?version=two&status=lost&from=yesterday")
    assert response.status_code == 400
    assert "Version must be a whole number from 1, not &#39;two&#39;." in response.text
    assert "Status must be one of running, waiting," in response.text
    assert "is not a time such as 2025-05-01T09:30 (UTC)." in response.text
    assert "This field holds a NUL character." in client.get("/ui/runs?q=o-1%00").text
    broken = client.get("/ui/runs?cursor=not-a-cursor")
    assert broken.status_code == 400 and "This page link is out of date" in broken.text
