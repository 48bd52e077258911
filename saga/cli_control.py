"""Commands that steer a run from outside: cancel it, or send it a signal."""

from __future__ import annotations

import click

from saga.cli_common import settings as _settings
from saga.cli_common import system as _system


@click.command()
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Cancel a run: let running steps settle, then compensate what was done."""
    raise click.ClickException("cancel is not built yet")


@click.command()
@click.argument("run_id")
@click.argument("name")
def signal(run_id: str, name: str) -> None:
    """Send the signal NAME to a waiting run."""
    raise click.ClickException("signal is not built yet")


@click.command()
@click.argument("run_id")
def retry(run_id: str) -> None:
    """Resume a failed run from its given-up compensation or parked step."""
    from saga.errors import RunNotFound

    engine = _system(_settings()).engine
    try:
        status = engine.store.get_run(run_id)["status"]
        if status != "failed":
            raise click.ClickException(f"run {run_id} is {status}; only a failed run can be retried")
        if not engine.retry(run_id):
            raise click.ClickException(f"run {run_id} has nothing to resume")
    except RunNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run {run_id} resumed: {engine.store.get_run(run_id)['status']}")
