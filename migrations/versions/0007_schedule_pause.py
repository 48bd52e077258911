"""A schedule can be paused: when, and by whom (an API token's name or `cli:<user>`).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Nullable columns without a default: PostgreSQL only changes the catalogue, and every
    # existing schedule stays unpaused.
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("paused_at", When))
        batch.add_column(sa.Column("paused_by", sa.String(100)))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("paused_by")
        batch.drop_column("paused_at")
