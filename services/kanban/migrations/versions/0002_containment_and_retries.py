"""Run holders and failure classes, retry policies, task backoff, image allowlists.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply the revision."""
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(
            sa.Column("failure_class", sa.String(16), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("holder", sa.String(63), nullable=False, server_default=""))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("next_attempt_time", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(
            sa.Column("retry_max_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("retry_initial_backoff_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("retry_max_backoff_seconds", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("allowed_images", sa.JSON(), nullable=False, server_default="[]")
        )
    # Runs the dispatcher executed before holders existed belong to it.
    op.execute("UPDATE task_runs SET holder = 'dispatcher' WHERE executor_instance <> ''")


def downgrade() -> None:
    """Revert the revision."""
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("allowed_images")
        batch.drop_column("retry_max_backoff_seconds")
        batch.drop_column("retry_initial_backoff_seconds")
        batch.drop_column("retry_max_attempts")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("next_attempt_time")
    with op.batch_alter_table("task_runs") as batch:
        batch.drop_column("holder")
        batch.drop_column("failure_class")
