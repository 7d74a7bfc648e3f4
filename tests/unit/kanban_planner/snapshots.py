"""Builders of planner snapshots for the planner tests and the in-memory benchmark."""

from __future__ import annotations

from datetime import datetime, timedelta

from services.kanban.planner import (
    ExecutorKind,
    ProfileView,
    Snapshot,
    TaskStatus,
    TaskView,
)

EPOCH = datetime(2025, 1, 1)


def task(
    task_id: str,
    assignee: str = "",
    *,
    status: TaskStatus = TaskStatus.READY,
    priority: int = 0,
    age: int = 0,
    waiting_on: tuple[str, ...] = (),
    failure_count: int = 0,
    breaker_open: bool = False,
    next_attempt_time: datetime | None = None,
    runs: int = 0,
) -> TaskView:
    """A task created ``age`` seconds after the epoch (smaller = older)."""
    return TaskView(
        task_id=task_id,
        board_id="b1",
        status=status,
        assignee=assignee,
        priority=priority,
        create_time=EPOCH + timedelta(seconds=age),
        waiting_on=waiting_on,
        failure_count=failure_count,
        breaker_open=breaker_open,
        next_attempt_time=next_attempt_time,
        runs=runs,
    )


def profiles(*specs: tuple[str, ExecutorKind, int]) -> dict[str, ProfileView]:
    """Profiles from (name, executor, own cap) triples."""
    return {name: ProfileView(name, executor, cap) for name, executor, cap in specs}


def big_snapshot(n_tasks: int = 10_000, n_profiles: int = 50) -> Snapshot:
    """The benchmark board: ``n_tasks`` ready tasks spread over sandbox profiles."""
    profs = {f"p{i:02}": ProfileView(f"p{i:02}", ExecutorKind.SANDBOX) for i in range(n_profiles)}
    names = sorted(profs)
    tasks = tuple(
        task(f"t{i:05}", names[i % n_profiles], priority=i % 3, age=(i * 7919) % n_tasks)
        for i in range(n_tasks)
    )
    return Snapshot(tasks=tasks, profiles=profs, running={})
