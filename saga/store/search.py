"""The console's run search: a filtered page of runs, newest first, and counts per status.

A run's status is one of its own six, or one of two views across them: `waiting` (a
running run whose every unfinished step waits on a timer or a signal) and `parked`
(`runs.parked` set: no worker can go on with it until its version is loaded).

The search text finds a run by its id, its idempotency key, or a value in its input: on
PostgreSQL any string in the input that contains the text, ignoring case, or a number
equal to it (one jsonpath, `jsonb_path_exists`); on SQLite the input's JSON text
containing it. No index serves a search inside values, so it reads the runs the other
filters leave, newest first, and stops at a page of matches: a common value answers at
once, a rare one costs a scan (100,000 runs: see the README's console section).

    page, cursor = store.search_runs(RunFilter(status="waiting", text="o-1042"))
    store.count_runs(RunFilter(saga="order"))   # {"all": 9, "running": 4, "waiting": 1, …}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from saga.clock import aware
from saga.run import Role, RunStatus, StepStatus
from saga.store.database import Database
from saga.store.rows import decode_cursor, encode_cursor, run_view
from saga.store.tables import runs, steps

__all__ = ["RunFilter", "RunSearch", "STATUSES"]

WAITING, PARKED = "waiting", "parked"
# The status filter's choices, in the order the console shows them.
STATUSES = (str(RunStatus.RUNNING), WAITING, str(RunStatus.COMPENSATING),
            str(RunStatus.SUCCEEDED), str(RunStatus.COMPENSATED), str(RunStatus.FAILED),
            str(RunStatus.CANCELLED), PARKED)
# Unfinished steps that are not a wait: any of these means the run is busy, not waiting.
BUSY = (StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.RETRY_WAIT, StepStatus.PARKED)


@dataclass(frozen=True)
class RunFilter:
    """What the runs list shows; the fields combine (AND). `started_*` is half-open."""

    saga: str | None = None
    version: int | None = None
    status: str | None = None  # one of STATUSES
    started_after: datetime | None = None  # created_at >= this
    started_before: datetime | None = None  # created_at < this
    text: str | None = None  # a run id, an idempotency key, or a value in the input

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")


class RunSearch(Database):
    """Mixed into Store: what the console's runs page reads."""

    def search_runs(self, where: RunFilter, limit: int = 50,
                    cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of runs, newest first, each with `waiting`; and the next page's cursor.

        Raises ValueError for a cursor this store did not make.
        """
        waiting = sa.and_(runs.c.status == RunStatus.RUNNING, _waiting()).label(WAITING)
        query = (sa.select(runs, waiting).where(*self._conditions(where))
                 .order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1))
        if cursor:
            at, run_id = decode_cursor(cursor)
            # A row comparison is one index condition; the OR of two comparisons is not.
            query = query.where(sa.tuple_(runs.c.created_at, runs.c.id) < (aware(at), run_id))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        page = [dict(run_view(r), waiting=bool(r[WAITING])) for r in rows[:limit]]
        more = len(rows) > limit
        return page, encode_cursor(rows[limit - 1]) if more and page else None

    def count_runs(self, where: RunFilter) -> dict[str, int]:
        """Runs per status (every one of STATUSES, and "all") under the other filters.

        One GROUP BY over the runs the filters leave (parked counted in it), and one count
        of the waiting among the running, which reads the running runs alone.
        """
        conditions = self._conditions(replace(where, status=None))
        parked = sa.func.count().filter(runs.c.parked.is_not(None))
        by_status = (sa.select(runs.c.status, sa.func.count(), parked)
                     .where(*conditions).group_by(runs.c.status))
        waiting = (sa.select(sa.func.count()).select_from(runs)
                   .where(*conditions, runs.c.status == RunStatus.RUNNING, _waiting()))
        counts = dict.fromkeys(("all", *STATUSES), 0)
        with self.engine.connect() as conn:
            for status, count, parked_count in conn.execute(by_status):
                counts["all"] += count
                counts[status] = counts.get(status, 0) + count
                counts[PARKED] += parked_count
            counts[WAITING] = conn.execute(waiting).scalar_one()
        return counts

    def _conditions(self, where: RunFilter) -> list[sa.ColumnElement[bool]]:
        found: list[sa.ColumnElement[bool]] = []
        if where.saga:
            found.append(runs.c.saga == where.saga)
        if where.version is not None:
            found.append(runs.c.version == where.version)
        if where.status == WAITING:
            found += [runs.c.status == RunStatus.RUNNING, _waiting()]
        elif where.status == PARKED:
            found.append(runs.c.parked.is_not(None))
        elif where.status:
            found.append(runs.c.status == where.status)
        if where.started_after is not None:
            found.append(runs.c.created_at >= aware(where.started_after))
        if where.started_before is not None:
            found.append(runs.c.created_at < aware(where.started_before))
        if where.text:
            found.append(sa.or_(runs.c.id == where.text, runs.c.idempotency_key == where.text,
                                self._in_input(where.text)))
        return found

    def _in_input(self, text: str) -> sa.ColumnElement[bool]:
        if self.is_sqlite:
            return sa.cast(runs.c.input, sa.Text).icontains(text, autoescape=True)
        path = sa.cast(sa.literal(input_path(text)), postgresql.JSONPATH)
        return sa.func.jsonb_path_exists(runs.c.input, path)


def input_path(text: str) -> str:
    """A jsonpath true where a string value contains `text` (any case) or a number equals it.

    `flag "q"` takes the pattern literally, so `text` needs only a string literal's
    escaping, which JSON's is.
    """
    path = f"@ like_regex {json.dumps(text)} flag \"iq\""
    try:
        number = json.loads(text)
    except ValueError:
        number = None
    if isinstance(number, (int, float)) and not isinstance(number, bool) \
            and math.isfinite(number):
        path += f" || @ == {json.dumps(number)}"
    return f"$.** ? ({path})"


def _waiting() -> sa.ColumnElement[bool]:
    """The run has a forward step waiting, and no unfinished one that is not a wait."""
    forward = (steps.c.run_id == runs.c.id, steps.c.role == str(Role.FORWARD))
    waits = sa.exists().where(*forward, steps.c.status == StepStatus.WAITING)
    busy = sa.exists().where(*forward, steps.c.status.in_([str(s) for s in BUSY]))
    return sa.and_(waits, ~busy)
