"""SQLAlchemy 2.0 models of the kanban database.

These are the table names and column names every other kanban module (and
the Alembic migrations) rely on. Times are timezone-aware UTC everywhere:
:class:`UtcDateTime` stores them so on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Statuses and executors are stored as the values of services.kanban.vocabulary's enums.
DEFAULT_BOARD = "default"


def utcnow() -> dt.datetime:
    """Return the current time as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A datetime column that always round-trips as aware UTC.

    SQLite keeps no zone, PostgreSQL keeps ``timestamptz``; both come back
    aware so comparisons never mix naive and aware values.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every kanban table."""

    type_annotation_map = {  # noqa: RUF012 - read by SQLAlchemy at class creation
        dt.datetime: UtcDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Board(Base):
    """A kanban board."""

    __tablename__ = "boards"

    board_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Profile(Base):
    """An agent profile: who runs a task and under which limits."""

    __tablename__ = "profiles"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    executor: Mapped[str] = mapped_column(String(16))
    # Proto JSON of longshore.sandbox.v1.SandboxSpec.
    sandbox_spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # 0 = the kanban.max_in_progress_per_profile setting applies.
    max_in_progress: Mapped[int] = mapped_column(Integer, default=0)
    keep_sandbox: Mapped[bool] = mapped_column(Boolean, default=False)
    default_max_runtime_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[dt.datetime] = mapped_column(default=utcnow)
    update_time: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Retry policy: 0 / None = the kanban settings' defaults apply.
    retry_max_attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_initial_backoff_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    retry_max_backoff_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Exact image references a task may name instead of the spec's image.
    allowed_images: Mapped[list[Any]] = mapped_column(default=list)
    # Warm sandboxes the sandbox manager keeps of this profile's spec (0 = none).
    warm_pool_size: Mapped[int] = mapped_column(Integer, default=0)


class Task(Base):
    """A unit of work on a board."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_status_priority", "status", "priority", "create_time"),
        Index("ix_tasks_board", "board_id"),
        Index("ix_tasks_assignee", "assignee"),
    )

    task_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    board_id: Mapped[str] = mapped_column(ForeignKey("boards.board_id"))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    assignee: Mapped[str | None] = mapped_column(String(63), nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    command: Mapped[list[Any]] = mapped_column(default=list)
    image: Mapped[str] = mapped_column(String(300), default="")
    env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    max_runtime_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    blocked_reason: Mapped[str] = mapped_column(Text, default="")
    breaker_open: Mapped[bool] = mapped_column(Boolean, default=False)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    current_run_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    sandbox_id: Mapped[str] = mapped_column(String(80), default="")
    trace_parent: Mapped[str] = mapped_column(String(80), default="")
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True, unique=True)
    create_time: Mapped[dt.datetime] = mapped_column(default=utcnow)
    update_time: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ready_time: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    # Retry backoff: the dispatcher (and ClaimTask) leave the task alone until then.
    next_attempt_time: Mapped[dt.datetime | None] = mapped_column(nullable=True)


class TaskLink(Base):
    """A dependency: ``child_id`` waits until ``parent_id`` is done."""

    __tablename__ = "task_links"
    __table_args__ = (Index("ix_task_links_child", "child_id"),)

    parent_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    child_id: Mapped[str] = mapped_column(String(40), primary_key=True)


class TaskRun(Base):
    """One attempt at a task; ``run_id`` is the fencing token."""

    __tablename__ = "task_runs"
    __table_args__ = (
        Index("ix_task_runs_task", "task_id", "start_time"),
        Index("ix_task_runs_status_profile", "status", "profile"),
    )

    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(40))
    profile: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16))
    worker_id: Mapped[str] = mapped_column(String(200), default="")
    # The kanban process instance that spawned it (sandbox runs), for crash
    # detection; empty for runs held by external workers.
    executor_instance: Mapped[str] = mapped_column(String(64), default="")
    sandbox_id: Mapped[str] = mapped_column(String(80), default="")
    start_time: Mapped[dt.datetime] = mapped_column(default=utcnow)
    end_time: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    lease_expire_time: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    output_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    output_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    counted_failure: Mapped[bool] = mapped_column(Boolean, default=False)
    # "work" or "platform" when the run failed (FailureClass); "" otherwise.
    failure_class: Mapped[str] = mapped_column(String(16), default="")
    # Principal that claimed it through WorkerService, or "dispatcher".
    holder: Mapped[str] = mapped_column(String(63), default="")


class RunOutput(Base):
    """A chunk of a run's output, at a byte offset."""

    __tablename__ = "run_output"
    __table_args__ = (Index("ix_run_output_run", "run_id", "offset"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    run_id: Mapped[str] = mapped_column(String(40))
    offset: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class TaskEvent(Base):
    """One entry of the append-only event log."""

    __tablename__ = "task_events"
    __table_args__ = (
        Index("ix_task_events_task", "task_id", "event_id"),
        Index("ix_task_events_board", "board_id", "event_id"),
        # Never reuse an id, even after the newest row is gone.
        {"sqlite_autoincrement": True},
    )

    event_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    task_id: Mapped[str] = mapped_column(String(40))
    board_id: Mapped[str] = mapped_column(String(63), default="")
    run_id: Mapped[str] = mapped_column(String(40), default="")
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str] = mapped_column(String(200), default="api")
    create_time: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Comment(Base):
    """A note on a task."""

    __tablename__ = "comments"
    __table_args__ = (Index("ix_comments_task", "task_id", "create_time"),)

    comment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(40))
    author: Mapped[str] = mapped_column(String(200), default="")
    body: Mapped[str] = mapped_column(Text)
    create_time: Mapped[dt.datetime] = mapped_column(default=utcnow)
