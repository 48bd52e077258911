"""`events_run` on `run_id` alone, so PostgreSQL keeps one entry per run, not one per event.

A run's events all share its id; with `id` in the key every event had its own index
entry (about 60 bytes, in pages left two-thirds full by the random run ids): 430 of the
~3,000 bytes a run waiting on a timer takes. On `run_id` alone B-tree deduplication
(PostgreSQL 13+) stores each run's events as one key and a list of row pointers: about
130 bytes a run. A run's history is still found by this index; ordering its few events
by `id` is a sort in memory.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("events_run", table_name="events")
    op.create_index("events_run", "events", ["run_id"])


def downgrade() -> None:
    op.drop_index("events_run", table_name="events")
    op.create_index("events_run", "events", ["run_id", "id"])
