"""`saga schedule`: list the loaded schedules (also `saga schedules`), pause one, resume one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from saga.cli.common import cli_actor
from saga.cli.common import settings as _settings
from saga.cli.common import system as _system

if TYPE_CHECKING:
    from saga.schedules.firing import Scheduler


def _scheduler() -> Scheduler:
    return _system(_settings(), serve=False).scheduler


@click.group()
def schedule() -> None:
    """The schedules of the sagas in SAGA_SAGAS: list them, pause one, resume one."""


@schedule.command(name="list")
def list_schedules() -> None:
    """What fires next, soonest first: cron, zone, next firing (and how soon), last firing,
    paused (when, by whom). The same as `saga schedules`."""
    from saga.schedules.firing import scheduled
    from saga.timeline import duration

    scheduler = _scheduler()
    rows = scheduler.states()
    if not rows:
        click.echo("no saga in SAGA_SAGAS has a schedule", err=True)
        return
    now = scheduler.store.now()
    found = scheduled(scheduler.registry)
    for r in rows:
        if r["next_fire_at"] is None and not r["paused"]:
            # No sweeper has seen this schedule yet: its first firing is the first time after
            # now, as the sweeper will store it.
            r["next_fire_at"] = found[r["saga"]].next_after(now)
    rows.sort(key=lambda r: (r["next_fire_at"] is None, r["next_fire_at"] or now, r["saga"]))
    width = max(len("SAGA"), *(len(r["saga"]) for r in rows))
    cron = max(len("CRON"), *(len(f"{r['cron']} {r['timezone']}") for r in rows))
    click.echo(f"{'SAGA':<{width}}  {'CRON':<{cron}}  {'NEXT':<20}  {'IN':<14}  {'LAST':<20}  "
               "PAUSED")
    for r in rows:
        paused = f"{_when(r['paused_at'])} by {r['paused_by'] or '-'}" if r["paused"] else "-"
        due = r["next_fire_at"]
        soon = "-" if due is None else "due now" if due <= now else duration(due - now)
        click.echo(f"{r['saga']:<{width}}  {r['cron'] + ' ' + r['timezone']:<{cron}}  "
                   f"{_when(due):<20}  {soon:<14}  {_when(r['last_fire_at']):<20}  {paused}")


# The top-level name for the listing: `saga schedules`, beside `saga sagas` and `saga runs`.
schedules = click.Command("schedules", callback=list_schedules.callback,
                          help=list_schedules.help)


@schedule.command()
@click.argument("name")
def pause(name: str) -> None:
    """Pause the schedule of saga NAME: it starts no runs until resumed."""
    scheduler = _scheduler()
    paused = _known(lambda: scheduler.pause(name, by=cli_actor()))
    click.echo(f"schedule of {name} {'paused' if paused else 'was paused already'}")


@schedule.command()
@click.argument("name")
def resume(name: str) -> None:
    """Resume the schedule of saga NAME from now: what was due while paused is not started."""
    scheduler = _scheduler()
    if not _known(lambda: scheduler.resume(name, by=cli_actor())):
        click.echo(f"schedule of {name} was not paused")
        return
    click.echo(f"schedule of {name} resumed; next firing "
               f"{_when(scheduler.state(name)['next_fire_at'])}")


def _known(change: Callable[[], bool]) -> bool:
    """The change's outcome, or one line for a saga not loaded or without a schedule."""
    from saga.errors import UnknownSaga

    try:
        return change()
    except UnknownSaga as exc:
        raise click.ClickException(str(exc)) from None


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"
