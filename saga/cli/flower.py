"""`saga flower`: Flower for this deployment, every step attempt as a task, behind a login."""

from __future__ import annotations

import click

from saga.cli.common import settings as _settings
from saga.cli.common import system as _system


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", default="127.0.0.1", show_default=True, help="the address to serve on")
@click.option("--port", default=5555, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-auth", is_flag=True,
              help="no login (only with a loopback --host); else SAGA_FLOWER_BASIC_AUTH")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(host: str, port: int, no_auth: bool, flower_args: tuple[str, ...]) -> None:
    """Serve Flower on this deployment's broker; extra arguments go to Flower."""
    from saga.errors import NoDeploymentId
    from saga.registry import Registry
    from saga.tasks import use_exchanges
    from saga.tasks.flower import NEEDS_FLOWER, installed, login_problem, run_flower

    settings = _settings()
    if not installed():
        raise click.ClickException(NEEDS_FLOWER)
    problem = login_problem(settings, host, no_auth, flower_args)
    if problem:
        raise click.ClickException(problem)
    if settings.broker_url.startswith("memory"):
        raise click.ClickException("Flower cannot watch the in-memory broker of another process: "
                                   "set SAGA_BROKER_URL to the workers' RabbitMQ or Redis")
    # The deployment id (and so its event exchange) is read from the database: no sagas needed.
    system = _system(settings, loaded=Registry())
    try:
        use_exchanges(system.celery, system.dispatcher.namespace)
    except NoDeploymentId as exc:
        raise click.ClickException(str(exc)) from None
    system.store.close()
    where = f"[{host}]" if ":" in host else host
    click.echo(f"saga flower: deployment {system.dispatcher.namespace.id} on "
               f"http://{where}:{port}" + (" (no login)" if no_auth else ""), err=True)
    run_flower(system.celery, settings, host, port, no_auth, flower_args)
