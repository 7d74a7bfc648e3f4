"""Initial schema: boards, profiles, tasks, links, runs, output, events, comments.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply the revision."""
    op.create_table(
        "boards",
        sa.Column("board_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("board_id"),
    )
    op.create_table(
        "comments",
        sa.Column("comment_id", sa.String(length=40), nullable=False),
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("comment_id"),
    )
    op.create_index("ix_comments_task", "comments", ["task_id", "create_time"], unique=False)

    op.create_table(
        "profiles",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("executor", sa.String(length=16), nullable=False),
        sa.Column("sandbox_spec", sa.JSON(), nullable=False),
        sa.Column("max_in_progress", sa.Integer(), nullable=False),
        sa.Column("keep_sandbox", sa.Boolean(), nullable=False),
        sa.Column("default_max_runtime_seconds", sa.Float(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "run_output",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_run_output_run", "run_output", ["run_id", "offset"], unique=False)

    op.create_table(
        "task_events",
        sa.Column(
            "event_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("board_id", sa.String(length=63), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_task_events_board", "task_events", ["board_id", "event_id"], unique=False)
    op.create_index("ix_task_events_task", "task_events", ["task_id", "event_id"], unique=False)

    op.create_table(
        "task_links",
        sa.Column("parent_id", sa.String(length=40), nullable=False),
        sa.Column("child_id", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("parent_id", "child_id"),
    )
    op.create_index("ix_task_links_child", "task_links", ["child_id"], unique=False)

    op.create_table(
        "task_runs",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("profile", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("executor_instance", sa.String(length=64), nullable=False),
        sa.Column("sandbox_id", sa.String(length=80), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expire_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("output_bytes", sa.BigInteger(), nullable=False),
        sa.Column("output_truncated", sa.Boolean(), nullable=False),
        sa.Column("counted_failure", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("ix_task_runs_status_profile", "task_runs", ["status", "profile"], unique=False)
    op.create_index("ix_task_runs_task", "task_runs", ["task_id", "start_time"], unique=False)

    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("board_id", sa.String(length=63), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("assignee", sa.String(length=63), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("command", sa.JSON(), nullable=False),
        sa.Column("image", sa.String(length=300), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("max_runtime_seconds", sa.Float(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("blocked_reason", sa.Text(), nullable=False),
        sa.Column("breaker_open", sa.Boolean(), nullable=False),
        sa.Column("failure_count", sa.Integer(), nullable=False),
        sa.Column("current_run_id", sa.String(length=40), nullable=True),
        sa.Column("sandbox_id", sa.String(length=80), nullable=False),
        sa.Column("trace_parent", sa.String(length=80), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["board_id"],
            ["boards.board_id"],
        ),
        sa.PrimaryKeyConstraint("task_id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index("ix_tasks_assignee", "tasks", ["assignee"], unique=False)
    op.create_index("ix_tasks_board", "tasks", ["board_id"], unique=False)
    op.create_index(
        "ix_tasks_status_priority", "tasks", ["status", "priority", "create_time"], unique=False
    )

    boards = sa.table(
        "boards",
        sa.column("board_id", sa.String),
        sa.column("display_name", sa.String),
        sa.column("description", sa.Text),
        sa.column("create_time", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        boards,
        [
            {
                "board_id": "default",
                "display_name": "Default",
                "description": "",
                "create_time": dt.datetime.now(dt.UTC),
            }
        ],
    )


def downgrade() -> None:
    """Revert the revision."""
    op.drop_index("ix_tasks_status_priority", table_name="tasks")
    op.drop_index("ix_tasks_board", table_name="tasks")
    op.drop_index("ix_tasks_assignee", table_name="tasks")

    op.drop_table("tasks")
    op.drop_index("ix_task_runs_task", table_name="task_runs")
    op.drop_index("ix_task_runs_status_profile", table_name="task_runs")

    op.drop_table("task_runs")
    op.drop_index("ix_task_links_child", table_name="task_links")

    op.drop_table("task_links")
    op.drop_index("ix_task_events_task", table_name="task_events")
    op.drop_index("ix_task_events_board", table_name="task_events")

    op.drop_table("task_events")
    op.drop_index("ix_run_output_run", table_name="run_output")

    op.drop_table("run_output")
    op.drop_table("profiles")
    op.drop_index("ix_comments_task", table_name="comments")

    op.drop_table("comments")
    op.drop_table("boards")
