"""Schedules and backfills of scheduled or event-driven sagas."""

from __future__ import annotations

from api.parsing import Blueprint

blp = Blueprint("schedules", __name__, description="Schedules and backfills")
