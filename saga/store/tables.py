"""The saga log's tables: runs, steps (forward and compensation) and their events."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
When = sa.DateTime(timezone=True)

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("saga", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("shape", sa.String(32), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("input", JSON, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("request_hash", sa.String(64)),
    sa.Column("created_at", When, nullable=False),
    sa.Column("updated_at", When, nullable=False),
    sa.Column("finished_at", When),
    sa.Column("deadline_at", When),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),
    sa.Column("parked", sa.Text),  # why no worker can go on with it (its version is not loaded)
    sa.UniqueConstraint("saga", "idempotency_key", name="runs_saga_idempotency_key"),
    sa.Index("runs_created", "created_at", "id"),
    sa.Index("runs_saga_created", "saga", "created_at", "id"),
    sa.Index("runs_status_created", "status", "created_at", "id"),
    sa.Index("runs_saga_version_created", "saga", "version", "created_at", "id"),
    sa.Index("runs_finished", "finished_at", postgresql_where=sa.text("finished_at IS NOT NULL"),
             sqlite_where=sa.text("finished_at IS NOT NULL")),
    sa.Index("runs_errored", "created_at", "id", postgresql_where=sa.text("error IS NOT NULL"),
             sqlite_where=sa.text("error IS NOT NULL")),
    sa.Index("runs_deadline_due", "deadline_at",
             postgresql_where=sa.text("status = 'running' AND deadline_at IS NOT NULL"),
             sqlite_where=sa.text("status = 'running' AND deadline_at IS NOT NULL")),
    # The console counts and lists the rare parked runs without reading the others.
    sa.Index("runs_parked", "created_at", "id", postgresql_where=sa.text("parked IS NOT NULL"),
             sqlite_where=sa.text("parked IS NOT NULL")),
)

steps = sa.Table(
    "steps", metadata,
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("role", sa.String(12), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("fence", sa.BigInteger, nullable=False, default=0),
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("lease_expires_at", When),
    sa.Column("next_attempt_at", When),
    sa.Column("redispatch_at", When),  # a queued step unclaimed by then is published again
    sa.Column("start_by", When),  # a queued step unclaimed by then timed out (schedule-to-start)
    sa.Column("wake_at", When),  # a waiting step's timer fires, or its signal wait times out
    sa.Column("dispatches", sa.Integer, nullable=False, default=1),
    sa.Column("output", JSON),
    sa.Column("error", sa.Text),
    sa.Column("queued_at", When),
    sa.Column("started_at", When),
    sa.Column("finished_at", When),
    # An attempt ended without a known outcome and nothing has told since whether it took
    # effect; `checked` is what the step's verify answered in the current attempt.
    sa.Column("in_doubt", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("checked", sa.String(12)),
    # Each sweep query reads one of these partial indexes, so its cost follows what is
    # due, never what merely waits.
    sa.Index("steps_redispatch_due", "redispatch_at",
             postgresql_where=sa.text("status = 'queued'"), sqlite_where=sa.text("status = 'queued'")),
    sa.Index("steps_lease_due", "lease_expires_at",
             postgresql_where=sa.text("status = 'running'"), sqlite_where=sa.text("status = 'running'")),
    sa.Index("steps_retry_due", "next_attempt_at",
             postgresql_where=sa.text("status = 'retry_wait'"),
             sqlite_where=sa.text("status = 'retry_wait'")),
    sa.Index("steps_wake_due", "wake_at",
             postgresql_where=sa.text("status = 'waiting' AND wake_at IS NOT NULL"),
             sqlite_where=sa.text("status = 'waiting' AND wake_at IS NOT NULL")),
    sa.Index("steps_start_due", "start_by",
             postgresql_where=sa.text("status = 'queued' AND start_by IS NOT NULL"),
             sqlite_where=sa.text("status = 'queued' AND start_by IS NOT NULL")),
    sa.Index("steps_name_status", "name", "role", "status"),
    # The console's aggregates: a window's finished steps, and the rare steps in doubt.
    sa.Index("steps_finished", "finished_at", postgresql_where=sa.text("finished_at IS NOT NULL"),
             sqlite_where=sa.text("finished_at IS NOT NULL")),
    sa.Index("steps_in_doubt", "run_id", postgresql_where=sa.text("in_doubt"),
             sqlite_where=sa.text("in_doubt")),
    sa.Index("steps_errored", "run_id", postgresql_where=sa.text("error IS NOT NULL"),
             sqlite_where=sa.text("error IS NOT NULL")),
    # The console's waiting runs, found from the steps that wait (few) rather than by
    # asking each running run.
    sa.Index("steps_waiting", "run_id", postgresql_where=sa.text("status = 'waiting'"),
             sqlite_where=sa.text("status = 'waiting'")),
)

events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("at", When, nullable=False),
    sa.Column("type", sa.String(60), nullable=False),
    sa.Column("step", sa.String(200)),
    sa.Column("role", sa.String(12)),
    sa.Column("attempt", sa.Integer),
    sa.Column("worker", sa.String(200)),
    sa.Column("data", JSON, nullable=False),
    # On run_id alone: PostgreSQL deduplicates it to one entry per run (0012).
    sa.Index("events_run", "run_id"),
)

signals = sa.Table(
    "signals", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("payload", JSON, nullable=False),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("received_at", When, nullable=False),
    sa.Column("consumed_by", sa.String(200)),  # the step that took it
    sa.Column("consumed_at", When),
    sa.UniqueConstraint("run_id", "name", "idempotency_key", name="signals_once"),
    sa.Index("signals_pending", "run_id", "id",
             postgresql_where=sa.text("consumed_at IS NULL"),
             sqlite_where=sa.text("consumed_at IS NULL")),
)

# API tokens: only a hash of each is stored (see saga/store/tokens.py). A revoked token keeps
# its row, so a name in a run's events always means one token.
tokens = sa.Table(
    "tokens", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False),  # sha256 hex of the token
    sa.Column("created_at", When, nullable=False),
    sa.Column("revoked_at", When),
    sa.Column("last_used_at", When),  # updated at most once a minute per token
    sa.Index("tokens_hash", "token_hash", unique=True),
)

# One row, written by migration 0005: a random id every process that reaches this database
# reads alike, however its URL is spelt. It names the deployment's queue (saga/store/deployment.py).
deployment = sa.Table(
    "deployment", metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # uuid4 hex
    sa.Column("created_at", When, nullable=False),
)
