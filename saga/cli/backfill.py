"""`saga backfill`: start the runs of a past range of schedule times, or of a file of inputs."""

from __future__ import annotations

import json
import re
from typing import IO, TYPE_CHECKING, Any

import click

from saga.cli.common import cli_actor
from saga.cli.common import settings as _settings
from saga.cli.common import system as _system

if TYPE_CHECKING:
    from saga.schedules.backfill import BackfillPlan, Window

ERROR_CHARS = 200  # of an earlier run's error, on its dry-run line


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
@click.option("--dry-run", is_flag=True,
              help="list the runs it would start, and how the windows that ran differ; "
                   "write nothing")
def backfill(saga_name: str, start: str | None, end: str | None, inputs: IO[str] | None,
             max_running: int, dry_run: bool) -> None:
    """Start the missing runs of SAGA_NAME: its schedule's times in a range, or a file's inputs.

    \b
        saga backfill nightly_report --from 2025-01-01 --to 2025-01-31T23:59 --max-running 4
        saga backfill reindex_user --inputs users.jsonl --dry-run

    Runs that exist already (same logical time, or same key) are not started again, so
    a backfill can be repeated, and never doubles what the schedule fired. The sweeper
    starts the rest as earlier runs finish; GET /v1/backfills/ID shows the progress.

    --dry-run prints one tab-separated line per window, in order: `start KEY INPUT` for a
    run it would start; for a window whose key already started a run, how that run
    differs (input_changed, running, failed: ended failed, compensated or cancelled;
    unchanged: succeeded with this input), then KEY INPUT `run ID STATUS` and the run's
    error or earlier input.
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
        for window in plan.windows:
            click.echo(_line(window))
        click.echo(f"dry run: would start {_runs(len(plan.items))} of {plan.saga} "
                   f"({_existing(plan)}); nothing written", err=True)
        failed = [w for w in plan.ran if w.earlier is not None and w.earlier.status == "failed"]
        if failed:
            click.echo(f"{len(failed)} of them ended failed: a backfill does not start them "
                       "again; `saga retry RUN_ID` resumes one", err=True)
        return
    backfill_id = system.scheduler.start_backfill(plan, created_by=cli_actor())
    progress = system.store.get_backfill(backfill_id)
    assert progress is not None  # just stored
    click.echo(backfill_id)
    click.echo(f"backfill {backfill_id}: {_runs(len(plan.items))} of {plan.saga} to start, at most "
               f"{plan.max_running} at once ({_existing(plan)}); "
               f"{progress['items']['started']} started now, the sweeper starts the rest",
               err=True)


def _line(window: Window) -> str:
    """A dry run's line for one window: what the backfill does with it, and why."""
    fields = [str(window.difference or "start"), window.key, _json(window.input)]
    earlier = window.earlier
    if earlier is not None:
        fields.append(f"run {earlier.id} {earlier.status}")
        if window.difference == "input_changed":
            fields.append(f"ran with {_json(earlier.input)}")
        elif earlier.error:
            fields.append(re.sub(r"\s+", " ", earlier.error)[:ERROR_CHARS])
    return "\t".join(fields)


def _existing(plan: BackfillPlan) -> str:
    """`3 exist already: 1 failed, 2 unchanged`, or `0 exist already`."""
    counts = ", ".join(f"{n} {str(d).replace('_', ' ')}" for d, n in plan.counts().items())
    return f"{plan.existing} exist already" + (f": {counts}" if counts else "")


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _describe(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if not errors:
        return str(exc)
    return "invalid backfill:\n" + "\n".join(
        f"  {where}: {' '.join(map(str, texts)) if isinstance(texts, list) else texts}"
        for where, texts in errors.items())
