"""One word for forward/compensate: the `kind` columns of steps and events become `role`.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A rename keeps the data and the indexes that cover the column (steps' primary key,
    # steps_name_status); PostgreSQL only changes the catalogue.
    with op.batch_alter_table("steps") as batch:
        batch.alter_column("kind", new_column_name="role")
    with op.batch_alter_table("events") as batch:
        batch.alter_column("kind", new_column_name="role")


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.alter_column("role", new_column_name="kind")
    with op.batch_alter_table("steps") as batch:
        batch.alter_column("role", new_column_name="kind")
