"""Indexes for the console's counts: the steps waiting, and the runs parked.

The runs list counts the waiting runs from `steps_waiting` (only the steps that wait on a
timer or a signal) and the parked from `runs_parked` (only the rare parked runs), so
neither count reads every running run.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

WAITING = sa.text("status = 'waiting'")
PARKED = sa.text("parked IS NOT NULL")


def upgrade() -> None:
    op.create_index("steps_waiting", "steps", ["run_id"], postgresql_where=WAITING,
                    sqlite_where=WAITING)
    op.create_index("runs_parked", "runs", ["created_at", "id"], postgresql_where=PARKED,
                    sqlite_where=PARKED)


def downgrade() -> None:
    op.drop_index("runs_parked", table_name="runs")
    op.drop_index("steps_waiting", table_name="steps")
