"""History commands: list runs and show one run's timeline."""

from __future__ import annotations

import click

from saga.cli_common import settings as _settings


@click.command()
@click.argument("run_id")
def show(run_id: str) -> None:
    """Print a run's timeline."""
    from saga.errors import RunNotFound
    from saga.store import Store
    from saga.timeline import render

    store = Store(_settings().database_url)
    try:
        click.echo(render(store.get_run(run_id), store.events(run_id)))
    except RunNotFound as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--saga", "saga_name", default=None)
@click.option("--status", default=None)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
def runs(saga_name: str | None, status: str | None, limit: int) -> None:
    """List runs, newest first."""
    from saga.store import Store

    page, _ = Store(_settings().database_url).list_runs(saga_name, status, limit)
    for run in page:
        click.echo(f"{run['id']}  {run['created_at']:%Y-%m-%d %H:%M:%S}  {run['saga']} "
                   f"v{run['version']}  {run['status']}")
