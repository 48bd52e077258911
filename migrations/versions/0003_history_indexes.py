"""Indexes for history and search: finished-time ranges, versions, step names and errors.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FINISHED = sa.text("finished_at IS NOT NULL")
ERRORED = sa.text("error IS NOT NULL")


def upgrade() -> None:
    # Finished-time filters and retention pruning.
    op.create_index("runs_finished", "runs", ["finished_at"], postgresql_where=FINISHED,
                    sqlite_where=FINISHED)
    op.create_index("runs_saga_version_created", "runs", ["saga", "version", "created_at", "id"])
    # The error search reads only rows that have an error: its cost follows failures.
    op.create_index("runs_errored", "runs", ["created_at", "id"], postgresql_where=ERRORED,
                    sqlite_where=ERRORED)
    op.create_index("steps_errored", "steps", ["run_id"], postgresql_where=ERRORED,
                    sqlite_where=ERRORED)
    # "Runs with a step named X (in status S)" when few runs have one.
    op.create_index("steps_name_status", "steps", ["name", "kind", "status"])


def downgrade() -> None:
    for name, table in (("steps_name_status", "steps"), ("steps_errored", "steps"),
                        ("runs_errored", "runs"), ("runs_saga_version_created", "runs"),
                        ("runs_finished", "runs")):
        op.drop_index(name, table_name=table)
