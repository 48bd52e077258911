"""Commands that steer a run from outside: cancel it, or send it a signal."""

from __future__ import annotations

import json

import click

from saga.cli.common import settings as _settings
from saga.cli.common import system as _system


@click.command()
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Cancel a run: let running steps settle, then compensate what was done."""
    from saga.errors import SagaError

    engine = _system(_settings()).engine
    try:
        engine.cancel(run_id)
    except SagaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run {run_id}: cancelling ({engine.store.get_run(run_id)['status']})")


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
    engine = _system(_settings()).engine
    try:
        signal_id, new = engine.signal(run_id, name, body, key)
    except SagaError as exc:
        detail = getattr(exc, "errors", None)
        raise click.ClickException(f"{exc}{' ' + json.dumps(detail) if detail else ''}") from None
    click.echo(f"signal {signal_id} {'recorded' if new else 'already recorded'} for run {run_id}")


@click.command()
@click.argument("run_id")
def retry(run_id: str) -> None:
    """Resume a failed run from its given-up compensation or parked step."""
    from saga.errors import RunNotFound

    engine = _system(_settings()).engine
    try:
        run = engine.store.get_run(run_id)
        if run["status"] != "failed" and not run["parked"]:
            raise click.ClickException(f"run {run_id} is {run['status']}; only a failed or "
                                       "parked run can be retried")
        if not engine.retry(run_id):
            raise click.ClickException(f"run {run_id} has nothing to resume")
    except RunNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run {run_id} resumed: {engine.store.get_run(run_id)['status']}")
