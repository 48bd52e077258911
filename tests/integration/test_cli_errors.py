"""A misconfigured `saga` command stops in one or two lines naming the setting and the fix.

Every command runs as a real `python -m saga.cli` process with only the environment the
test gives it; none may print a traceback or a secret.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.stack import ROOT, Process, Stack, free_port, wait_for

RUN_ID = str(uuid.uuid4())
COMMANDS = {
    "api": ["api", "--port", "0"],
    "worker": ["worker", "--pool", "solo"],
    "sweeper": ["sweeper"],
    "dev": ["dev", "--port", "0"],
    "migrate": ["migrate"],
    "start": ["start", "greet"],
    "show": ["show", RUN_ID],
    "runs": ["runs"],
    "cancel": ["cancel", RUN_ID],
    "signal": ["signal", RUN_ID, "go"],
    "retry": ["retry", RUN_ID],
    "backfill": ["backfill", "greet", "--from", "2025-01-01", "--to", "2025-01-02"],
}
# The commands that run, start or steer runs need the definitions; the rest read the log.
NEED_SAGAS = ["api", "worker", "sweeper", "dev", "start", "cancel", "signal", "retry",
              "backfill"]
SERVING = ["api", "worker", "sweeper", "dev"]
SECRET = "pw-S3cr3t"
GOOD_SAGAS = """
    from saga import Saga, Step

    greet = Saga("greet", steps=[Step("hello", "json:dumps")])
"""


@pytest.fixture
def modules(tmp_path: Path):
    """Write a module of sagas into a folder on the command's PYTHONPATH; returns its name."""
    def write(source: str, name: str | None = None) -> str:
        name = name or f"cli_sagas_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name
    return write


def saga(tmp_path: Path, command: str | list[str], **env: str) -> subprocess.CompletedProcess:
    """`saga …` with no SAGA_* setting but those given, in an empty folder."""
    args = COMMANDS[command] if isinstance(command, str) else command
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), **env}
    return subprocess.run([sys.executable, "-m", "saga.cli", *args], env=environ,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


def assert_refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit non-zero with a short message holding every needle, no traceback, no secret."""
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert "Traceback" not in text, text
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, text
    for needle in needles:
        assert needle in result.stderr, text
    assert SECRET not in text
    return result.stderr


# -- URLs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_an_unsupported_database_is_refused_by_every_command(tmp_path, modules, command):
    result = saga(tmp_path, command, SAGA_SAGAS=modules(GOOD_SAGAS),
                  SAGA_DATABASE_URL=f"mysql://saga:{SECRET}@db/saga")
    assert_refused(result, "SAGA_DATABASE_URL", "database 'mysql' is not supported",
                   "use postgresql://")


@pytest.mark.parametrize("url", ["foo://bar", "garbage", "postgresql+psycopg2://db/saga"])
def test_any_database_url_that_cannot_work_says_what_to_use(tmp_path, url):
    assert_refused(saga(tmp_path, "runs", SAGA_DATABASE_URL=url), "SAGA_DATABASE_URL",
                   "use postgresql://user:password@host:5432/db")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreachable_database_is_named_by_every_command(tmp_path, modules, command):
    """Given nothing listening at the database's port, Then one line says which database
    did not answer, without its password."""
    port = free_port()
    result = saga(tmp_path, command, SAGA_SAGAS=modules(GOOD_SAGAS),
                  SAGA_DATABASE_URL=f"postgresql://saga:{SECRET}@127.0.0.1:{port}/saga")
    assert_refused(result, f"the database at postgresql+psycopg://saga:***@127.0.0.1:{port}/saga "
                           "did not answer", "Connection refused", "SAGA_DATABASE_URL")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unsupported_broker_is_refused_by_every_command(tmp_path, modules, command):
    result = saga(tmp_path, command, SAGA_SAGAS=modules(GOOD_SAGAS),
                  SAGA_BROKER_URL=f"sqs://key:{SECRET}@sqs.eu-west-1.amazonaws.com")
    assert_refused(result, "SAGA_BROKER_URL", "is not a supported broker", "amqp://", "redis://")


def test_an_unmigrated_database_says_to_run_migrate(tmp_path, modules):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    for command in ("runs", "show", "worker", "start"):
        result = saga(tmp_path, command, SAGA_SAGAS=modules(GOOD_SAGAS), SAGA_DATABASE_URL=url)
        assert_refused(result, "has no saga tables: run `saga migrate`", "SAGA_DATABASE_URL")


# -- SAGA_SAGAS ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", NEED_SAGAS)
def test_commands_that_need_sagas_say_how_to_configure_them(tmp_path, command):
    assert_refused(saga(tmp_path, command), "no sagas configured: set SAGA_SAGAS=module[,module]")


@pytest.mark.parametrize("command", NEED_SAGAS)
def test_a_saga_module_that_is_not_there_is_named(tmp_path, command):
    result = saga(tmp_path, command, SAGA_SAGAS="no_such_sagas_module")
    assert_refused(result, "SAGA_SAGAS", "'no_such_sagas_module' cannot be imported",
                   "No module named 'no_such_sagas_module'", "PYTHONPATH")


def test_a_saga_module_whose_import_fails_names_the_module_and_the_cause(tmp_path, modules):
    missing = modules("import no_such_dependency_of_sagas\n")
    failing = modules("LIMIT = 1 / 0\n")
    assert_refused(saga(tmp_path, "worker", SAGA_SAGAS=f"{modules(GOOD_SAGAS)},{missing}"),
                   f"module {missing!r} cannot be imported",
                   "No module named 'no_such_dependency_of_sagas'")
    assert_refused(saga(tmp_path, "start", SAGA_SAGAS=failing),
                   f"module {failing!r} failed at import: ZeroDivisionError",
                   f"{failing}.py, line 1")


def test_a_bad_definition_names_the_saga_and_the_step(tmp_path, modules):
    name = modules("""
        from saga import Saga, Step
        orders = Saga("orders", version=2, steps=[Step("reserve", "json:dumps"),
                                                  Step("charge", "billing_gone:charge")])
    """)
    assert_refused(saga(tmp_path, "sweeper", SAGA_SAGAS=name), "SAGA_SAGAS",
                   f"module {name!r}: saga 'orders' v2, step 'charge': action names unknown "
                   "task 'billing_gone:charge'")


@pytest.mark.parametrize("command", SERVING)
def test_a_remote_task_without_a_result_backend_stops_the_processes(tmp_path, modules, command):
    name = modules("""
        from saga import RemoteTask, Saga, Step
        billing = Saga("billing", steps=[Step("charge", RemoteTask("payments.charge"))])
    """)
    assert_refused(saga(tmp_path, command, SAGA_SAGAS=name),
                   "refusing to start: saga 'billing' v1 step 'charge' calls RemoteTask "
                   "'payments.charge'", "SAGA_RESULT_BACKEND is not set")


def test_an_alert_hook_that_does_not_import_is_named(tmp_path, modules):
    result = saga(tmp_path, "worker", SAGA_SAGAS=modules(GOOD_SAGAS),
                  SAGA_ALERT_HOOK="no_such_pager:page")
    assert_refused(result, "SAGA_ALERT_HOOK='no_such_pager:page'", "No module named")


# -- what works: postgres:// URLs, and reading the log without the definitions ---------------

def test_postgres_urls_work_and_commands_that_read_the_log_need_no_sagas(tmp_path, modules,
                                                                        database_url):
    """Given the database as postgres://user:password@… (psycopg 3 underneath), When
    migrated, a run started and then read without SAGA_SAGAS, Then all succeed and the
    password is never printed."""
    parts = urlsplit(database_url)
    url = f"postgres://{parts.username}:{SECRET}@{parts.hostname}:{parts.port}{parts.path}"
    env = {"SAGA_DATABASE_URL": url, "SAGA_BROKER_URL": "memory://"}

    migrated = saga(tmp_path, "migrate", **env)
    assert migrated.returncode == 0, migrated.stderr
    assert f"migrated postgresql+psycopg://{parts.username}:***@" in migrated.stdout
    started = saga(tmp_path, ["start", "greet"], SAGA_SAGAS=modules(GOOD_SAGAS), **env)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    shown = saga(tmp_path, ["show", run_id], **env)
    listed = saga(tmp_path, "runs", **env)

    assert shown.returncode == 0 and "greet" in shown.stdout, shown.stderr
    assert listed.returncode == 0 and run_id in listed.stdout, listed.stderr
    for result in (migrated, started, shown, listed):
        assert SECRET not in result.stdout + result.stderr


def test_cancel_refuses_a_run_whose_saga_this_shell_does_not_load(tmp_path, modules,
                                                                 database_url):
    """Given a run of `greet` and a shell whose SAGA_SAGAS lacks it, When cancelled, Then
    refused naming SAGA_SAGAS, and the run is left as it was (not parked)."""
    env = {"SAGA_DATABASE_URL": database_url, "SAGA_BROKER_URL": "memory://"}
    run_id = saga(tmp_path, ["start", "greet"], SAGA_SAGAS=modules(GOOD_SAGAS), **env).stdout
    other = modules("""
        from saga import Saga, Step
        other = Saga("other", steps=[Step("x", "json:dumps")])
    """)
    result = saga(tmp_path, ["cancel", run_id.strip()], SAGA_SAGAS=other, **env)
    assert_refused(result, "no saga named 'greet'", "SAGA_SAGAS")
    shown = saga(tmp_path, ["show", run_id.strip()], **env)
    assert shown.returncode == 0 and "greet v1" in shown.stdout, shown.stderr
    assert "parked" not in shown.stdout.lower(), shown.stdout


# -- secrets in a running worker's output ------------------------------------------------------

def test_the_worker_prints_no_password_of_any_url(tmp_path, database_url, broker_url):
    """Given passwords in the database, broker and result backend URLs, When the worker
    starts (Celery's banner names the broker and the backend), Then no password shows."""
    parts = urlsplit(database_url)
    env = {"SAGA_DATABASE_URL": database_url.replace(f"{parts.username}@",
                                                     f"{parts.username}:{SECRET}@"),
           "SAGA_RESULT_BACKEND": f"redis://:{SECRET}@127.0.0.1:6379/1"}
    secrets = [SECRET] + [p for p in [urlsplit(broker_url).password] if p]
    with Stack(database_url, broker_url, tmp_path, sagas="examples.fulfillment") as stack:
        worker = stack.worker(concurrency=1, env=env)
        worker.stop()
        output = worker.output()
    assert "transport:" in output and " ready." in output
    assert SECRET not in output, output
    for secret in secrets:
        assert f":{secret}@" not in output, output


def test_a_broker_that_does_not_answer_is_logged_without_its_password(tmp_path, database_url):
    """Celery retries a broker that does not answer; its lines name the URL, masked."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_DATABASE_URL": database_url,
           "SAGA_BROKER_URL": f"amqp://guest:{SECRET}@127.0.0.1:{free_port()}//",
           "SAGA_SAGAS": "examples.fulfillment", "SAGA_DEFAULT_QUEUE": f"cli-{uuid.uuid4().hex}"}
    worker = Process("worker", [sys.executable, "-m", "saga.cli", "worker", "--pool", "solo"],
                     env, tmp_path / "worker.log")
    try:
        wait_for(lambda: "Cannot connect to" in worker.output(), 30, "a connection error line")
    finally:
        worker.stop()
    output = worker.output()
    assert "amqp://guest:**@127.0.0.1" in output
    assert SECRET not in output
