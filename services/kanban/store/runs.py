"""Runs: the compare-and-set claim, leases, heartbeats, fencing, output chunks,
and how a run's end moves its task (done, retry, or the breaker).

A run's ``run_id`` is the fencing token. Every run-affecting call names it;
:func:`fenced` refuses any run that is not the task's current running run,
so a stale holder changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from services.kanban.models import (
    BLOCKED,
    DONE,
    READY,
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_LOST,
    RUN_RUNNING,
    RUN_SPAWN_FAILED,
    RUN_SUCCEEDED,
    RUN_TIMED_OUT,
    RUNNING,
    Profile,
    RunOutput,
    Task,
    TaskRun,
    utcnow,
)
from services.kanban.planner import (
    FailureClass,
    PlannerSettings,
    RetryPolicy,
    next_attempt_time,
    retry_policy,
)
from services.kanban.planner_types import ExecutorKind, ProfileView
from services.kanban.store import Effects, events, new_id, tasks
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_CHUNK = 64 * 1024
DEFAULT_READ_LIMIT = 1024 * 1024
_FAILURE_EVENT = {
    RUN_FAILED: "failed",
    RUN_TIMED_OUT: "timed_out",
    RUN_SPAWN_FAILED: "spawn_failed",
    RUN_LOST: "reclaimed",
    RUN_CANCELLED: "cancelled",
}
# Runs looked at, newest first, to count a task's platform failures in a row:
# past this many the backoff is at its maximum anyway.
_STREAK_LOOKBACK = 32


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
    if failure_class is None and status == RUN_CANCELLED:
        failure_class = FailureClass.PLATFORM
    run.status = status
    run.error = error
    run.exit_code = exit_code
    run.counted_failure = counted
    run.failure_class = failure_class.value if failure_class is not None else ""
    run.end_time = now or utcnow()
    run.lease_expire_time = None


def get_run(session: Session, run_id: str) -> TaskRun:
    """Return a run.

    Raises:
        InvalidArgument: Empty id.
        NotFound: No such run.
    """
    if not run_id:
        raise InvalidArgument("run_id: required")
    run = session.get(TaskRun, run_id)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


def fenced(session: Session, run_id: str, *, lock: bool = False) -> tuple[TaskRun, Task]:
    """Return the run and its task if ``run_id`` still holds the task.

    Raises:
        InvalidArgument: Empty id.
        NotFound: No such run.
        FailedPrecondition: The run is stale (ended, reclaimed or cancelled).
    """
    if not run_id:
        raise InvalidArgument("run_id: required")
    run = session.get(TaskRun, run_id, with_for_update=lock)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    task = session.get(Task, run.task_id, with_for_update=lock)
    if run.status != RUN_RUNNING or task is None or task.current_run_id != run_id:
        raise FailedPrecondition(f"run {run_id!r} is stale: {run.status}")
    return run, task


def claim(
    session: Session,
    task: Task,
    *,
    profile: str,
    worker_id: str,
    executor_instance: str,
    lease_seconds: float,
    source: str,
    holder: str,
    now: dt.datetime | None = None,
    event_kind: str = "claimed",
) -> TaskRun | None:
    """Claim a ready task: compare-and-set ready → running and create its run.

    Returns:
        The new run, or None when the task was no longer ready.
    """
    won = claim_many(
        session,
        [(task, profile)],
        worker_id=worker_id,
        executor_instance=executor_instance,
        lease_seconds=lease_seconds,
        source=source,
        holder=holder,
        now=now,
        event_kind=event_kind,
    )
    return won.get(task.task_id)


def claim_many(
    session: Session,
    claims: Sequence[tuple[Task, str]],
    *,
    worker_id: str,
    executor_instance: str,
    lease_seconds: float,
    source: str,
    holder: str,
    now: dt.datetime | None = None,
    event_kind: str = "claimed",
) -> dict[str, TaskRun]:
    """Claim many ready tasks in one round trip (the dispatcher's batch).

    Each claim is ``UPDATE tasks SET status='running', current_run_id=:run
    WHERE task_id=:task AND status='ready'``; a task another caller took
    meanwhile simply is not won.

    Args:
        session: The caller's write session.
        claims: (task, profile) pairs.
        worker_id: Holder recorded on the runs.
        executor_instance: Spawning process, for crash detection ("" for workers).
        lease_seconds: Initial lease.
        source: Event source.
        holder: Principal that owns the runs (the claiming API key's name, or
            ``dispatcher``); only it may change them through WorkerService.
        now: Claim time.
        event_kind: ``claimed`` (a worker) or ``spawned`` (the dispatcher).

    Returns:
        The new run per won task id.
    """
    if not claims:
        return {}
    now = now or utcnow()
    run_ids = {task.task_id: new_id("r") for task, _ in claims}
    table = cast(Table, Task.__table__)
    stmt = (
        update(table)
        .where(table.c.task_id == bindparam("b_task"), table.c.status == READY)
        .values(
            status=RUNNING,
            current_run_id=bindparam("b_run"),
            update_time=bindparam("b_now", type_=Task.update_time.type),
            assignee=bindparam("b_profile"),
            next_attempt_time=None,
        )
    )
    session.execute(
        stmt,
        [
            {"b_task": t.task_id, "b_run": run_ids[t.task_id], "b_now": now, "b_profile": p}
            for t, p in claims
        ],
    )
    check = select(Task.task_id, Task.current_run_id).where(Task.task_id.in_(list(run_ids)))
    won_ids = {tid for tid, rid in session.execute(check) if rid == run_ids[tid]}
    lease = now + dt.timedelta(seconds=lease_seconds)
    won: dict[str, TaskRun] = {}
    for task, profile in claims:
        if task.task_id not in won_ids:
            continue
        run_id = run_ids[task.task_id]
        for key, value in (
            ("status", RUNNING),
            ("current_run_id", run_id),
            ("update_time", now),
            ("assignee", profile),
            ("next_attempt_time", None),
        ):
            set_committed_value(task, key, value)
        run = TaskRun(
            run_id=run_id,
            task_id=task.task_id,
            profile=profile,
            status=RUN_RUNNING,
            worker_id=worker_id,
            executor_instance=executor_instance,
            holder=holder,
            start_time=now,
            lease_expire_time=lease,
            sandbox_id="",
            error="",
            output_bytes=0,
            output_truncated=False,
            counted_failure=False,
        )
        session.add(run)
        won[task.task_id] = run
        events.append(
            session,
            task_id=task.task_id,
            board_id=task.board_id,
            kind=event_kind,
            source=source,
            payload={"profile": profile, "worker_id": worker_id},
            run_id=run_id,
            now=now,
            flush=False,
        )
    session.flush()
    return won


def heartbeat(session: Session, run_id: str, *, lease_seconds: float) -> dt.datetime | None:
    """Renew a running run's lease (compare-and-set on its status).

    Returns:
        The new lease expiry, or None when the run is not running any more.
    """
    expire = utcnow() + dt.timedelta(seconds=lease_seconds)
    result = session.execute(
        update(TaskRun)
        .where(TaskRun.run_id == run_id, TaskRun.status == RUN_RUNNING)
        .values(lease_expire_time=expire)
        .execution_options(synchronize_session=False)
    )
    return expire if result.rowcount == 1 else None  # type: ignore[attr-defined]


def set_sandbox(session: Session, run_id: str, sandbox_id: str) -> None:
    """Record the sandbox a running run uses (and on its task)."""
    run = session.get(TaskRun, run_id)
    if run is None:
        return
    run.sandbox_id = sandbox_id
    task = session.get(Task, run.task_id)
    if task is not None:
        task.sandbox_id = sandbox_id
    session.flush()


def append_output(session: Session, run_id: str, data: bytes, *, max_bytes: int) -> TaskRun:
    """Append output to a running run, keeping at most ``max_bytes`` in all.

    Raises:
        NotFound, FailedPrecondition: As :func:`fenced`.
    """
    run, _task = fenced(session, run_id, lock=True)
    keep = max(0, max_bytes - run.output_bytes)
    kept = data[:keep]
    if len(data) > keep:
        run.output_truncated = True
    offset = run.output_bytes
    for start in range(0, len(kept), MAX_CHUNK):
        piece = kept[start : start + MAX_CHUNK]
        session.add(RunOutput(run_id=run_id, offset=offset + start, data=piece))
    run.output_bytes = offset + len(kept)
    session.flush()
    return run


def read_output(session: Session, run: TaskRun, offset: int, limit: int) -> tuple[bytes, int]:
    """Return up to ``limit`` bytes of a run's output from ``offset``, and the next offset."""
    if offset < 0:
        raise InvalidArgument("offset: must not be negative")
    limit = limit or DEFAULT_READ_LIMIT
    stmt = (
        select(RunOutput.offset, RunOutput.data)
        .where(
            RunOutput.run_id == run.run_id,
            RunOutput.offset >= offset - MAX_CHUNK,
            RunOutput.offset < offset + limit,
        )
        .order_by(RunOutput.offset)
    )
    out = bytearray()
    for chunk_offset, data in session.execute(stmt):
        end = chunk_offset + len(data)
        if end <= offset:
            continue
        out += data[max(0, offset - chunk_offset) :]
    out = out[:limit]
    return bytes(out), offset + len(out)


def latest_run(session: Session, task_id: str) -> TaskRun:
    """Return a task's newest run.

    Raises:
        NotFound: The task does not exist or has no runs.
    """
    tasks.get(session, task_id)
    stmt = (
        select(TaskRun)
        .where(TaskRun.task_id == task_id)
        .order_by(TaskRun.start_time.desc(), TaskRun.run_id.desc())
        .limit(1)
    )
    run = session.scalar(stmt)
    if run is None:
        raise NotFound(f"task {task_id!r} has no runs")
    return run


def list_runs(
    session: Session, task_id: str, *, after: tuple[dt.datetime, str] | None, limit: int
) -> list[TaskRun]:
    """Return a task's runs, newest first."""
    tasks.get(session, task_id)
    stmt = select(TaskRun).where(TaskRun.task_id == task_id)
    if after is not None:
        t, rid = after
        stmt = stmt.where(
            (TaskRun.start_time < t) | ((TaskRun.start_time == t) & (TaskRun.run_id < rid))
        )
    stmt = stmt.order_by(TaskRun.start_time.desc(), TaskRun.run_id.desc()).limit(limit)
    return list(session.scalars(stmt))


def running_runs(session: Session) -> list[TaskRun]:
    """Return every running run."""
    return list(session.scalars(select(TaskRun).where(TaskRun.status == RUN_RUNNING)))


def running_total(session: Session) -> int:
    """Return how many runs are running."""
    stmt = select(func.count()).select_from(TaskRun).where(TaskRun.status == RUN_RUNNING)
    return int(session.scalar(stmt) or 0)


def complete(session: Session, run_id: str, *, summary: str, source: str, effects: Effects) -> Task:
    """End a run successfully: the task is done and its failure streak resets.

    Raises:
        NotFound, FailedPrecondition: As :func:`fenced`.
    """
    run, task = fenced(session, run_id, lock=True)
    now = utcnow()
    end_run(run, status=RUN_SUCCEEDED, exit_code=run.exit_code or 0, now=now)
    task.current_run_id = None
    task.failure_count = 0
    task.next_attempt_time = None
    events.append(
        session,
        task_id=task.task_id,
        board_id=task.board_id,
        kind="completed",
        source=source,
        payload={"summary": summary},
        run_id=run_id,
        now=now,
    )
    tasks.set_status(session, task, DONE, reason="completed", source=source, effects=effects)
    return task


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
            .where(TaskRun.task_id == task_id, TaskRun.status != RUN_RUNNING)
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
    profile = session.get(Profile, run.profile)
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
        task.status = BLOCKED
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
    task.status = READY
    task.ready_time = now
    task.update_time = now
    task.next_attempt_time = retry_at
    # The loop wakes now and finds the task backing off; the tick after the
    # backoff (the loop's interval) spawns it.
    effects.wake = True
    return FailureOutcome(task, False, "", retry_at)


def expired_runs(session: Session, now: dt.datetime) -> list[TaskRun]:
    """Return running runs whose lease ended before ``now``."""
    stmt = select(TaskRun).where(TaskRun.status == RUN_RUNNING, TaskRun.lease_expire_time < now)
    return list(session.scalars(stmt.order_by(TaskRun.start_time, TaskRun.run_id)))
