"""The deployment's identity: one row with a random id, which names its broker queue.

Revision ID: 0005
Revises: 0004
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)


def upgrade() -> None:
    table = op.create_table(
        "deployment",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", When, nullable=False),
    )
    # Made here, once per database: every process reading it later agrees on it.
    op.bulk_insert(table, [{"id": uuid.uuid4().hex, "created_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("deployment")
