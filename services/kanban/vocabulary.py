"""The kanban's words for a task's column, a run's end and a profile's executor.

One ``StrEnum`` per concept, used by the models (the stored strings are the
members' values), the planner and the store alike; each mirrors its proto
enum's lowercase names (``TaskStatus`` in task.proto, ``RunStatus`` in
run.proto, ``Executor`` in profile.proto), and ``convert`` maps between them.
"""

from __future__ import annotations

import enum


class TaskStatus(enum.StrEnum):
    """A task's column, as stored."""

    TRIAGE = "triage"
    TODO = "todo"
    READY = "ready"
    RUNNING = "running"
    BLOCKED = "blocked"
    DONE = "done"
    ARCHIVED = "archived"


class RunStatus(enum.StrEnum):
    """Where a run is, or how it ended, as stored."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"
    SPAWN_FAILED = "spawn_failed"


class ExecutorKind(enum.StrEnum):
    """How a profile's tasks run, as stored."""

    SANDBOX = "sandbox"
    EXTERNAL = "external"
    NONE = "none"
