"""API tokens (stored as hashes) and who created each backfill.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("revoked_at", When),
        sa.Column("last_used_at", When),
    )
    # Every API request looks its token up by hash.
    op.create_index("tokens_hash", "tokens", ["token_hash"], unique=True)
    # The runs a backfill starts are recorded as started by whoever asked for it.
    with op.batch_alter_table("backfills") as batch:
        batch.add_column(sa.Column("created_by", sa.String(100)))


def downgrade() -> None:
    with op.batch_alter_table("backfills") as batch:
        batch.drop_column("created_by")
    op.drop_table("tokens")
