"""History commands: search runs, and show one run's timeline or its state at a moment."""

from __future__ import annotations

import math
import re
import shutil
import sys
import time
from datetime import datetime
from datetime import time as clock_time
from typing import TYPE_CHECKING, Any

import click

from saga.cli.common import settings as _settings
from saga.run import RunStatus, StepStatus

if TYPE_CHECKING:
    from saga.store import Store

TIME_HELP = ("HH:MM[:SS] today in local time, or an ISO 8601 date and time "
             "(2025-05-01T03:00, local unless it carries an offset such as +02:00 or Z)")


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A moment from the command line: `03:00` is today (local time), or ISO 8601.

    Naive times are local time: `now`'s zone when it has one, else this machine's.
    Raises ValueError for anything else.
    """
    now = now or datetime.now()
    text = text.strip()
    clock = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", text)
    if clock:
        hour, minute, second = (int(part or 0) for part in clock.groups())
        moment = datetime.combine(now.date(), clock_time(hour, minute, second))
    else:
        moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=now.tzinfo) if now.tzinfo else moment.astimezone()


class When(click.ParamType):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_when(value)
        except ValueError:
            self.fail(f"{value!r} is not a time: give {TIME_HELP}", param, ctx)


@click.command()
@click.argument("run_id")
@click.option("--at", "at", type=When(), default=None,
              help=f"show the run's state at this moment instead: {TIME_HELP}")
@click.option("--events", "with_events", is_flag=True, help="also list every event")
@click.option("--follow", "-f", is_flag=True,
              help="keep watching until the run ends: redraw the timeline on a terminal, "
                   "print each new event otherwise (Ctrl-C stops)")
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(min=0.05),
              help="seconds between looks at the saga log, with --follow")
def show(run_id: str, at: datetime | None, with_events: bool, follow: bool,
         interval: float) -> None:
    """Print a run's timeline: each attempt of each step and compensation.

    With --at, print the status of the run and of each step as of that moment, rebuilt
    from the run's event log. With --follow, watch it live until it ends.
    """
    from saga.errors import RunNotFound
    from saga.store import Store
    from saga.timeline import render, render_events, render_state, state_at

    if follow and at:
        raise click.BadParameter("--at shows a past moment; --follow shows the run as it goes",
                                 param_hint="--follow")
    store = Store(_settings().database_url)
    try:
        if follow:
            _follow(store, run_id, interval, with_events)
            return
        run, events = store.get_run(run_id), store.events(run_id)
    except RunNotFound as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(render_state(run, state_at(events, at)) if at else render(run, events))
    if with_events:
        click.echo(render_events(run, events))


def _follow(store: Store, run_id: str, interval: float, with_events: bool) -> None:
    """Look at the run every `interval` seconds until it ends; show it only when it changed.

    On a terminal the timeline is redrawn in place; into a pipe or a file, the first
    timeline, then each new event as a line, then the final timeline.
    """
    from saga.timeline import render, render_events

    terminal = sys.stdout.isatty()
    seen: tuple[Any, ...] | None = None
    drawn = 0  # lines on screen, on a terminal
    printed: int | None = None  # events printed so far, otherwise
    try:
        while True:
            run, events = store.get_run(run_id), store.events(run_id)
            ended = RunStatus(run["status"]).terminal
            if seen != (now := (run["status"], run.get("parked"), len(events))):
                seen = now
                text = render(run, events)
                if terminal:
                    if with_events:
                        text += "\n" + render_events(run, events)
                    if not ended:
                        text += f"\n  … following, every {interval:g} s (Ctrl-C stops)"
                    drawn = _redraw(text, drawn)
                elif printed is None:
                    click.echo(text)
                else:
                    if len(events) > printed:
                        click.echo(render_events(run, events[printed:]))
                    if ended:
                        click.echo("\n" + text)
                printed = len(events)
            if ended:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following run {run_id}; it goes on", err=True)
        raise SystemExit(130) from None  # the shell's code for "interrupted"


def _redraw(text: str, drawn: int) -> int:
    """Draw `text` over the `drawn` lines written last time; how many lines it takes now."""
    size = shutil.get_terminal_size()
    lines = sum(max(1, math.ceil(len(line) / size.columns)) for line in text.split("\n"))
    if drawn and drawn < size.lines:
        text = f"\x1b[{drawn}F\x1b[J{text}"  # up to the first line drawn, clear what follows
    elif drawn:
        text = f"\x1b[H\x1b[2J{text}"  # it scrolled past the top: start a clean screen
    click.echo(text)
    return lines


@click.command()
@click.option("--saga", "saga_name", default=None, help="only runs of this saga")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="only runs pinned to this version (with --saga)")
@click.option("--status", type=click.Choice([s.value for s in RunStatus]), default=None)
@click.option("--since", type=When(), default=None,
              help=f"started at or after this: {TIME_HELP}")
@click.option("--until", type=When(), default=None, help="started before this (same forms)")
@click.option("--finished-since", type=When(), default=None,
              help="finished at or after this (same forms)")
@click.option("--finished-until", type=When(), default=None,
              help="finished before this (same forms)")
@click.option("--step", default=None, help="only runs that have a step of this name")
@click.option("--step-status", type=click.Choice([s.value for s in StepStatus]), default=None,
              help="with --step: only where that step has this status")
@click.option("--error", default=None,
              help="only runs whose error, or a step's error, contains this (any case)")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option("--cursor", default=None, help="the next page, as printed after a full page")
@click.option("--header/--no-header", default=None,
              help="a first line naming the columns  [default: on a terminal only, so a "
                   "pipe gets one line per run]")
def runs(saga_name: str | None, version: int | None, status: str | None,
         since: datetime | None, until: datetime | None, finished_since: datetime | None,
         finished_until: datetime | None, step: str | None, step_status: str | None,
         error: str | None, limit: int, cursor: str | None, header: bool | None) -> None:
    """List runs, newest first, one line each.

    \b
    saga runs --saga charge --status failed --since 03:00 --until 03:15
    saga runs --step charge_card --step-status failed --error declined
    """
    from saga.store import Store
    from saga.timeline import duration

    if step_status and not step:
        raise click.BadParameter("needs --step", param_hint="--step-status")
    if version and not saga_name:
        raise click.BadParameter("needs --saga: versions are numbered per saga",
                                 param_hint="--version")
    store = Store(_settings().database_url)
    try:
        page, more = store.list_runs(
            saga_name, status, limit, cursor, version=version, started_after=since,
            started_before=until, finished_after=finished_since, finished_before=finished_until,
            step=step, step_status=step_status, error=error)
    except ValueError as exc:  # a cursor this store did not make
        raise click.BadParameter(str(exc), param_hint="--cursor") from None
    finally:
        store.close()
    if not page:
        filtered = any(v is not None for v in (saga_name, version, status, since, until,
                                                finished_since, finished_until, step, error))
        click.echo("no more runs" if cursor else "no run matches these filters" if filtered
                   else "no runs yet", err=True)
        return
    width = max(len(f"{run['saga']} v{run['version']}") for run in page)
    if header if header is not None else sys.stdout.isatty():
        click.echo(f"{'ID':<36}  {'STARTED':<19}  {'SAGA':<{width}}  {'STATUS':<12}  "
                   f"{'TOOK':>10}  ERROR")
    for run in page:
        took = duration(run["finished_at"] - run["created_at"]) if run["finished_at"] else "-"
        line = (f"{run['id']}  {run['created_at'].astimezone():%Y-%m-%d %H:%M:%S}  "
                f"{run['saga'] + ' v' + str(run['version']):<{width}}  {run['status']:<12}  "
                f"{took:>10}")
        if run["error"]:
            line += f"  {_one_line(run['error'])}"
        click.echo(line)
    if more:
        click.echo(f"more: --cursor {more}", err=True)


def _one_line(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"
