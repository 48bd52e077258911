"""Commands that steer a run from outside: cancel it, or send it a signal."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from saga.cli.common import cli_actor
from saga.cli.common import settings as _settings
from saga.cli.common import system as _system

if TYPE_CHECKING:
    from saga.engine import Engine
    from saga.system import System


@click.command()
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Cancel a run: let running steps settle, then compensate what was done."""
    system = _steer(run_id, lambda engine: engine.cancel(run_id, actor=cli_actor()))
    click.echo(f"run {run_id}: cancelling ({system.store.get_run(run_id)['status']})")


@click.command()
@click.argument("run_id")
@click.argument("name")
@click.option("--payload", default="{}", help="the signal's payload, a JSON object")
@click.option("--key", default=None, help="an idempotency key: the same signal twice counts once")
def signal(run_id: str, name: str, payload: str, key: str | None) -> None:
    """Send the signal NAME to a run (kept until the run reaches its wait)."""
    from saga.errors import SagaError

    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    if not isinstance(body, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--payload")
    system = _system(_settings(), serve=False)
    try:
        _check_definition(system, run_id)
        signal_id, new = system.engine.signal(run_id, name, body, key, actor=cli_actor())
    except SagaError as exc:
        detail = getattr(exc, "errors", None)
        raise click.ClickException(f"{exc}{' ' + json.dumps(detail) if detail else ''}") from None
    click.echo(f"signal {signal_id} {'recorded' if new else 'already recorded'} for run {run_id}")


@click.command()
@click.argument("run_id")
def retry(run_id: str) -> None:
    """Resume a failed run from its given-up compensation or parked step."""
    system = _steer(run_id, lambda engine: engine.retry(run_id, actor=cli_actor()))
    click.echo(f"run {run_id} resumed: {system.store.get_run(run_id)['status']}")


def _steer(run_id: str, act: Callable[[Engine], object]) -> System:
    """Do one thing to a run from this shell; a SagaError becomes its one line."""
    from saga.errors import SagaError

    system = _system(_settings(), serve=False)
    try:
        _check_definition(system, run_id)
        act(system.engine)
    except SagaError as exc:
        raise click.ClickException(str(exc)) from None
    return system


def _check_definition(system: System, run_id: str) -> None:
    """Refuse unless this process loads the run's definition as the run started on it.

    Without it the engine would park the run, waiting for a definition that only this
    shell lacks (SAGA_SAGAS unlike the workers').
    """
    from saga.errors import UnknownSaga

    run = system.store.load_run(run_id)
    try:
        saga = system.registry.get(run.saga, run.version)
    except UnknownSaga as exc:
        raise click.ClickException(
            f"{exc}: run {run_id} needs it; set SAGA_SAGAS as the workers have it "
            f"(here: {','.join(system.settings.sagas)})") from None
    if run.shape and run.shape != saga.shape_hash:
        raise click.ClickException(
            f"saga {run.saga!r} v{run.version} loaded here is not the one run {run_id} started "
            "on (its steps changed): use the saga modules the workers run")
