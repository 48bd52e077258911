"""The admin scope's own operations on real PostgreSQL: pause and resume schedules (API and
CLI), and manage API tokens over the API.

Time moves by the injectable clock (`move_clock_to`), as in test_schedules; the broker is
Kombu's in-memory transport (starting a run only publishes); nothing sleeps.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from saga import Saga, Step
from saga.api import create_app
from saga.cli.common import cli_actor
from saga.registry import Registry
from saga.schedules.cron import Schedule, schedule_key
from saga.store.tokens import hash_token
from saga.system import System
from tests.auth import bearer, create_token
from tests.integration.test_schedules import (
    make_settings,
    make_system,
    move_clock_to,
    next_fire_at,
    query,
    runs_of,
)
from tests.stack import ROOT, Stack

MODULE = __name__  # SAGA_SAGAS for the CLI: the sagas below
PROBLEM = "application/problem+json"


def work(ctx):
    return {"logical_time": ctx.input.get("logical_time")}


# catch_up="all": were the firings due while paused kept, a resume would start each of them.
every10 = Saga("every10", steps=[Step("work", work)],
               schedule=Schedule("*/10 * * * *", catch_up="all"))
hourly = Saga("hourly", steps=[Step("work", work)], schedule=Schedule("0 * * * *"))
reindex = Saga("reindex", steps=[Step("work", work)])  # no schedule


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture
def clock(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    """Only the stack's injectable clock (and its environment for CLI processes)."""
    with Stack(database_url, "memory://", tmp_path, sagas=MODULE) as stack:
        yield stack


@pytest.fixture
def system(database_url: str, clock: Stack) -> Iterator[System]:
    built = make_system(database_url, Registry([every10, hourly, reindex]), clock)
    yield built
    built.store.close()


class Api:
    """The app in-process on the test's system; `call` sends a token of one's choice."""

    def __init__(self, database_url: str, system: System) -> None:
        self.system = system
        self.client = create_app(make_settings(database_url), system).test_client()

    def token(self, scope: str, name: str | None = None) -> str:
        return create_token(self.system.store.engine, scope, name)

    def call(self, method: str, path: str, token: str, **kwargs: Any):
        return self.client.open(path, method=method.upper(), headers=bearer(token), **kwargs)


@pytest.fixture
def api(database_url: str, system: System) -> Api:
    return Api(database_url, system)


@pytest.fixture
def boss(api: Api) -> str:
    """An admin token named `boss`."""
    return api.token("admin", "boss")


def listed(api: Api, token: str) -> dict[str, dict[str, Any]]:
    response = api.call("get", "/v1/schedules", token)
    assert response.status_code == 200, response.get_json()
    return {s["saga"]: s for s in response.get_json()["schedules"]}


def fired(system: System, saga_name: str) -> list[datetime]:
    return [f.logical_time for f in system.scheduler.fire() if f.saga == saga_name]


def problem(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    return response.get_json()


# -- pausing and resuming schedules -------------------------------------------------------

def test_a_paused_schedule_starts_nothing_and_resumes_from_now(api, boss, system, clock):
    """Given a schedule, When paused and the clock passes three of its firings, Then none
    starts; When resumed, Then its next firing is the first after now (none of the missed
    ones, though its catch_up is "all"), and that one starts on time."""
    system.scheduler.fire()
    first = next_fire_at(system, "every10")

    paused = api.call("post", "/v1/schedules/every10/pause", boss)

    assert paused.status_code == 200, paused.get_json()
    state = paused.get_json()
    assert (state["saga"], state["paused"], state["paused_by"]) == ("every10", True, "boss")
    assert state["next_fire_at"] is None
    move_clock_to(system, clock, first + timedelta(minutes=25))
    assert fired(system, "every10") == []
    assert runs_of(system, "every10") == []
    assert listed(api, boss)["every10"]["paused"] is True
    assert listed(api, boss)["hourly"]["paused"] is False

    resumed = api.call("post", "/v1/schedules/every10/resume", boss)

    assert resumed.status_code == 200, resumed.get_json()
    assert resumed.get_json()["paused"] is False
    assert resumed.get_json()["paused_at"] is None and resumed.get_json()["paused_by"] is None
    following = first + timedelta(minutes=30)
    assert datetime.fromisoformat(resumed.get_json()["next_fire_at"]) == following
    assert fired(system, "every10") == []  # nothing missed while paused fires late
    move_clock_to(system, clock, following + timedelta(seconds=1))
    assert fired(system, "every10") == [following]
    assert [r.idempotency_key for r in runs_of(system, "every10")] == [schedule_key(following)]


def test_pause_and_resume_are_idempotent(api, boss, system):
    """Given a paused schedule, When paused again (by another admin), Then 200 and the first
    pause's time and author stay; When resumed twice, Then the second changes nothing."""
    other = api.token("admin", "deputy")
    first = api.call("post", "/v1/schedules/hourly/pause", boss).get_json()
    again = api.call("post", "/v1/schedules/hourly/pause", other)

    assert again.status_code == 200
    assert (again.get_json()["paused_at"], again.get_json()["paused_by"]) == (
        first["paused_at"], "boss")

    resumed = api.call("post", "/v1/schedules/hourly/resume", other).get_json()
    twice = api.call("post", "/v1/schedules/hourly/resume", boss)

    assert twice.status_code == 200
    assert twice.get_json() == resumed
    assert resumed["paused"] is False


def test_a_schedule_no_sweeper_has_seen_yet_can_be_paused(api, boss, system, clock):
    """Given a schedule with no stored row yet, When paused, Then it is stored paused, and a
    sweep after its first firing starts nothing."""
    assert query(system, "SELECT saga FROM schedules") == []
    now = system.store.now()

    assert api.call("post", "/v1/schedules/every10/pause", boss).get_json()["paused"] is True

    [(paused_at, paused_by)] = query(system, "SELECT paused_at, paused_by FROM schedules "
                                             "WHERE saga = 'every10'")
    assert paused_by == "boss" and paused_at.astimezone(UTC) >= now
    move_clock_to(system, clock, every10.schedule.next_after(now) + timedelta(seconds=1))
    assert fired(system, "every10") == []


@pytest.mark.parametrize(("saga", "says"), [("nope", "no saga named 'nope'"),
                                            ("reindex", "'reindex' has no schedule")])
@pytest.mark.parametrize("action", ["pause", "resume"])
def test_an_unknown_or_unscheduled_saga_is_a_404(api, boss, system, saga, says, action):
    body = problem(api.call("post", f"/v1/schedules/{saga}/{action}", boss), 404)
    assert body["type"].endswith("schedule-not-found")
    assert says in body["detail"]
    assert query(system, "SELECT saga FROM schedules") == []


@pytest.mark.parametrize("scope", ["read", "operate"])
def test_only_admin_pauses_or_resumes(api, boss, system, scope):
    """Given a token below admin, When it pauses or resumes, Then 403 and nothing changes."""
    token = api.token(scope)
    for action in ("pause", "resume"):
        response = api.call("post", f"/v1/schedules/every10/{action}", token)
        assert "'admin' scope" in problem(response, 403)["detail"]
    assert listed(api, token)["every10"]["paused"] is False
    api.call("post", "/v1/schedules/every10/pause", boss)
    assert api.call("post", "/v1/schedules/every10/resume", token).status_code == 403
    assert listed(api, token)["every10"]["paused"] is True


# -- the CLI ------------------------------------------------------------------------------

def cli(clock: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m saga.cli ARGS` on the test's database, sagas and clock."""
    return subprocess.run([sys.executable, "-m", "saga.cli", *args], cwd=ROOT, env=clock.env,
                          capture_output=True, text=True, timeout=60)


def test_cli_pauses_lists_and_resumes_a_schedule(api, boss, system, clock):
    """Given the CLI, When it pauses a schedule, Then the API shows it paused by cli:<user>
    and `list` says so; When resumed, Then it fires from the first time after now."""
    system.scheduler.fire()
    first = next_fire_at(system, "every10")

    paused = cli(clock, "schedule", "pause", "every10")
    again = cli(clock, "schedule", "pause", "every10")
    listing = cli(clock, "schedule", "list")

    assert paused.returncode == 0, paused.stderr
    assert "schedule of every10 paused" in paused.stdout
    assert "was paused already" in again.stdout
    assert listed(api, boss)["every10"]["paused_by"] == cli_actor()
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert set(lines) == {"SAGA", "every10", "hourly"}, listing.stdout
    assert f"by {cli_actor()}" in lines["every10"]
    assert lines["hourly"].rstrip().endswith("-")  # not paused
    move_clock_to(system, clock, first + timedelta(minutes=15))
    assert fired(system, "every10") == []

    resumed = cli(clock, "schedule", "resume", "every10")
    not_paused = cli(clock, "schedule", "resume", "every10")

    following = first + timedelta(minutes=20)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed; next firing {following:%Y-%m-%d %H:%M:%S}Z" in resumed.stdout
    assert "was not paused" in not_paused.stdout
    assert next_fire_at(system, "every10") == following
    move_clock_to(system, clock, following)
    assert fired(system, "every10") == [following]


@pytest.mark.parametrize(("saga", "says"), [("nope", "no saga named 'nope'"),
                                            ("reindex", "'reindex' has no schedule")])
def test_cli_refuses_an_unknown_or_unscheduled_saga(clock, system, saga, says):
    for action in ("pause", "resume"):
        result = cli(clock, "schedule", action, saga)
        assert result.returncode == 1, result.stdout
        assert says in result.stderr
        assert "Traceback" not in result.stderr
    assert query(system, "SELECT saga FROM schedules") == []


# -- tokens over the API ------------------------------------------------------------------

def create(api: Api, token: str, name: str, scope: str):
    return api.call("post", "/v1/tokens", token, json={"name": name, "scope": scope})


def test_a_token_created_by_the_api_is_shown_once_and_works(api, boss):
    """Given an admin, When it creates an operate token, Then 201 shows the secret once; the
    token reads and starts runs but cannot manage tokens; the listing shows no secret."""
    response = create(api, boss, "ci", "operate")

    assert response.status_code == 201, response.get_json()
    made = response.get_json()
    secret = made.pop("token")
    assert secret.startswith("saga_") and len(secret) == 48
    assert made["name"] == "ci" and made["scope"] == "operate"
    assert made["revoked"] is False and made["last_used_at"] is None
    assert api.call("get", "/v1/runs", secret).status_code == 200
    started = api.call("post", "/v1/sagas/reindex/runs", secret, json={"input": {}})
    assert started.status_code == 201, started.get_json()
    assert api.call("get", "/v1/tokens", secret).status_code == 403
    assert create(api, secret, "sneaky", "admin").status_code == 403

    listing = api.call("get", "/v1/tokens", boss)

    assert listing.status_code == 200
    text = listing.get_data(as_text=True)
    assert secret not in text and hash_token(secret) not in text and "hash" not in text
    rows = {t["name"]: t for t in listing.get_json()["tokens"]}
    assert {"boss", "ci"} <= set(rows) and "sneaky" not in rows
    assert set(rows["ci"]) == {"name", "scope", "created_at", "last_used_at", "revoked",
                               "revoked_at"}
    assert rows["ci"]["last_used_at"] is not None  # it was used above


def test_delete_revokes_on_the_next_request_in_every_process(api, boss, database_url, system):
    """Given a token in use, When an admin deletes it, Then its next request, to this app
    or another on the same database, is a 401; the name stays listed, revoked, and taken."""
    secret = create(api, boss, "leaver", "read").get_json()["token"]
    other = Api(database_url, make_system(database_url, Registry([reindex])))
    try:
        assert other.call("get", "/v1/runs", secret).status_code == 200

        deleted = api.call("delete", "/v1/tokens/leaver", boss)

        assert deleted.status_code == 204 and deleted.get_data() == b""
        for app in (api, other):
            assert problem(app.call("get", "/v1/runs", secret), 401)["status"] == 401
    finally:
        other.system.store.close()
    assert api.call("delete", "/v1/tokens/leaver", boss).status_code == 204  # idempotent
    row = {t["name"]: t for t in api.call("get", "/v1/tokens", boss).get_json()["tokens"]}
    assert row["leaver"]["revoked"] is True and row["leaver"]["revoked_at"] is not None
    again = problem(create(api, boss, "leaver", "read"), 409)
    assert "'leaver' exists already" in again["detail"]


def test_a_taken_name_is_a_409_and_writes_nothing(api, boss):
    first = create(api, boss, "twice", "read").get_json()
    body = problem(create(api, boss, "twice", "admin"), 409)
    assert body["type"].endswith("token-exists") and "name" in body["errors"]
    rows = {t["name"]: t for t in api.call("get", "/v1/tokens", boss).get_json()["tokens"]}
    assert rows["twice"]["scope"] == "read"
    assert api.call("get", "/v1/runs", first["token"]).status_code == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "", "scope": "read"}, "name"),
    ({"name": "-dash", "scope": "read"}, "name"),
    ({"name": "with space", "scope": "read"}, "name"),
    ({"name": "x" * 101, "scope": "read"}, "name"),
    ({"name": "nul\u0000", "scope": "read"}, "name"),
    ({"name": "newline\n", "scope": "read"}, "name"),
    ({"name": "ok", "scope": "root"}, "scope"),
    ({"name": "ok"}, "scope"),
    ({"scope": "read"}, "name"),
    ({"name": "ok", "scope": "read", "ttl": 5}, "ttl"),
])
def test_a_bad_name_or_scope_is_a_422_naming_it(api, boss, body, field):
    response = api.call("post", "/v1/tokens", boss, json=body)
    assert field in problem(response, 422)["errors"]
    names = {t["name"] for t in api.call("get", "/v1/tokens", boss).get_json()["tokens"]}
    assert names == {"boss", "stack-admin"}


@pytest.mark.parametrize("name", ["nobody", "nul%00", "-x"])
def test_deleting_an_unknown_token_is_a_404(api, boss, name):
    body = problem(api.call("delete", f"/v1/tokens/{name}", boss), 404)
    assert body["type"].endswith("token-not-found")


@pytest.mark.parametrize("scope", ["read", "operate"])
def test_only_admin_manages_tokens(api, boss, scope):
    token = api.token(scope, f"lesser-{scope}")
    for method, path, body in [("get", "/v1/tokens", None),
                               ("post", "/v1/tokens", {"name": "mine", "scope": "admin"}),
                               ("delete", "/v1/tokens/boss", None)]:
        response = api.call(method, path, token, json=body)
        assert "'admin' scope" in problem(response, 403)["detail"], (method, path)
    assert api.call("get", "/v1/runs", boss).status_code == 200  # boss not revoked
    names = {t["name"] for t in api.call("get", "/v1/tokens", boss).get_json()["tokens"]}
    assert "mine" not in names
