"""Schedules and backfills in the saga log: their tables, due firings, backfill items, progress.

Neither holds a row lock while runs start (on SQLite that lock would be the whole
database): a sweeper claims rows `FOR UPDATE SKIP LOCKED` and marks them claimed for
`claim_s`, starts the runs (idempotent by key), then records what it did. If it dies in
between, the claim runs out and another sweeper repeats the starts, which find their runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from saga.clock import aware
from saga.run import RunStatus
from saga.store.database import Database
from saga.store.tables import JSON, When, metadata, runs

TERMINAL = [str(s) for s in RunStatus if s.terminal]
KEYS_PER_QUERY = 1000

schedules = sa.Table(
    "schedules", metadata,
    sa.Column("saga", sa.String(200), primary_key=True),
    sa.Column("spec", sa.String(300), nullable=False),  # the cron and zone the times follow
    sa.Column("next_fire_at", When, nullable=False),
    sa.Column("last_fire_at", When),  # the newest logical time started
    sa.Column("claimed_until", When),  # a sweeper is starting its due firings
    sa.Column("updated_at", When, nullable=False),
    sa.Column("paused_at", When),  # set: no sweeper claims it until it is resumed
    sa.Column("paused_by", sa.String(100)),  # an API token's name, or cli:<user>
    sa.Index("schedules_due", "next_fire_at"),
)

backfills = sa.Table(
    "backfills", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("saga", sa.String(200), nullable=False),
    sa.Column("max_running", sa.Integer, nullable=False),
    sa.Column("from_at", When),  # the range of a schedule's logical times; null for inputs
    sa.Column("to_at", When),
    sa.Column("existing", sa.Integer, nullable=False),  # asked for, but a run had the key
    sa.Column("created_at", When, nullable=False),
    sa.Column("claimed_until", When),
    sa.Column("fed_at", When),  # every item started or refused: the sweeper stops looking
    sa.Column("created_by", sa.String(100)),  # the API token's name; its runs are started as it
    sa.Index("backfills_feeding", "created_at",
             postgresql_where=sa.text("fed_at IS NULL"), sqlite_where=sa.text("fed_at IS NULL")),
)

backfill_items = sa.Table(
    "backfill_items", metadata,
    sa.Column("backfill_id", sa.String(36), sa.ForeignKey("backfills.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(255), nullable=False),  # the run's idempotency key
    sa.Column("input", JSON, nullable=False),
    sa.Column("started_at", When),  # taken by a feed (its run may not be recorded yet)
    sa.Column("run_id", sa.String(36)),
    sa.Column("finished_at", When),  # the feed saw its run end
    sa.Column("error", sa.Text),  # why it could not start (refused for good)
    sa.Index("backfill_items_pending", "backfill_id", "seq",
             postgresql_where=sa.text("started_at IS NULL AND error IS NULL"),
             sqlite_where=sa.text("started_at IS NULL AND error IS NULL")),
    sa.Index("backfill_items_in_flight", "backfill_id",
             postgresql_where=sa.text("started_at IS NOT NULL AND finished_at IS NULL"),
             sqlite_where=sa.text("started_at IS NOT NULL AND finished_at IS NULL")),
)


@dataclass(frozen=True)
class Feed:
    """A claimed backfill and the items its feed is to start now."""

    backfill_id: str
    saga: str
    items: tuple[tuple[int, str, Any], ...]  # (seq, idempotency key, input)
    created_by: str | None = None  # who asked for the backfill: its runs' actor


class ScheduleStore(Database):
    """Mixed into Store: the SQL of schedules and backfills."""

    # -- schedules ----------------------------------------------------------------

    def add_schedules(self, specs: Mapping[str, str],
                      first_fire_at: Callable[[str], datetime]) -> None:
        """Insert a row for each (saga: spec) not stored yet, due at `first_fire_at(saga)`.

        A stored row whose spec differs starts over the same way. Done once per saga and
        process, so another process with another definition does not flip it back.
        """
        seen: dict[str, str] = self.__dict__.setdefault("_schedule_specs", {})
        new = {saga: spec for saga, spec in specs.items() if seen.get(saga) != spec}
        if not new:
            return
        with self.begin() as conn:
            now = self.now(conn)
            for saga, spec in sorted(new.items()):
                first = first_fire_at(saga)
                conn.execute(self._insert(schedules).values(
                    saga=saga, spec=spec, next_fire_at=first, updated_at=now,
                ).on_conflict_do_nothing(index_elements=["saga"]))
                conn.execute(schedules.update().where(
                    schedules.c.saga == saga, schedules.c.spec != spec).values(
                        spec=spec, next_fire_at=first, claimed_until=None, updated_at=now))
        seen.update(new)

    def claim_due_schedules(self, specs: Mapping[str, str], now: datetime, limit: int,
                            claim_s: float) -> list[tuple[str, datetime]]:
        """Schedules of these (saga: spec) due at `now` and unclaimed: claim them.

        Returns (saga, next firing) each; the claimer then calls `advance_schedule` or
        `release_schedule`.
        """
        if not specs:
            return []
        with self.begin() as conn:
            rows = conn.execute(
                sa.select(schedules.c.saga, schedules.c.next_fire_at)
                .where(schedules.c.next_fire_at <= now, schedules.c.paused_at.is_(None),
                       sa.or_(*[sa.and_(schedules.c.saga == saga, schedules.c.spec == spec)
                                for saga, spec in specs.items()]),
                       sa.or_(schedules.c.claimed_until.is_(None),
                              schedules.c.claimed_until <= now))
                .order_by(schedules.c.next_fire_at).limit(limit)
                .with_for_update(skip_locked=True)).all()
            if rows:
                conn.execute(schedules.update().where(
                    schedules.c.saga.in_([r.saga for r in rows])).values(
                        claimed_until=now + timedelta(seconds=claim_s)))
        return [(r.saga, aware(r.next_fire_at)) for r in rows]

    def advance_schedule(self, saga: str, was: datetime, next_fire_at: datetime,
                         fired: datetime | None) -> bool:
        """Move a claimed schedule on; False if another sweeper moved it first."""
        values: dict[str, Any] = dict(next_fire_at=next_fire_at, claimed_until=None)
        if fired is not None:
            values["last_fire_at"] = fired
        with self.begin() as conn:
            values["updated_at"] = self.now(conn)
            done = conn.execute(schedules.update().where(
                schedules.c.saga == saga, schedules.c.next_fire_at == was).values(**values))
            return done.rowcount == 1

    def release_schedule(self, saga: str) -> None:
        """Give a claim back unchanged, so the next sweep tries again."""
        with self.begin() as conn:
            conn.execute(schedules.update().where(schedules.c.saga == saga)
                         .values(claimed_until=None))

    def pause_schedule(self, saga: str, by: str | None) -> bool:
        """Stop claiming the stored schedule of `saga`; False if it was paused already
        (or has no row: `add_schedules` first). A firing being started now still starts."""
        with self.begin() as conn:
            now = self.now(conn)
            done = conn.execute(schedules.update().where(
                schedules.c.saga == saga, schedules.c.paused_at.is_(None)).values(
                    paused_at=now, paused_by=by, updated_at=now))
            return done.rowcount == 1

    def resume_schedule(self, saga: str, next_after: Callable[[datetime], datetime]) -> bool:
        """Let a paused schedule fire again from `next_after(now)`; False if it was not paused.

        The firings due while it was paused are dropped, whatever its catch-up policy: a
        resumed schedule never fires late (a backfill of the paused range starts them).
        """
        with self.begin() as conn:
            now = self.now(conn)
            done = conn.execute(schedules.update().where(
                schedules.c.saga == saga, schedules.c.paused_at.is_not(None)).values(
                    paused_at=None, paused_by=None, next_fire_at=next_after(now),
                    claimed_until=None, updated_at=now))
            return done.rowcount == 1

    def schedule_rows(self) -> list[dict[str, Any]]:
        """Every stored schedule's state, by saga."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(schedules).order_by(schedules.c.saga)).mappings().all()
        return [{"saga": r["saga"], "spec": r["spec"], "next_fire_at": aware(r["next_fire_at"]),
                 "last_fire_at": aware(r["last_fire_at"]), "paused_at": aware(r["paused_at"]),
                 "paused_by": r["paused_by"]} for r in rows]

    # -- backfills ----------------------------------------------------------------

    def runs_by_key(self, saga: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The run each of these idempotency keys already started in `saga`, by key:
        its id, status, input and error (a backfill compares them with what it asks)."""
        found: dict[str, dict[str, Any]] = {}
        r = runs.c
        with self.engine.connect() as conn:
            for at in range(0, len(keys), KEYS_PER_QUERY):
                for row in conn.execute(sa.select(r.idempotency_key, r.id, r.status, r.input,
                                                  r.error).where(
                        r.saga == saga, r.idempotency_key.in_(keys[at:at + KEYS_PER_QUERY]))):
                    found[row.idempotency_key] = {"id": row.id, "status": row.status,
                                                  "input": row.input, "error": row.error}
        return found

    def create_backfill(self, saga: str, items: Sequence[tuple[str, Any]], max_running: int,
                        existing: int, from_at: datetime | None = None,
                        to_at: datetime | None = None, created_by: str | None = None) -> str:
        """Store a backfill of (idempotency key, input) items; the sweeper feeds it."""
        backfill_id = str(uuid.uuid4())
        with self.begin() as conn:
            now = self.now(conn)
            conn.execute(backfills.insert().values(
                id=backfill_id, saga=saga, max_running=max_running, from_at=from_at, to_at=to_at,
                existing=existing, created_at=now, fed_at=None if items else now,
                created_by=created_by))
            if items:
                conn.execute(backfill_items.insert(), [
                    dict(backfill_id=backfill_id, seq=seq, key=key, input=value)
                    for seq, (key, value) in enumerate(items, 1)])
        return backfill_id

    def claim_feeds(self, sagas: Sequence[str], limit: int, claim_s: float,
                    only: str | None = None) -> list[Feed]:
        """Claim unfed backfills of these sagas and take the items each may start now.

        An item is in flight from when a feed takes it until its run ends; a backfill has
        at most `max_running` in flight. Items a dead feeder took but never recorded are
        handed out again (their start is idempotent).
        """
        items = backfill_items.c
        with self.begin() as conn:
            now = self.now(conn)
            query = (sa.select(backfills.c.id, backfills.c.saga, backfills.c.max_running,
                               backfills.c.created_by)
                     .where(backfills.c.fed_at.is_(None), backfills.c.saga.in_(sagas),
                            sa.or_(backfills.c.claimed_until.is_(None),
                                   backfills.c.claimed_until <= now))
                     .order_by(backfills.c.created_at).limit(limit)
                     .with_for_update(skip_locked=True))
            if only is not None:
                query = query.where(backfills.c.id == only)
            feeds = []
            for row in conn.execute(query).all():
                in_flight = sa.and_(items.backfill_id == row.id, items.started_at.is_not(None),
                                    items.finished_at.is_(None))
                conn.execute(backfill_items.update().where(in_flight, sa.exists().where(
                    runs.c.id == items.run_id, runs.c.status.in_(TERMINAL)))
                    .values(finished_at=now))
                taken = conn.execute(sa.select(items.seq, items.run_id).where(in_flight)).all()
                orphans = [r.seq for r in taken if r.run_id is None]
                free = row.max_running - len(taken)
                fresh = list(conn.execute(
                    sa.select(items.seq).where(items.backfill_id == row.id,
                                               items.started_at.is_(None), items.error.is_(None))
                    .order_by(items.seq).limit(max(free, 0))).scalars())
                if fresh:
                    conn.execute(backfill_items.update().where(
                        items.backfill_id == row.id, items.seq.in_(fresh)).values(started_at=now))
                chosen = conn.execute(
                    sa.select(items.seq, items.key, items.input)
                    .where(items.backfill_id == row.id, items.seq.in_(orphans + fresh))
                    .order_by(items.seq)).all()
                conn.execute(backfills.update().where(backfills.c.id == row.id).values(
                    claimed_until=now + timedelta(seconds=claim_s)))
                feeds.append(Feed(row.id, row.saga, tuple((c.seq, c.key, c.input)
                                                          for c in chosen), row.created_by))
        return feeds

    def item_started(self, backfill_id: str, seq: int, run_id: str) -> None:
        with self.begin() as conn:
            conn.execute(backfill_items.update().where(
                backfill_items.c.backfill_id == backfill_id, backfill_items.c.seq == seq)
                .values(run_id=run_id))

    def item_refused(self, backfill_id: str, seq: int, error: str) -> None:
        """The item can never start (its input or key is refused): it frees its slot."""
        with self.begin() as conn:
            conn.execute(backfill_items.update().where(
                backfill_items.c.backfill_id == backfill_id, backfill_items.c.seq == seq)
                .values(error=error, finished_at=self.now(conn)))

    def release_feed(self, backfill_id: str) -> None:
        """End a feed's claim; a backfill with nothing left to start is fed for good."""
        items = backfill_items.c
        with self.begin() as conn:
            left = conn.execute(sa.select(sa.func.count()).where(
                items.backfill_id == backfill_id, items.run_id.is_(None),
                items.error.is_(None))).scalar_one()
            conn.execute(backfills.update().where(backfills.c.id == backfill_id).values(
                claimed_until=None, fed_at=None if left else self.now(conn)))

    def get_backfill(self, backfill_id: str) -> dict[str, Any] | None:
        """A backfill and its progress, or None if there is none with this id."""
        items = backfill_items.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(backfills).where(backfills.c.id == backfill_id)
                               ).mappings().first()
            if row is None:
                return None
            finished = sa.exists().where(runs.c.id == items.run_id, runs.c.status.in_(TERMINAL))
            counts = conn.execute(sa.select(
                sa.func.count(),
                sa.func.count(items.run_id),
                sa.func.count(items.error),
                sa.func.count(sa.case((sa.and_(items.run_id.is_not(None), finished), 1))),
            ).where(items.backfill_id == backfill_id)).one()
        total, started, refused, done = counts
        return {
            "id": row["id"], "saga": row["saga"], "max_running": row["max_running"],
            "from_at": aware(row["from_at"]), "to_at": aware(row["to_at"]),
            "existing": row["existing"], "created_at": aware(row["created_at"]),
            "items": {"total": total, "pending": total - started - refused, "started": started,
                      "running": started - done, "finished": done, "refused": refused},
            "done": row["fed_at"] is not None and started == done,
        }

    def _insert(self, table: sa.Table) -> Any:
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(table)
