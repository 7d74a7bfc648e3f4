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
from services.kanban.models import Task, TaskLink, TaskRun
from services.kanban.planner import (
    BackendView,
    ProfileView,
    ReclaimKind,
    ReclaimView,
    RetryPolicy,
    Snapshot,
)
from services.kanban.store import failures
from services.kanban.vocabulary import ExecutorKind, RunStatus, TaskStatus
from services.kanban.walk_views import aware, rows_of, view_of, walk_views_of


def profile_views(session: Session) -> dict[str, ProfileView]:
    """Return every profile as the planner sees it."""
    p = models.Profile
    rows = session.execute(
        select(
            p.name,
            p.executor,
            p.max_in_progress,
            p.retry_max_attempts,
            p.retry_initial_backoff_seconds,
            p.retry_max_backoff_seconds,
        )
    )
    return {
        name: ProfileView(
            name=name,
            executor=ExecutorKind(executor),
            max_in_progress=cap,
            retry=RetryPolicy(attempts or 0, initial or 0.0, longest or 0.0),
        )
        for name, executor, cap, attempts, initial, longest in rows
    }


def build(
    session: Session,
    *,
    now: dt.datetime,
    board_id: str = "",
    extra_task_ids: Sequence[str] = (),
    sandbox_backend: BackendView | None = None,
) -> Snapshot:
    """Read what one tick plans from.

    Args:
        session: A read or write session; a real tick passes its exclusive
            write session so the plan and its application see one state.
        now: The tick's time: runs whose lease ended before it are reclaimed.
        board_id: Only this board's tasks (caps still count every board).
        extra_task_ids: Tasks to include whatever their status (for readiness).
        sandbox_backend: The sandbox backend while the dispatcher's breaker
            holds it unavailable (read once by the caller, so a tick and its
            readiness answers plan from one value).

    Returns:
        The snapshot.
    """
    child = aliased(Task)
    parent = aliased(Task)
    waiting_stmt = (
        select(TaskLink.child_id, TaskLink.parent_id)
        .join(child, child.task_id == TaskLink.child_id)
        .join(parent, parent.task_id == TaskLink.parent_id)
        .where(child.status == TaskStatus.TODO, parent.status != TaskStatus.DONE)
        .order_by(TaskLink.child_id, TaskLink.parent_id)
    )
    if board_id:
        waiting_stmt = waiting_stmt.where(child.board_id == board_id)
    waiting: dict[str, list[str]] = {}
    for c, p in session.execute(waiting_stmt):
        waiting.setdefault(c, []).append(p)

    expired_stmt = select(
        TaskRun.task_id, TaskRun.run_id, TaskRun.profile, TaskRun.executor_instance
    ).where(TaskRun.status == RunStatus.RUNNING, TaskRun.lease_expire_time < now)
    reclaims: list[ReclaimView] = []
    reclaim_tasks: list[str] = []
    for task_id, run_id, profile, instance in session.execute(expired_stmt):
        kind = ReclaimKind.EXECUTOR_GONE if instance else ReclaimKind.LEASE_EXPIRED
        reclaims.append(ReclaimView(task_id, run_id, profile, kind))
        reclaim_tasks.append(task_id)

    conn = session.connection()
    views = walk_views_of(session).current(session)
    if board_id:
        views = {t: v for t, v in views.items() if v.board_id == board_id}
    for task_id, parents in waiting.items():
        if task_id in views:
            views[task_id] = views[task_id]._replace(waiting_on=tuple(parents))
    others = [t for t in (*reclaim_tasks, *extra_task_ids) if t not in views]
    for row in rows_of(conn, others):
        views[row[0]] = view_of(row, tuple(waiting.get(row[0], ())))
    if board_id:
        reclaims = [
            rc for rc in reclaims if rc.task_id in views and views[rc.task_id].board_id == board_id
        ]
    now_aware = aware(now) or now
    # A reclaim whose task is no longer running (it moved meanwhile) is not one.
    reclaims = [
        rc
        for rc in reclaims
        if rc.task_id in views and views[rc.task_id].status is TaskStatus.RUNNING
    ]

    # Attempt numbers (and, for runs lost to our restart, the platform
    # streak that sets their backoff) only for the few tasks that need them.
    backing = [
        v.task_id
        for v in views.values()
        if v.next_attempt_time is not None and v.next_attempt_time > now_aware
    ]
    counted = [*backing, *(rc.task_id for rc in reclaims)]
    if counted:
        counts = failures.run_counts(session, counted)
        gone = [rc.task_id for rc in reclaims if rc.kind is ReclaimKind.EXECUTOR_GONE]
        streaks = failures.platform_streaks(session, gone) if gone else {}
        for task_id in dict.fromkeys(counted):
            views[task_id] = views[task_id]._replace(
                runs=counts.get(task_id, 0),
                platform_streak=streaks.get(task_id, 0),
            )

    running_stmt = (
        select(TaskRun.profile, func.count())
        .where(TaskRun.status == RunStatus.RUNNING)
        .group_by(TaskRun.profile)
    )
    running = {p: int(n) for p, n in session.execute(running_stmt)}
    return Snapshot(
        tasks=tuple(views.values()),
        profiles=profile_views(session),
        running=running,
        reclaims=tuple(reclaims),
        now=now_aware,
        sandbox_backend=sandbox_backend,
    )
