"""What every `saga` command shares: settings, the checked system, one-line configuration errors."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from saga.settings import Settings, redacted

if TYPE_CHECKING:
    from saga.definitions import Saga
    from saga.registry import Registry
    from saga.system import System

NO_SAGAS = ("no sagas configured: set SAGA_SAGAS=module[,module] (the modules that define "
            "your sagas, importable from PYTHONPATH)")
SHOWN_PROBLEMS = 3  # a refusal lists this many; the rest are counted


class Group(click.Group):
    """The `saga` group: a database or broker failing under any command ends in one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = failure(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


def settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:  # a bad setting, not a bad command line: no usage text
        raise click.ClickException(str(exc)) from None


def registry(settings: Settings, serve: bool = True) -> Registry:
    """The definitions in SAGA_SAGAS, or a one-line refusal: none, one that fails to
    import, or (for a process that serves, `serve`) a RemoteTask without a result backend.

    The SAGA_ALERT_HOOK, the other code a setting names, is imported here too.
    """
    from saga.alerts import resolve
    from saga.errors import SagaError
    from saga.registry import Registry

    if not settings.sagas:
        raise click.ClickException(NO_SAGAS)
    # Like `celery -A` and `flask --app`: modules in the directory the command runs from.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        loaded = Registry.from_modules(settings.sagas)
    except SagaError as exc:
        raise click.ClickException(f"cannot load the sagas in SAGA_SAGAS: {exc}") from None
    if serve:
        refuse(remote_task_problems(settings, loaded))
    try:
        resolve(settings.alert_hook)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return loaded


def system(settings: Settings, serve: bool = True, loaded: Registry | None = None) -> System:
    """The assembled system, after `registry`'s checks (unless given the `loaded` registry)
    and a database that answers and is migrated. `serve=False` for a command that only
    writes to the log (start, cancel…)."""
    from saga.system import build

    built = build(settings, loaded if loaded is not None else registry(settings, serve))
    check_database(built, settings)
    return built


def check_database(system: System, settings: Settings) -> None:
    """Refuse to go on against a database that does not answer or has no saga tables."""
    import saga.migrations as migrations

    store = system.store
    store.ping()  # a failure here is told by `failure`, naming SAGA_DATABASE_URL
    if migrations.current(store.engine) is None:
        raise click.ClickException(_unmigrated(settings.database_url))


def remote_task_problems(settings: Settings, sagas: Iterable[Saga]) -> list[str]:
    """Steps calling a RemoteTask, which waits for a result: none can without a backend."""
    from saga.definitions import RemoteTask

    if settings.result_backend:
        return []
    return [f"saga {saga.name!r} v{saga.version} step {step.name!r} calls RemoteTask "
            f"{action.name!r} but SAGA_RESULT_BACKEND is not set (set it to the result "
            "backend the remote workers write to, e.g. redis://host:6379/1)"
            for saga in sagas for step in saga.by_name.values()
            for action in (step.action, step.compensate) if isinstance(action, RemoteTask)]


def refuse(problems: list[str]) -> None:
    """Stop the process before it starts, listing what is wrong (the first few)."""
    if not problems:
        return
    more = len(problems) - SHOWN_PROBLEMS
    shown = "; ".join(problems[:SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
    raise click.ClickException(f"refusing to start: {shown}")


def failure(exc: BaseException) -> str | None:
    """One line for a database or broker failure, naming the setting; None for anything else."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    kombu_exc = sys.modules.get("kombu.exceptions")
    if sa_exc is not None and isinstance(exc, sa_exc.DBAPIError):
        url = _current("database_url")
        reason = _first_line(exc.orig)
        if _missing_table(exc):
            return _unmigrated(url)
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return f"the database at {redacted(url)} {_outcome(url, reason)}: {reason} " \
                   "(check SAGA_DATABASE_URL)"
        return None
    if kombu_exc is not None and isinstance(exc, kombu_exc.OperationalError):
        return (f"the broker at {redacted(_current('broker_url'))} did not answer: "
                f"{_first_line(exc)} (check SAGA_BROKER_URL)")
    return None


def _outcome(url: str, reason: str) -> str:
    if url.startswith("sqlite"):
        return "cannot be used"  # a file: unable to open it, or locked
    # The server answered and said no (no such database or role, a wrong password).
    return "refused the connection" if "FATAL" in reason else "did not answer"


def _unmigrated(url: str) -> str:
    return (f"the database at {redacted(url)} has no saga tables: run `saga migrate` "
            "(with this SAGA_DATABASE_URL) first")


def _missing_table(exc: Any) -> bool:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) == "42P01" or "no such table" in str(orig)


def _current(name: str) -> str:
    """A setting as the command read it (the handler runs outside the command)."""
    try:
        return getattr(Settings.from_env(), name)
    except ValueError:
        return "(invalid)"


def _first_line(error: object) -> str:
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def cli_actor() -> str:
    """Who a command's changes are recorded as: the shell's user, marked as the CLI's."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container's)
        return f"cli:uid-{os.getuid()}"


def freeze_before_fork() -> None:
    """Move every object made so far (imports, the sagas, the app) out of the collector's
    sight, just before a server forks its children (Python's `gc.freeze` advice).

    A child then never scans them: a full collection of a worker child's ~120,000 startup
    objects takes 30-90 ms, a pause any run in flight waits out; frozen, it takes well
    under a millisecond. And the pages holding them stay shared with the parent.
    """
    import gc

    gc.freeze()
