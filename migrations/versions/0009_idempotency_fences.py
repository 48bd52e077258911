"""The idempotent helper keeps the newest fence per key (`Saga-Fence`), beside its responses.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_fences",
        sa.Column("scope", sa.String(100), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fence", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_fences")
