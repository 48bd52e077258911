"""`saga sagas`: the definitions this shell loads from SAGA_SAGAS, one line per version."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from saga.cli.common import registry as _registry
from saga.cli.common import settings as _settings

if TYPE_CHECKING:
    from saga.definitions import Saga


@click.command()
def sagas() -> None:
    """List the sagas in SAGA_SAGAS: each version, its schedule, signals and steps.

    New runs take a saga's latest version; older ones stay loaded for the runs in flight.
    Reads no database: it shows what a worker started in this shell would load.
    """
    loaded = sorted(_registry(_settings(), serve=False), key=lambda s: (s.name, s.version))
    latest = {s.name: s.version for s in loaded}  # sorted: the last one seen is the newest
    several = {s.name for s in loaded if s.version != latest[s.name]}
    rows = [(s.name, _version(s, latest, several), _schedule(s), ", ".join(_signals(s)) or "-",
             f"{len(s.order)}: {', '.join(s.order)}") for s in loaded]
    header = ("SAGA", "VERSION", "SCHEDULE", "SIGNALS", "STEPS")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):  # the last column, the longest, is not padded
        click.echo("  ".join(f"{cell:<{width}}" for cell, width in zip(row[:-1], widths,
                                                                       strict=True))
                   + f"  {row[-1]}")


def _version(saga: Saga, latest: dict[str, int], several: set[str]) -> str:
    """The version; `latest` beside the one new runs take, where a saga has several."""
    newest = saga.name in several and saga.version == latest[saga.name]
    return f"{saga.version} latest" if newest else str(saga.version)


def _schedule(saga: Saga) -> str:
    schedule = saga.schedule
    return f"{schedule.cron} {schedule.timezone}" if schedule is not None else "-"


def _signals(saga: Saga) -> list[str]:
    from saga.definitions import Signal

    return [wait.name for name in saga.order
            if isinstance(wait := saga.by_name[name].wait, Signal)]
