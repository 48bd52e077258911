"""Schedules (the next firing of each scheduled saga) and backfills with their items.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("saga", sa.String(200), primary_key=True),
        sa.Column("spec", sa.String(300), nullable=False),
        sa.Column("next_fire_at", When, nullable=False),
        sa.Column("last_fire_at", When),
        sa.Column("claimed_until", When),
        sa.Column("updated_at", When, nullable=False),
    )
    op.create_index("schedules_due", "schedules", ["next_fire_at"])
    op.create_table(
        "backfills",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("saga", sa.String(200), nullable=False),
        sa.Column("max_running", sa.Integer, nullable=False),
        sa.Column("from_at", When),
        sa.Column("to_at", When),
        sa.Column("existing", sa.Integer, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("claimed_until", When),
        sa.Column("fed_at", When),
    )
    unfed = sa.text("fed_at IS NULL")
    op.create_index("backfills_feeding", "backfills", ["created_at"], postgresql_where=unfed,
                    sqlite_where=unfed)
    op.create_table(
        "backfill_items",
        sa.Column("backfill_id", sa.String(36),
                  sa.ForeignKey("backfills.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("input", JSON, nullable=False),
        sa.Column("started_at", When),
        sa.Column("run_id", sa.String(36)),
        sa.Column("finished_at", When),
        sa.Column("error", sa.Text),
    )
    pending = sa.text("started_at IS NULL AND error IS NULL")
    op.create_index("backfill_items_pending", "backfill_items", ["backfill_id", "seq"],
                    postgresql_where=pending, sqlite_where=pending)
    in_flight = sa.text("started_at IS NOT NULL AND finished_at IS NULL")
    op.create_index("backfill_items_in_flight", "backfill_items", ["backfill_id"],
                    postgresql_where=in_flight, sqlite_where=in_flight)


def downgrade() -> None:
    op.drop_table("backfill_items")
    op.drop_table("backfills")
    op.drop_table("schedules")
