"""`saga backfill`: start the runs of a past range of schedule times, or of a file of inputs."""

from __future__ import annotations

import click


@click.command()
@click.argument("saga_name")
def backfill(saga_name: str) -> None:
    """Start the missing runs of SAGA_NAME for a past range (not built yet)."""
    raise click.ClickException("backfill is not built yet")
