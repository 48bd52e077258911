"""Indexes for the console's aggregates: steps by when they ended, and the steps in doubt.

`steps_finished` lets the slowest and most failing steps of the last hour or day read
only that window's steps; `steps_in_doubt` holds only the rare steps in doubt, so the
console counts them without reading the others.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

FINISHED = sa.text("finished_at IS NOT NULL")
IN_DOUBT = sa.text("in_doubt")


def upgrade() -> None:
    op.create_index("steps_finished", "steps", ["finished_at"], postgresql_where=FINISHED,
                    sqlite_where=FINISHED)
    op.create_index("steps_in_doubt", "steps", ["run_id"], postgresql_where=IN_DOUBT,
                    sqlite_where=IN_DOUBT)


def downgrade() -> None:
    op.drop_index("steps_in_doubt", table_name="steps")
    op.drop_index("steps_finished", table_name="steps")
