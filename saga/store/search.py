"""The console's run search: a filtered page of runs, newest first, and counts per status.

A run's status is one of its own six, or one of two views across them: `waiting` (a
running run whose every unfinished step waits on a timer or a signal) and `parked`
(`runs.parked` set: no worker can go on with it until its version is loaded).

The search text finds a run by its id, its idempotency key, or a value anywhere in its
input equal to it (a string as stored, or a number): on PostgreSQL one jsonpath,
`jsonb_path_exists(input, '$.** ? (@ == "o-1042")')`, on SQLite `json_tree`. No index
looks inside values, so a search reads every run the other filters leave, once: its
matches give both the page and the counts (100,000 runs: about 0.2 s on PostgreSQL).

    shown = store.runs_page(RunFilter(status="waiting", text="o-1042"), limit=50)
    shown.runs, shown.cursor, shown.counts   # counts: {"all": 9, "running": 4, "waiting": 1, …}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from saga.clock import aware
from saga.run import Role, RunStatus, StepStatus
from saga.store.database import Database
from saga.store.rows import decode_cursor, encode_cursor, run_view
from saga.store.tables import events, runs, steps

__all__ = ["RunFilter", "RunSearch", "RunsPage", "STATUSES"]

WAITING, PARKED = "waiting", "parked"
# The status filter's choices, in the order the console shows them.
STATUSES = (str(RunStatus.RUNNING), WAITING, str(RunStatus.COMPENSATING),
            str(RunStatus.SUCCEEDED), str(RunStatus.COMPENSATED), str(RunStatus.FAILED),
            str(RunStatus.CANCELLED), PARKED)
# Unfinished steps that are not a wait: any of these means the run is busy, not waiting.
BUSY = (StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.RETRY_WAIT, StepStatus.PARKED)
# A search reads its matches once for both the page and the counts, up to this many.
MATCHES_READ = 2000


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


@dataclass(frozen=True)
class RunsPage:
    """What the console's runs list shows: a page of runs, the next page's cursor, and
    the count of each status under the filters other than status."""

    runs: list[dict[str, Any]]
    cursor: str | None
    counts: dict[str, int]


class RunSearch(Database):
    """Mixed into Store: what the console's runs page reads, and what its Run page polls."""

    def runs_page(self, where: RunFilter, limit: int = 50,
                  cursor: str | None = None) -> RunsPage:
        """A page of runs and the counts per status, in as few passes over the runs as can be.

        A search reads every run the other filters leave (no index looks inside values),
        so it does so once: the matches, when there are at most MATCHES_READ, give both
        the counts and the page. Without a search, or with more matches, the page reads
        runs newest first until it is full, and the counts are one GROUP BY.
        """
        if where.text:
            matches = self._matches(where)
            if matches is not None:
                return self._page_of(matches, where, limit, cursor)
        page, next_cursor = self.search_runs(where, limit, cursor)
        return RunsPage(page, next_cursor, self.count_runs(where))

    def search_runs(self, where: RunFilter, limit: int = 50,
                    cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of runs, newest first, each with `waiting`; and the next page's cursor.

        Raises ValueError for a cursor this store did not make.
        """
        query = (sa.select(runs, _waiting_run().label(WAITING)).where(*self._conditions(where))
                 .order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1))
        if cursor:
            at, run_id = decode_cursor(cursor)
            # A row comparison is one index condition; the OR of two comparisons is not.
            query = query.where(sa.tuple_(runs.c.created_at, runs.c.id) < (aware(at), run_id))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        page = [_view(r) for r in rows[:limit]]
        more = len(rows) > limit
        return page, encode_cursor(rows[limit - 1]) if more and page else None

    def count_runs(self, where: RunFilter) -> dict[str, int]:
        """Runs per status (every one of STATUSES, and "all") under the other filters.

        One statement, so the counts agree with each other. Without a search: a GROUP BY
        status (with no other filter, an index-only scan), and the parked and the waiting
        each counted from their own few rows (the partial indexes `runs_parked` and
        `steps_waiting`), never by asking each running run. A search reads every run the
        filters leave anyway, so it counts in that one pass.
        """
        conditions = self._conditions(replace(where, status=None))
        parked, waiting = runs.c.parked.is_not(None), _waiting_run()
        if where.text:
            query: sa.Select[Any] | sa.CompoundSelect = (
                sa.select(runs.c.status, sa.func.count(), sa.func.count().filter(parked),
                          sa.func.count().filter(waiting))
                .where(*conditions).group_by(runs.c.status))
        else:
            none = sa.literal(0)
            query = sa.union_all(
                sa.select(runs.c.status, sa.func.count(), none, none)
                .where(*conditions).group_by(runs.c.status),
                sa.select(sa.literal(PARKED), none, sa.func.count(), none)
                .select_from(runs).where(*conditions, parked),
                sa.select(sa.literal(WAITING), none, none, sa.func.count())
                .select_from(runs).where(*conditions, waiting))
        counts = dict.fromkeys(("all", *STATUSES), 0)
        with self.engine.connect() as conn:
            for status, count, parked_count, waiting_count in conn.execute(query):
                if status not in (PARKED, WAITING):
                    counts["all"] += count
                    counts[status] = counts.get(status, 0) + count
                counts[PARKED] += parked_count
                counts[WAITING] += waiting_count
        return counts

    def last_event_id(self, run_id: str) -> int:
        """The id of the run's newest event (0 before any): the Run page's live refresh
        asks it to see whether the history grew (one probe of the `events_run` index)."""
        query = sa.select(sa.func.max(events.c.id)).where(events.c.run_id == run_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one() or 0)

    def _matches(self, where: RunFilter) -> Sequence[sa.Row] | None:
        """Every run the search matches, briefly; None when there are more than MATCHES_READ."""
        query = (sa.select(runs.c.id, runs.c.created_at, runs.c.status,
                           runs.c.parked.is_not(None).label(PARKED),
                           _waiting_run().label(WAITING))
                 .where(*self._conditions(replace(where, status=None)))
                 .limit(MATCHES_READ + 1))
        with self.engine.connect() as conn:
            found = conn.execute(query).all()
        return found if len(found) <= MATCHES_READ else None

    def _page_of(self, matches: Sequence[sa.Row], where: RunFilter, limit: int,
                 cursor: str | None) -> RunsPage:
        counts = dict.fromkeys(("all", *STATUSES), 0)
        for match in matches:
            counts["all"] += 1
            counts[match.status] = counts.get(match.status, 0) + 1
            counts[PARKED] += bool(match.parked)
            counts[WAITING] += bool(match.waiting)
        chosen = [m for m in matches if _is(m, where.status)]
        chosen.sort(key=lambda m: (aware(m.created_at), m.id), reverse=True)
        if cursor:
            at, run_id = decode_cursor(cursor)
            chosen = [m for m in chosen if (aware(m.created_at), m.id) < (aware(at), run_id)]
        ids = [m.id for m in chosen[:limit + 1]]
        waiting = {m.id: bool(m.waiting) for m in chosen}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).where(runs.c.id.in_(ids))).mappings().all()
        rows = sorted(rows, key=lambda r: ids.index(r["id"]))
        page = [dict(run_view(r), waiting=waiting[r["id"]]) for r in rows[:limit]]
        more = len(rows) > limit
        return RunsPage(page, encode_cursor(rows[limit - 1]) if more and page else None, counts)

    def _conditions(self, where: RunFilter) -> list[sa.ColumnElement[bool]]:
        found: list[sa.ColumnElement[bool]] = []
        if where.saga:
            found.append(runs.c.saga == where.saga)
        if where.version is not None:
            found.append(runs.c.version == where.version)
        if where.status == WAITING:
            found.append(_waiting_run())
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
        """A value in the input equal to `text`: a string, or a number written as `text`."""
        number = _number(text)
        if self.is_sqlite:
            leaves = sa.func.json_tree(runs.c.input).table_valued("atom", "type")
            same = sa.and_(leaves.c.type == "text", leaves.c.atom == text)
            if number is not None:
                same = sa.or_(same, sa.and_(leaves.c.type.in_(["integer", "real"]),
                                            leaves.c.atom == number))
            return sa.exists().select_from(leaves).where(same)
        path = sa.cast(sa.literal(input_path(text)), postgresql.JSONPATH)
        return sa.func.jsonb_path_exists(runs.c.input, path)


def input_path(text: str) -> str:
    """A jsonpath true where a value anywhere equals `text` (a string, or a number).

    The text goes in as a string literal, escaped as JSON's are (jsonpath reads the same
    escapes), so no text can change the path; a literal is also cheaper per row than a
    `$var` passed beside it.
    """
    path = f"@ == {json.dumps(text)}"
    number = _number(text)
    if number is not None:
        path += f" || @ == {json.dumps(number)}"
    return f"$.** ? ({path})"


def _number(text: str) -> int | float | None:
    try:
        number = json.loads(text)
    except ValueError:
        return None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return None
    return number if math.isfinite(number) else None


def _waiting_run() -> sa.ColumnElement[bool]:
    """A running run with a forward step waiting (a timer, a signal) and none busy.

    EXISTS … AND NOT EXISTS: to count or list the waiting, PostgreSQL starts from the few
    waiting steps (the partial index `steps_waiting`) and probes each one's run and busy
    steps by key; for one run (a row's label) it is two probes of the steps' key.
    """
    forward = steps.c.role == str(Role.FORWARD)
    waits = sa.exists().where(steps.c.run_id == runs.c.id, forward,
                              steps.c.status == str(StepStatus.WAITING))
    busy = sa.exists().where(steps.c.run_id == runs.c.id, forward,
                             steps.c.status.in_(list(map(str, BUSY))))
    return sa.and_(runs.c.status == str(RunStatus.RUNNING), waits, ~busy)


def _is(match: sa.Row, status: str | None) -> bool:
    if status is None:
        return True
    if status == WAITING:
        return bool(match.waiting)
    if status == PARKED:
        return bool(match.parked)
    return bool(match.status == status)


def _view(row: Any) -> dict[str, Any]:
    return dict(run_view(row), waiting=bool(row[WAITING]))
