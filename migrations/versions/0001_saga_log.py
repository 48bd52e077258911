"""The saga log: runs, steps (forward and compensation), events, idempotent responses.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
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
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("parked", sa.Text),
        sa.UniqueConstraint("saga", "idempotency_key", name="runs_saga_idempotency_key"),
    )
    op.create_index("runs_created", "runs", ["created_at", "id"])
    op.create_index("runs_saga_created", "runs", ["saga", "created_at", "id"])
    op.create_index("runs_status_created", "runs", ["status", "created_at", "id"])
    running = sa.text("status = 'running' AND deadline_at IS NOT NULL")
    op.create_index("runs_deadline_due", "runs", ["deadline_at"], postgresql_where=running,
                    sqlite_where=running)
    op.create_table(
        "steps",
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(12), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("fence", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expires_at", When),
        sa.Column("next_attempt_at", When),
        sa.Column("redispatch_at", When),
        sa.Column("start_by", When),
        sa.Column("wake_at", When),
        sa.Column("dispatches", sa.Integer, nullable=False),
        sa.Column("output", JSON),
        sa.Column("error", sa.Text),
        sa.Column("queued_at", When),
        sa.Column("started_at", When),
        sa.Column("finished_at", When),
    )
    for name, column, status in (("steps_redispatch_due", "redispatch_at", "queued"),
                                 ("steps_lease_due", "lease_expires_at", "running"),
                                 ("steps_retry_due", "next_attempt_at", "retry_wait")):
        where = sa.text(f"status = '{status}'")
        op.create_index(name, "steps", [column], postgresql_where=where, sqlite_where=where)
    where = sa.text("status = 'waiting' AND wake_at IS NOT NULL")
    op.create_index("steps_wake_due", "steps", ["wake_at"], postgresql_where=where,
                    sqlite_where=where)
    where = sa.text("status = 'queued' AND start_by IS NOT NULL")
    op.create_index("steps_start_due", "steps", ["start_by"], postgresql_where=where,
                    sqlite_where=where)
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("at", When, nullable=False),
        sa.Column("type", sa.String(60), nullable=False),
        sa.Column("step", sa.String(200)),
        sa.Column("kind", sa.String(12)),
        sa.Column("attempt", sa.Integer),
        sa.Column("worker", sa.String(200)),
        sa.Column("data", JSON, nullable=False),
    )
    op.create_index("events_run", "events", ["run_id", "id"])
    op.create_table(
        "signals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("received_at", When, nullable=False),
        sa.Column("consumed_by", sa.String(200)),
        sa.Column("consumed_at", When),
        sa.UniqueConstraint("run_id", "name", "idempotency_key", name="signals_once"),
    )
    pending = sa.text("consumed_at IS NULL")
    op.create_index("signals_pending", "signals", ["run_id", "id"], postgresql_where=pending,
                    sqlite_where=pending)
    # saga.helpers.idempotent: the helper services use to store and replay responses by key.
    op.create_table(
        "idempotency_responses",
        sa.Column("scope", sa.String(100), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("body", sa.Text),
        sa.Column("created_at", When, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_responses")
    op.drop_table("signals")
    op.drop_table("events")
    op.drop_table("steps")
    op.drop_table("runs")
