"""How a failed run moves its task: retried after a backoff, or blocked by the breaker.

A work failure counts toward the profile's retry limit; a platform failure
never does; both put a retryable task back to ready at its
``next_attempt_time`` (see :mod:`services.kanban.retry`). Every caller that
ends a run with a failure (the executor's run sink, the tick's reclaims,
WorkerService.FailTask) goes through :func:`fail`, so the rules live here once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.kanban.models import Profile, Task, TaskRun, utcnow
from services.kanban.planner import (
    ExecutorKind,
    FailureClass,
    PlannerSettings,
    ProfileView,
    RetryPolicy,
    next_attempt_time,
    retry_policy,
)
from services.kanban.store import Effects, events, keys
from services.kanban.store.lifecycle import end_run
from services.kanban.vocabulary import RunStatus, TaskStatus

_FAILURE_EVENT: dict[str, str] = {
    RunStatus.FAILED: "failed",
    RunStatus.TIMED_OUT: "timed_out",
    RunStatus.SPAWN_FAILED: "spawn_failed",
    RunStatus.LOST: "reclaimed",
    RunStatus.CANCELLED: "cancelled",
}
# Runs looked at, newest first, to count a task's platform failures in a row:
# past this many the backoff is at its maximum anyway.
_STREAK_LOOKBACK = 32


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    """What a failure did to its task.

    Attributes:
        task: The task.
        blocked: The task is blocked (the breaker tripped, or not retryable).
        reason: Why it was blocked; empty when it was not.
        next_attempt_time: When a task put back to ready may run again.
    """

    task: Task
    blocked: bool
    reason: str
    next_attempt_time: dt.datetime | None = None


def profile_view(row: Profile) -> ProfileView:
    """A profile row as the planner sees it (caps and retry policy)."""
    return ProfileView(
        name=row.name,
        executor=ExecutorKind(row.executor),
        max_in_progress=row.max_in_progress,
        retry=RetryPolicy(
            max_attempts=row.retry_max_attempts or 0,
            initial_backoff_seconds=row.retry_initial_backoff_seconds or 0.0,
            max_backoff_seconds=row.retry_max_backoff_seconds or 0.0,
        ),
    )


def platform_streaks(session: Session, task_ids: Sequence[str]) -> dict[str, int]:
    """Platform failures in a row ending each task's latest ended runs.

    Running runs are skipped; the count stops at the first run that did not
    end as a platform failure (and looks at most at the newest 32 runs).
    """
    out: dict[str, int] = {}
    for task_id in dict.fromkeys(task_ids):
        stmt = (
            select(TaskRun.failure_class)
            .where(TaskRun.task_id == task_id, TaskRun.status != RunStatus.RUNNING)
            .order_by(TaskRun.start_time.desc(), TaskRun.run_id.desc())
            .limit(_STREAK_LOOKBACK)
        )
        streak = 0
        for (failure_class,) in session.execute(stmt):
            if failure_class != FailureClass.PLATFORM.value:
                break
            streak += 1
        out[task_id] = streak
    return out


def run_counts(session: Session, task_ids: Sequence[str]) -> dict[str, int]:
    """How many runs each task has had (its next run is attempt ``count + 1``)."""
    out: dict[str, int] = {}
    ids = list(dict.fromkeys(task_ids))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        stmt = (
            select(TaskRun.task_id, func.count())
            .where(TaskRun.task_id.in_(chunk))
            .group_by(TaskRun.task_id)
        )
        out.update({tid: int(n) for tid, n in session.execute(stmt)})
    return out


def fail(
    session: Session,
    run: TaskRun,
    task: Task,
    *,
    status: str,
    error: str,
    retryable: bool,
    settings: PlannerSettings,
    source: str,
    effects: Effects,
    exit_code: int | None = None,
    reason: str = "",
    failure_class: FailureClass = FailureClass.WORK,
    now: dt.datetime | None = None,
) -> FailureOutcome:
    """End ``run`` with a failure and retry its task after a backoff, or block it.

    The caller has checked that ``run`` holds ``task`` (see :func:`fenced`).
    A work failure counts: at the profile's limit (its retry policy's
    ``max_attempts``, else ``settings.failure_limit``), or when it is not
    retryable, the task is blocked with a ``gave_up`` event; otherwise it is
    ready again at ``now + min(max, initial * 2**(n-1))`` with ``n`` its
    counted failures. A platform failure never counts and never blocks: the
    task is ready again with the same backoff, ``n`` being its platform
    failures in a row. The failure event says which (``failure_class``).

    Args:
        session: The caller's write session.
        run: The failed run.
        task: Its task.
        status: The run's end status (failed, timed_out, spawn_failed, lost,
            cancelled).
        error: One line for people.
        retryable: Whether a work failure may be retried at all.
        settings: The dispatcher's settings (failure limit, default backoff).
        source: Event source.
        effects: Post-commit effects (a wake when the task is ready again).
        exit_code: The command's exit code, when it exited.
        reason: Extra words for the event.
        failure_class: Whose failure it was.
        now: The failure's time (a tick passes its own, so its dry run agrees).

    Returns:
        What happened to the task.
    """
    now = now or utcnow()
    work = failure_class is FailureClass.WORK
    platform_streak = 0 if work else platform_streaks(session, [task.task_id])[task.task_id]
    end_run(
        run,
        status=status,
        error=error,
        exit_code=exit_code,
        counted=work,
        now=now,
        failure_class=failure_class,
    )
    task.current_run_id = None
    if work:
        task.failure_count += 1
    profile = keys.by_key(session, Profile, run.profile)
    policy = retry_policy(profile_view(profile) if profile is not None else None, settings)
    payload: dict[str, object] = {
        "error": error,
        "failure_count": task.failure_count,
        "failure_class": failure_class.value,
        "counted": work,
    }
    if exit_code is not None:
        payload["exit_code"] = exit_code
    if reason:
        payload["reason"] = reason
    tripped = work and task.failure_count >= policy.max_attempts
    retry_at: dt.datetime | None = None
    if not (tripped or (work and not retryable)):
        retry_at = next_attempt_time(
            now, task.failure_count if work else platform_streak + 1, policy
        )
        payload["next_attempt_time"] = retry_at.astimezone(dt.UTC).isoformat()
    events.append(
        session,
        task_id=task.task_id,
        board_id=task.board_id,
        kind=_FAILURE_EVENT.get(status, "failed"),
        source=source,
        payload=payload,
        run_id=run.run_id,
        now=now,
    )
    if retry_at is None:
        why = (
            f"{task.failure_count} failures: {error}"
            if tripped
            else f"non-retryable failure: {error}"
        )
        task.status = TaskStatus.BLOCKED
        task.blocked_reason = why
        task.breaker_open = tripped
        task.next_attempt_time = None
        task.update_time = now
        events.append(
            session,
            task_id=task.task_id,
            board_id=task.board_id,
            kind="gave_up",
            source=source,
            payload={"reason": why, "failure_count": task.failure_count},
            run_id=run.run_id,
            now=now,
        )
        return FailureOutcome(task, True, why)
    task.status = TaskStatus.READY
    task.ready_time = now
    task.update_time = now
    task.next_attempt_time = retry_at
    # The loop wakes now and finds the task backing off; the tick after the
    # backoff (the loop's interval) spawns it.
    effects.wake = True
    return FailureOutcome(task, False, "", retry_at)
