"""The `saga` command: run the API, workers, the sweeper or all in one; start and show runs."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from saga.cli.common import safe_url as _safe_url
from saga.cli.common import settings as _settings
from saga.cli.common import system as _system


@click.group()
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def main(log_level: str) -> None:
    """Durable sagas on Celery. Configure with SAGA_* environment variables (see README)."""
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


@main.command()
def migrate() -> None:
    """Apply the Alembic migrations to SAGA_DATABASE_URL."""
    from saga import migrations

    settings = _settings()
    migrations.upgrade(settings.database_url)
    click.echo(f"migrated {_safe_url(settings.database_url)}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def api(host: str, port: int) -> None:
    """Serve the HTTP API (for production, run `gunicorn 'saga.api:create_app()'`)."""
    from werkzeug.serving import make_server

    from saga.api import create_app

    settings = _settings()
    app = create_app(settings, _system(settings))
    server = make_server(host, port, app, threaded=True)
    click.echo(f"saga api on http://{host}:{server.server_port}", err=True)
    server.serve_forever()


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=int, default=None, help="processes (SAGA_WORKER_CONCURRENCY)")
@click.option("--pool", default="prefork", show_default=True,
              type=click.Choice(["prefork", "threads", "solo"]))
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int | None, pool: str, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker for the saga steps; extra arguments go to Celery."""
    from saga.tasks import broker_limit_problems

    settings = _settings()
    system = _system(settings)
    problems = broker_limit_problems(settings, system.engine.registry)
    if problems:
        raise click.ClickException("refusing to start: " + "; ".join(problems))
    argv = ["worker", f"--pool={pool}", f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--queues={settings.default_queue}", "--without-gossip", "--without-mingle",
            "--loglevel=INFO", *celery_args]
    if not any(a.startswith(("-n", "--hostname")) for a in celery_args):
        # Unique node names: two workers named alike fight over RabbitMQ's pidbox queue.
        argv.append(f"--hostname=saga-{os.getpid()}@%h")
    system.celery.worker_main(argv)


@main.command()
def sweeper() -> None:
    """Republish lost dispatches, expire dead leases, fire due retries; safe to run many."""
    from saga import sweeper as sweeping

    settings = _settings()
    sweeping.run_forever(_system(settings).engine)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def dev(host: str, port: int) -> None:
    """API, worker and sweeper in one process on the embedded default (SQLite, in-memory broker)."""
    from werkzeug.serving import make_server

    from saga.api import create_app
    from saga.embedded import embedded

    settings = _settings()
    with embedded(settings) as system:
        app = create_app(settings, system)
        server = make_server(host, port, app, threaded=True)
        click.echo(f"saga dev on http://{host}:{server.server_port} "
                   f"(database {_safe_url(settings.database_url)})", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


@main.command()
@click.argument("saga_name")
@click.option("--input", "input_json", default="{}", help="the run's input, as JSON")
@click.option("--key", default=None, help="an idempotency key")
@click.option("--version", type=int, default=None)
def start(saga_name: str, input_json: str, key: str | None, version: int | None) -> None:
    """Start a run of SAGA_NAME and print its id."""
    from saga.errors import SagaError

    try:
        payload = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    system = _system(_settings())
    try:
        run_id, created = system.engine.start(saga_name, payload, key, version)
    except SagaError as exc:
        detail = getattr(exc, "errors", None)
        raise click.ClickException(f"{exc}{' ' + json.dumps(detail) if detail else ''}") from None
    click.echo(run_id if created else f"{run_id} (already started with this key)")


def _register() -> None:
    # Command groups kept in their own modules, so each stays small.
    from saga.cli.backfill import backfill
    from saga.cli.control import cancel, retry, signal
    from saga.cli.history import runs, show

    for command in (show, runs, cancel, signal, retry, backfill):
        main.add_command(command)


_register()
