"""Steps remember an attempt in doubt, and what the step's verify check answered.

`in_doubt`: an attempt ended without a known outcome (its lease ran out, it timed out) and
nothing has told since whether it took effect. `checked`: the current attempt's check
answer (done, not_done, unknown).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default and a nullable column: PostgreSQL (11+) only changes the
    # catalogue, without rewriting the table; every existing step is not in doubt.
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("in_doubt", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("checked", sa.String(12)))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("checked")
        batch.drop_column("in_doubt")
