"""A task's lifecycle: its row, status moves with their event, and ending a run.

The few functions every other store module builds on (tasks, runs, links,
failures, claims): they import this module and it imports none of them, so
the store has no import circle.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from services.kanban.models import Profile, Task, TaskRun, utcnow
from services.kanban.planner import FailureClass
from services.kanban.store import Effects, Release, events, keys
from services.kanban.vocabulary import ExecutorKind, RunStatus, TaskStatus
from services.runtime.errors import InvalidArgument, NotFound, quote


def get(session: Session, task_id: str, *, for_update: bool = False) -> Task:
    """Return a task.

    Raises:
        InvalidArgument: Empty id.
        NotFound: No such task.
    """
    if not task_id:
        raise InvalidArgument("task_id: required")
    task = keys.by_key(session, Task, task_id, lock=for_update)
    if task is None:
        raise NotFound(f"task {quote(task_id)} not found")
    return task


def end_run(
    run: TaskRun,
    *,
    status: str,
    error: str = "",
    exit_code: int | None = None,
    counted: bool = False,
    now: dt.datetime | None = None,
    failure_class: FailureClass | None = None,
) -> None:
    """Mark a run ended (no event, no task change).

    ``failure_class`` is recorded for a failed run; a cancelled run without
    one was cancelled by an operator (a task moved out of running): the
    platform's, never counted.
    """
    if failure_class is None and status == RunStatus.CANCELLED:
        failure_class = FailureClass.PLATFORM
    run.status = status
    run.error = error
    run.exit_code = exit_code
    run.counted_failure = counted
    run.failure_class = failure_class.value if failure_class is not None else ""
    run.end_time = now or utcnow()
    run.lease_expire_time = None


def _release_if_finished(session: Session, task: Task, effects: Effects) -> None:
    if task.status not in (TaskStatus.DONE, TaskStatus.ARCHIVED) or not task.assignee:
        return
    with session.no_autoflush:  # the task's pending changes flush with its event
        profile = keys.by_key(session, Profile, task.assignee)
    sandboxed = profile is not None and profile.executor == ExecutorKind.SANDBOX
    if sandboxed and profile is not None and not profile.keep_sandbox:
        effects.releases.append(Release(task.task_id, task.assignee, task.sandbox_id))


def cancel_current_run(
    session: Session, task: Task, *, reason: str, source: str, effects: Effects
) -> None:
    """End the task's current run ``cancelled`` (the exec is killed after commit)."""
    if not task.current_run_id:
        return
    run = keys.by_key(session, TaskRun, task.current_run_id)
    task.current_run_id = None
    if run is None or run.status != RunStatus.RUNNING:
        return
    end_run(run, status=RunStatus.CANCELLED, error=reason)
    effects.cancelled_runs.append(run.run_id)
    events.append(
        session,
        task_id=task.task_id,
        board_id=task.board_id,
        kind="cancelled",
        source=source,
        payload={"reason": reason},
        run_id=run.run_id,
    )


def set_status(
    session: Session,
    task: Task,
    status: str,
    *,
    reason: str,
    source: str,
    effects: Effects,
    kind: str = "moved",
) -> None:
    """Move ``task`` to ``status`` with an event, without checking the table."""
    previous = task.status
    now = utcnow()
    if previous == TaskStatus.RUNNING and status != TaskStatus.RUNNING:
        cancel_current_run(
            session, task, reason=reason or f"moved to {status}", source=source, effects=effects
        )
    task.status = status
    task.update_time = now
    if status == TaskStatus.READY:
        task.ready_time = now
        effects.wake = True
    if status == TaskStatus.BLOCKED:
        task.blocked_reason = reason
    elif previous == TaskStatus.BLOCKED:
        task.blocked_reason = ""
        task.breaker_open = False
    if status == TaskStatus.DONE:
        effects.wake = True  # children may be promotable
    _release_if_finished(session, task, effects)
    events.append(
        session,
        task_id=task.task_id,
        board_id=task.board_id,
        kind=kind,
        source=source,
        payload={"from": previous, "to": status, "reason": reason},
        now=now,
    )
