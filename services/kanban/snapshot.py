"""Building the planner's :class:`Snapshot` from the database in one query pass.

The same builder serves a real tick, a dry run and every readiness answer
(GetTask, ListTasks, ExplainTask), so what a dry run reports and what a
task says about itself is exactly what the next tick would do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import DateTime, String, func, select, type_coerce
from sqlalchemy.orm import Session, aliased

from services.kanban import models
from services.kanban.models import DONE, READY, RUN_RUNNING, TODO, Task, TaskLink, TaskRun
from services.kanban.planner import (
    ExecutorKind,
    ProfileView,
    ReclaimKind,
    ReclaimView,
    Snapshot,
    TaskStatus,
    TaskView,
)

_STATUS = {status.value: status for status in TaskStatus}


def _task_columns(dialect: str) -> tuple[Any, ...]:
    # The hot path reads 10,000 rows: skip the ORM and the aware-UTC type
    # decorator. The planner only compares create times within one snapshot,
    # so SQLite's naive UTC text (parsed in C) and PostgreSQL's aware values
    # (decoded by psycopg) both work, as long as one snapshot uses one kind.
    created: Any = (
        type_coerce(Task.create_time, String)
        if dialect == "sqlite"
        else type_coerce(Task.create_time, DateTime(timezone=True))
    )
    return (
        Task.task_id,
        Task.board_id,
        Task.status,
        Task.assignee,
        Task.priority,
        created,
        Task.failure_count,
        Task.breaker_open,
        Task.blocked_reason,
    )


def _views(rows: Iterable[Any], waiting: dict[str, list[str]], out: dict[str, TaskView]) -> None:
    parse = dt.datetime.fromisoformat
    for task_id, board_id, status, assignee, priority, created, failures, breaker, reason in rows:
        out[task_id] = TaskView(
            task_id,
            board_id,
            _STATUS[status],
            assignee or "",
            priority,
            parse(created) if isinstance(created, str) else created,
            tuple(waiting[task_id]) if task_id in waiting else (),
            failures,
            bool(breaker),
            reason or "",
        )


def profile_views(session: Session) -> dict[str, ProfileView]:
    """Return every profile as the planner sees it."""
    rows = session.execute(
        select(models.Profile.name, models.Profile.executor, models.Profile.max_in_progress)
    )
    return {
        name: ProfileView(name=name, executor=ExecutorKind(executor), max_in_progress=cap)
        for name, executor, cap in rows
    }


def build(
    session: Session,
    *,
    now: dt.datetime,
    board_id: str = "",
    extra_task_ids: Sequence[str] = (),
) -> Snapshot:
    """Read what one tick plans from.

    Args:
        session: A read or write session; a real tick passes its exclusive
            write session so the plan and its application see one state.
        now: The tick's time: runs whose lease ended before it are reclaimed.
        board_id: Only this board's tasks (caps still count every board).
        extra_task_ids: Tasks to include whatever their status (for readiness).

    Returns:
        The snapshot.
    """
    child = aliased(Task)
    parent = aliased(Task)
    waiting_stmt = (
        select(TaskLink.child_id, TaskLink.parent_id)
        .join(child, child.task_id == TaskLink.child_id)
        .join(parent, parent.task_id == TaskLink.parent_id)
        .where(child.status == TODO, parent.status != DONE)
        .order_by(TaskLink.child_id, TaskLink.parent_id)
    )
    if board_id:
        waiting_stmt = waiting_stmt.where(child.board_id == board_id)
    waiting: dict[str, list[str]] = {}
    for c, p in session.execute(waiting_stmt):
        waiting.setdefault(c, []).append(p)

    expired_stmt = select(
        TaskRun.task_id, TaskRun.run_id, TaskRun.profile, TaskRun.executor_instance
    ).where(TaskRun.status == RUN_RUNNING, TaskRun.lease_expire_time < now)
    reclaims: list[ReclaimView] = []
    reclaim_tasks: list[str] = []
    for task_id, run_id, profile, instance in session.execute(expired_stmt):
        kind = ReclaimKind.EXECUTOR_GONE if instance else ReclaimKind.LEASE_EXPIRED
        reclaims.append(ReclaimView(task_id, run_id, profile, kind))
        reclaim_tasks.append(task_id)

    conn = session.connection()
    columns = _task_columns(conn.dialect.name)
    stmt = select(*columns).where(Task.status.in_([READY, TODO]))
    if board_id:
        stmt = stmt.where(Task.board_id == board_id)
    views: dict[str, TaskView] = {}
    _views(conn.execute(stmt).all(), waiting, views)
    others = [t for t in (*reclaim_tasks, *extra_task_ids) if t not in views]
    for start in range(0, len(others), 500):
        chunk = others[start : start + 500]
        _views(conn.execute(select(*columns).where(Task.task_id.in_(chunk))).all(), waiting, views)
    if board_id:
        reclaims = [
            rc for rc in reclaims if rc.task_id in views and views[rc.task_id].board_id == board_id
        ]
    # A reclaim whose task is no longer running (it moved meanwhile) is not one.
    reclaims = [
        rc
        for rc in reclaims
        if rc.task_id in views and views[rc.task_id].status is TaskStatus.RUNNING
    ]

    running_stmt = (
        select(TaskRun.profile, func.count())
        .where(TaskRun.status == RUN_RUNNING)
        .group_by(TaskRun.profile)
    )
    running = {p: int(n) for p, n in session.execute(running_stmt)}
    return Snapshot(
        tasks=tuple(views.values()),
        profiles=profile_views(session),
        running=running,
        reclaims=tuple(reclaims),
    )
