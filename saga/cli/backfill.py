"""`saga backfill`: start the runs of a past range of schedule times, or of a file of inputs."""

from __future__ import annotations

import json
from typing import IO

import click

from saga.cli.common import cli_actor
from saga.cli.common import settings as _settings
from saga.cli.common import system as _system


@click.command()
@click.argument("saga_name")
@click.option("--from", "start", metavar="TIME",
              help="first logical time, ISO 8601 (no offset: the schedule's time zone)")
@click.option("--to", "end", metavar="TIME", help="last logical time, included")
@click.option("--inputs", type=click.File("r", encoding="utf-8"), metavar="FILE",
              help="JSON lines, one run each: {\"key\": ..., \"input\": ...} or the input "
                   "itself ('-' reads stdin)")
@click.option("--max-running", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="at most this many of the backfill's runs unfinished at once")
@click.option("--dry-run", is_flag=True, help="list the runs it would start; write nothing")
def backfill(saga_name: str, start: str | None, end: str | None, inputs: IO[str] | None,
             max_running: int, dry_run: bool) -> None:
    """Start the missing runs of SAGA_NAME: its schedule's times in a range, or a file's inputs.

    \b
        saga backfill nightly_report --from 2025-01-01 --to 2025-01-31T23:59 --max-running 4
        saga backfill reindex_user --inputs users.jsonl --dry-run

    Runs that exist already (same logical time, or same key) are not started again, so
    a backfill can be repeated, and never doubles what the schedule fired. The sweeper
    starts the rest as earlier runs finish; GET /v1/backfills/ID shows the progress.
    """
    from saga.errors import SagaError
    from saga.schedules.backfill import parse_lines

    if inputs is None and start is None and end is None:
        raise click.UsageError("give --from and --to (a scheduled saga) or --inputs FILE")
    if inputs is not None and (start is not None or end is not None):
        raise click.UsageError("give either --from/--to or --inputs, not both")
    system = _system(_settings(), serve=False)
    try:
        entries = parse_lines(inputs) if inputs is not None else None
        plan = system.scheduler.plan_backfill(saga_name, start=start, end=end, inputs=entries,
                                              max_running=max_running)
    except SagaError as exc:
        raise click.ClickException(_describe(exc)) from None
    if dry_run:
        for key, value in plan.items:
            click.echo(f"{key}\t{json.dumps(value, sort_keys=True)}")
        click.echo(f"dry run: would start {len(plan.items)} runs of {plan.saga} "
                   f"({plan.existing} exist already); nothing written", err=True)
        return
    backfill_id = system.scheduler.start_backfill(plan, created_by=cli_actor())
    progress = system.store.get_backfill(backfill_id)
    assert progress is not None  # just stored
    click.echo(backfill_id)
    click.echo(f"backfill {backfill_id}: {len(plan.items)} runs of {plan.saga} to start, at most "
               f"{plan.max_running} at once ({plan.existing} exist already); "
               f"{progress['items']['started']} started now, the sweeper starts the rest",
               err=True)


def _describe(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if not errors:
        return str(exc)
    return "invalid backfill:\n" + "\n".join(
        f"  {where}: {' '.join(map(str, texts)) if isinstance(texts, list) else texts}"
        for where, texts in errors.items())
