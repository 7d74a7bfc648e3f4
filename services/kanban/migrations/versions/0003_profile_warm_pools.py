"""Warm pools: a profile may ask the sandbox manager for warm sandboxes of its spec.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply the revision."""
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(
            sa.Column("warm_pool_size", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Revert the revision."""
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("warm_pool_size")
