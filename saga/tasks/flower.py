"""`saga flower`: Flower on this deployment's broker and event exchange, behind a login.

Flower is an optional extra (`pip install 'saga-orchestrator[flower]'`). It reads the task
events of this deployment alone (its own exchange, `saga.<deployment id>.events`), so
deployments sharing a broker never show in each other's Flower.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os

from celery import Celery

from saga.settings import PREFIX, Settings

LOGIN_OPTIONS = ("--basic-auth", "--basic_auth", "--auth")  # Flower's own, passed through
# The task list shows each attempt's ids and outcome (Flower's default hides both).
TASK_COLUMNS = "name,state,result,exception,kwargs,received,runtime,worker"
NEEDS_FLOWER = "saga flower needs Flower: pip install 'saga-orchestrator[flower]'"


def login_problem(settings: Settings, host: str, no_auth: bool, extra: tuple[str, ...]) -> str | None:
    """Why Flower may not start as asked, or None.

    Flower can shut workers down and revoke tasks, so it asks for a login unless told
    `--no-auth`, which is refused on any address but this machine's loopback.
    """
    if no_auth:
        if not loopback(host):
            return (f"--no-auth serves Flower without a login, so only on this machine "
                    f"(--host 127.0.0.1), not on {host!r}: set {PREFIX}FLOWER_BASIC_AUTH instead")
        return None
    if any(arg.startswith(LOGIN_OPTIONS) for arg in extra):
        return None
    if not settings.flower_basic_auth:
        return (f"Flower needs a login: set {PREFIX}FLOWER_BASIC_AUTH=user:password (several: "
                "comma-separated), or pass --no-auth to serve it on 127.0.0.1 without one")
    for pair in settings.flower_basic_auth.split(","):
        user, colon, password = pair.partition(":")
        if not (user.strip() and colon and password):
            return (f"{PREFIX}FLOWER_BASIC_AUTH must be user:password (comma-separated for "
                    "several), each with a user name and a password")
    return None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def installed() -> bool:
    return importlib.util.find_spec("flower") is not None


def run_flower(app: Celery, settings: Settings, host: str, port: int, no_auth: bool,
               extra: tuple[str, ...]) -> None:
    """Serve Flower for `app` (already on this deployment's exchanges) until stopped.

    The login goes to Flower through its environment, never its command line, which any
    user of the machine can read.
    """
    if settings.flower_basic_auth and not no_auth:
        os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    else:
        os.environ.pop("FLOWER_BASIC_AUTH", None)
    argv = ["flower", f"--address={host.strip('[]')}", f"--port={port}"]
    if "FLOWER_TASKS_COLUMNS" not in os.environ:
        argv.append(f"--tasks_columns={TASK_COLUMNS}")  # before `extra`, which may set its own
    app.start([*argv, *extra])
