"""The `saga` command: run the API, workers, the sweeper or all in one; start and show runs."""

from __future__ import annotations

import json
import os

import click

from saga.cli.common import Group, cli_actor, freeze_before_fork, refuse
from saga.cli.common import registry as _registry
from saga.cli.common import settings as _settings
from saga.cli.common import system as _system
from saga.observe.logsetup import configure
from saga.settings import Settings, check_log_format, redacted


@click.group(cls=Group)
@click.version_option(package_name="saga-orchestrator", prog_name="saga")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def main(log_level: str) -> None:
    """Durable sagas on Celery. Configure with SAGA_* environment variables (see README)."""
    try:  # read alone and first: every line after this is in that format
        log_format = check_log_format(os.environ.get("SAGA_LOG_FORMAT", "text"))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    configure(log_level, log_format)


@main.command()
def migrate() -> None:
    """Apply the Alembic migrations to SAGA_DATABASE_URL."""
    import saga.migrations as migrations

    settings = _settings()
    migrations.upgrade(settings.database_url)
    click.echo(f"migrated {redacted(settings.database_url)}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              envvar="SAGA_API_WORKERS", help="processes (SAGA_API_WORKERS)")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(min=1),
              envvar="SAGA_API_THREADS", help="threads per process (SAGA_API_THREADS)")
def api(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the HTTP API under gunicorn: WORKERS processes of THREADS threads each."""
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        raise click.ClickException(
            "saga api needs gunicorn: pip install 'saga-orchestrator[deploy]'") from None
    _count_in_files()  # /metrics then counts what every gunicorn worker did
    from saga.api import create_app

    settings = _settings()
    system = _system(settings)
    # Built once, before gunicorn forks, so a bad setting stops here with a clear message.
    app = create_app(settings, system)
    system.store.pool_for(threads)
    # No connection crosses the fork: each worker opens its own (the store re-opens by pid).
    system.store.close()

    def when_ready(server) -> None:
        bound_port = server.LISTENERS[0].sock.getsockname()[1]  # the real one, even for 0
        click.echo(f"saga api on http://{host}:{bound_port}", err=True)

    class Gunicorn(BaseApplication):
        def load_config(self) -> None:
            bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets
            options = {"bind": bind, "workers": workers, "threads": threads,
                       "when_ready": when_ready}
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn >= 25.1 opens one control socket per user ($HOME/.gunicorn):
                # several `saga api` on one host would take it from each other.
                options["control_socket_disable"] = True
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self):
            return app

    freeze_before_fork()  # gunicorn forks its workers next
    Gunicorn().run()


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=int, default=None, help="processes (SAGA_WORKER_CONCURRENCY)")
@click.option("--pool", default="prefork", show_default=True,
              type=click.Choice(["prefork", "threads", "solo"]))
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="serve the pool's Prometheus metrics here (SAGA_WORKER_METRICS_PORT; 0: off)")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int | None, pool: str, metrics_port: int | None,
           celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker for the saga steps; extra arguments go to Celery."""
    from saga.errors import NoDeploymentId
    from saga.tasks import broker_limit_problems, prepare_worker
    from saga.tasks.namespace import QueueMismatch

    settings = _settings()
    metrics_port = _metrics_port(settings, metrics_port, settings.worker_metrics_port)
    if metrics_port:
        _count_in_files()  # before the sagas' modules import anything: the children inherit it
    sagas = _registry(settings)
    refuse(broker_limit_problems(settings, sagas))  # before connecting to anything
    system = _system(settings, loaded=sagas)
    # This deployment's queue (SAGA_QUEUE, or one per database): read now, kept by the pool.
    try:
        queue = prepare_worker(system.celery, system.dispatcher.namespace)
    except (NoDeploymentId, QueueMismatch) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"saga worker: deployment {system.dispatcher.namespace.id}, queue {queue}", err=True)
    concurrency = concurrency or settings.worker_concurrency
    if pool == "threads":  # one process runs them all: its pool needs room for each
        system.store.pool_for(concurrency)
    argv = ["worker", f"--pool={pool}", f"--concurrency={concurrency}",
            f"--queues={queue}", "--without-gossip", "--without-mingle",
            "--loglevel=INFO", *celery_args]
    if not any(a.startswith(("-n", "--hostname")) for a in celery_args):
        # Unique node names: two workers named alike fight over RabbitMQ's pidbox queue.
        argv.append(f"--hostname=saga-{os.getpid()}@%h")
    if metrics_port:
        _serve_metrics(metrics_port, "worker")
    freeze_before_fork()  # the prefork pool forks its children next
    system.celery.worker_main(argv)


@main.command()
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="serve its Prometheus metrics here (SAGA_SWEEPER_METRICS_PORT; 0: off)")
def sweeper(metrics_port: int | None) -> None:
    """Republish lost dispatches, expire dead leases, fire due retries; safe to run many."""
    settings = _settings()
    metrics_port = _metrics_port(settings, metrics_port, settings.sweeper_metrics_port)
    system = _system(settings)
    if metrics_port:
        _serve_metrics(metrics_port, "sweeper")
    system.sweeper.run_forever()


def _count_in_files() -> None:
    """prometheus-client's multiprocess mode, for a command whose processes one scrape shows."""
    from saga.observe.multiprocess import count_in_files

    try:
        count_in_files()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _metrics_port(settings: Settings, given: int | None, configured: int) -> int:
    """The port to serve metrics on (the option wins over the setting); 0: none."""
    port = configured if given is None else given
    if port and settings.metrics == "off":
        raise click.UsageError(f"--metrics-port {port} would serve nothing: SAGA_METRICS=off "
                               "counts nothing; unset one of them")
    return port


def _serve_metrics(port: int, what: str) -> None:
    from saga.observe.metrics import serve

    try:
        serve(port)
    except OSError as exc:
        raise click.ClickException(f"cannot serve metrics on port {port}: {exc}") from None
    click.echo(f"saga {what}: metrics on http://0.0.0.0:{port}/metrics", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def dev(host: str, port: int) -> None:
    """API, worker and sweeper in one process on the embedded default (SQLite, in-memory broker)."""
    from werkzeug.serving import make_server

    from saga.api import create_app
    from saga.embedded import embedded

    settings = _settings()
    if settings.is_sqlite and "SAGA_AUTH" not in os.environ:
        settings = settings.with_(auth="off")  # one machine's file: no token to make first
    with embedded(settings, _registry(settings)) as system:
        app = create_app(settings, system)
        server = make_server(host, port, app, threaded=True)
        # The demo's steps call the services this process mounts: here, unless set elsewhere.
        local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        local = f"[{local}]" if ":" in local else local
        os.environ.setdefault("SAGA_DEMO_SERVICES_URL", f"http://{local}:{server.server_port}")
        click.echo(f"saga dev on http://{host}:{server.server_port} "
                   f"(database {redacted(settings.database_url)}, auth {settings.auth})", err=True)
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
    system = _system(_settings(), serve=False)
    try:
        run_id, created = system.engine.start(saga_name, payload, key, version,
                                              actor=cli_actor())
    except SagaError as exc:
        detail = getattr(exc, "errors", None)
        raise click.ClickException(f"{exc}{' ' + json.dumps(detail) if detail else ''}") from None
    click.echo(run_id if created else f"{run_id} (already started with this key)")


def _register() -> None:
    # Command groups kept in their own modules, so each stays small.
    from saga.cli.backfill import backfill
    from saga.cli.control import cancel, retry, signal
    from saga.cli.flower import flower
    from saga.cli.history import runs, show
    from saga.cli.sagas import sagas
    from saga.cli.schedules import schedule, schedules
    from saga.cli.tokens import token

    for command in (show, runs, sagas, cancel, signal, retry, backfill, schedule, schedules,
                    token, flower):
        main.add_command(command)


_register()
