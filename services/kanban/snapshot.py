"""Building the planner's :class:`Snapshot` from the database in one query pass.

The same builder serves a real tick, a dry run and every readiness answer
(GetTask, ListTasks, ExplainTask), so what a dry run reports and what a
task says about itself is exactly what the next tick would do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select
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

_TASK_COLUMNS = (
    Task.task_id,
    Task.board_id,
    Task.status,
    Task.assignee,
    Task.priority,
    Task.create_time,
    Task.failure_count,
    Task.breaker_open,
    Task.blocked_reason,
)


def _view(row: Sequence[object], waiting: dict[str, list[str]]) -> TaskView:
    task_id, board_id, status, assignee, priority, created, failures, breaker, reason = row
    assert isinstance(task_id, str)
    assert isinstance(created, dt.datetime)
    return TaskView(
        task_id=task_id,
        board_id=str(board_id),
        status=TaskStatus(str(status)),
        assignee=str(assignee or ""),
        priority=int(priority),  # type: ignore[call-overload]
        create_time=created,
        waiting_on=tuple(waiting.get(task_id, ())),
        failure_count=int(failures),  # type: ignore[call-overload]
        breaker_open=bool(breaker),
        last_error=str(reason or ""),
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

    stmt = select(*_TASK_COLUMNS).where(Task.status.in_([READY, TODO]))
    if board_id:
        stmt = stmt.where(Task.board_id == board_id)
    views = {str(r[0]): _view(r, waiting) for r in session.execute(stmt)}
    others = [t for t in (*reclaim_tasks, *extra_task_ids) if t not in views]
    for start in range(0, len(others), 500):
        chunk = others[start : start + 500]
        for r in session.execute(select(*_TASK_COLUMNS).where(Task.task_id.in_(chunk))):
            views[str(r[0])] = _view(r, waiting)
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
