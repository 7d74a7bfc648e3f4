"""The dispatcher's planner: one tick's decisions as a pure function.

``plan(snapshot, settings=..., max_spawn=...)`` reads a :class:`Snapshot` and
returns a :class:`Plan`; it does no I/O, reads no clock and mutates nothing, so
a dry run is exactly this plan with nothing applied and a real tick is this
plan applied (``tick.py`` applies it with compare-and-set claims).

Semantics (DESIGN.md "Kanban-dispatch semantics", after the anchor's
``dispatch_once``), in tick order:

1. **Reclaim.** Each :class:`ReclaimView` frees its slot. An expired lease of
   an external worker is the work's failure and counts: at the profile's
   limit (``RetryPolicy.max_attempts``, else ``failure_limit``) the task is
   auto-blocked. A run whose executor is gone was lost to our own restart:
   the platform's failure, never counted. Either way a task that is not
   blocked is ready again with a retry backoff from ``snapshot.now`` (see
   :func:`backoff_seconds`), so the walk of this same tick shows it
   ``backing_off``.
2. **Promote.** ``todo`` tasks with nothing in ``waiting_on`` become ready and
   are walked in this same tick (so a dry run that shows them promoted also
   shows what the walk does with them, exactly like the real tick).
3. **Walk** ready tasks by priority (high first), then age (old first), then
   task id. Before each task: if ``max_in_progress`` running runs exist the
   walk stops (``stopped_reason``; the rest are ``not_considered``), likewise
   once ``max_spawn`` tasks were spawned. Then per task:

   - ``failure_count >=`` the profile's limit → ``auto_blocked``;
   - ``next_attempt_time`` after ``snapshot.now`` → ``backing_off``;
   - unassigned → takes ``default_assignee`` when set (``auto_assigned_default``)
     and goes on, else ``skipped_unassigned``;
   - assignee naming no profile or a profile with executor ``none`` →
     ``skipped_nonspawnable``;
   - a ``sandbox`` profile while ``snapshot.sandbox_backend`` is set (the
     dispatcher's breaker holds the sandbox backend unavailable) →
     ``backend_paused`` (external profiles are unaffected);
   - assignee at its cap → ``skipped_per_profile_capped`` (running, cap);
   - executor ``external`` → ``awaiting_worker`` (a worker claims it; it does
     not use a slot or ``max_spawn`` until claimed);
   - otherwise → ``spawned``; the profile's and the global running counts grow.

Every task in the snapshot gets a :class:`Readiness` in ``plan.readiness``;
:func:`explain` reads it for one task.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from operator import attrgetter

from services.kanban.caps import normalize_assignee, parse_cap, planner_settings
from services.kanban.planner_types import (
    BackendView,
    BlockedRef,
    CappedRef,
    FailureClass,
    Plan,
    PlannerSettings,
    ProfileView,
    Readiness,
    ReadinessReason,
    ReclaimKind,
    ReclaimRef,
    ReclaimView,
    RetryPolicy,
    Snapshot,
    TaskRef,
    TaskView,
    clock_text,
)
from services.kanban.retry import (
    backoff_seconds,
    next_attempt_time,
    retry_policy,
)
from services.kanban.vocabulary import ExecutorKind, TaskStatus

__all__ = [
    "BackendView",
    "BlockedRef",
    "CappedRef",
    "ExecutorKind",
    "FailureClass",
    "Plan",
    "PlannerSettings",
    "ProfileView",
    "Readiness",
    "ReadinessReason",
    "ReclaimKind",
    "ReclaimRef",
    "ReclaimView",
    "RetryPolicy",
    "Snapshot",
    "TaskRef",
    "TaskStatus",
    "TaskView",
    "apply",
    "backoff_seconds",
    "clock_text",
    "explain",
    "next_attempt_time",
    "normalize_assignee",
    "parse_cap",
    "plan",
    "planner_settings",
    "retry_policy",
]


log = logging.getLogger(__name__)


def _later(when: dt.datetime, now: dt.datetime) -> bool:
    # A naive value is UTC (SQLite hands back naive text); compare like with like.
    if (when.tzinfo is None) != (now.tzinfo is None):
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        else:
            now = now.replace(tzinfo=dt.UTC)
    return when > now


def _walk_order(tasks: Iterable[TaskView]) -> list[TaskView]:
    # Priority descending, then age ascending, then id: two stable sorts.
    ordered = sorted(tasks, key=attrgetter("create_time", "task_id"))
    ordered.sort(key=attrgetter("priority"), reverse=True)
    return ordered


def plan(snapshot: Snapshot, *, settings: PlannerSettings, max_spawn: int | None = None) -> Plan:
    """Decide one tick from a snapshot (pure; the module docstring has the rules).

    Args:
        snapshot: What the tick sees.
        settings: Parsed dispatcher settings.
        max_spawn: Spawn at most this many tasks this tick; ``None`` or less
            than 1 = no limit.

    Returns:
        The plan, with a readiness entry for every task in the snapshot.
    """
    result = Plan()
    readiness = result.readiness
    running = dict(snapshot.running)
    spawn_limit = max_spawn if max_spawn is not None and max_spawn > 0 else None

    by_id = {t.task_id: t for t in snapshot.tasks}
    walk: list[TaskView] = []
    reclaimed_ids: set[str] = set()

    _reclaim(snapshot, settings, result, running, by_id, walk, reclaimed_ids)

    todo_promoted: list[TaskView] = []
    for task in snapshot.tasks:
        status = task.status
        if task.task_id in reclaimed_ids:
            continue
        if status is TaskStatus.READY:
            walk.append(task)
        elif status is TaskStatus.TODO:
            if task.waiting_on:
                readiness[task.task_id] = Readiness(
                    ReadinessReason.WAITING_ON_PARENTS,
                    assignee=task.assignee,
                    waiting_on=task.waiting_on,
                )
            else:
                todo_promoted.append(task)
        else:
            readiness[task.task_id] = _static_readiness(task)
    for task in _walk_order(todo_promoted):
        result.promoted.append(task.task_id)
        walk.append(task)

    backend = snapshot.sandbox_backend
    if backend is not None:
        result.backend_unavailable = backend.message(snapshot.now)
    _walk(_walk_order(walk), result, snapshot, running, settings, spawn_limit)
    return result


def _reclaim(
    snapshot: Snapshot,
    settings: PlannerSettings,
    result: Plan,
    running: dict[str, int],
    by_id: Mapping[str, TaskView],
    walk: list[TaskView],
    reclaimed_ids: set[str],
) -> None:
    """Take back expired runs: free their slots, then block or re-walk their tasks."""
    readiness = result.readiness
    profiles = snapshot.profiles
    now = snapshot.now
    for rc in sorted(snapshot.reclaims, key=attrgetter("task_id", "run_id")):
        if rc.profile in running:
            running[rc.profile] = max(0, running[rc.profile] - 1)
        task = by_id.get(rc.task_id)
        blocked = False
        failure_class = rc.kind.failure_class
        retry_at: dt.datetime | None = None
        if task is not None and rc.task_id not in reclaimed_ids:
            reclaimed_ids.add(rc.task_id)
            policy = retry_policy(profiles.get(rc.profile), settings)
            if failure_class is FailureClass.WORK:
                failures = streak = task.failure_count + 1
            else:
                failures, streak = task.failure_count, task.platform_streak + 1
            if failure_class is FailureClass.WORK and failures >= policy.max_attempts:
                blocked = True
                reason = f"{failures} failures: {rc.kind.value}"
                result.auto_blocked.append(BlockedRef(rc.task_id, reason))
                readiness[rc.task_id] = Readiness(
                    ReadinessReason.BREAKER_OPEN, assignee=task.assignee, detail=reason
                )
            else:
                if now is not None:
                    retry_at = next_attempt_time(now, streak, policy)
                # Walked in this tick like any ready task: with a backoff it
                # lands in ``backing_off``, exactly as the next tick would see it.
                walk.append(
                    task._replace(
                        status=TaskStatus.READY,
                        failure_count=failures,
                        next_attempt_time=retry_at,
                        runs=max(task.runs, 1),
                    )
                )
        ref = ReclaimRef(
            rc.task_id,
            rc.run_id,
            rc.kind.value,
            blocked=blocked,
            failure_class=failure_class,
            next_attempt_time=retry_at,
        )
        bucket = result.reclaimed if rc.kind is ReclaimKind.LEASE_EXPIRED else result.crashed
        bucket.append(ref)


def _static_readiness(task: TaskView) -> Readiness:
    """Readiness of a task the walk does not consider (running, blocked, ...)."""
    if task.status is TaskStatus.RUNNING:
        return Readiness(ReadinessReason.RUNNING, assignee=task.assignee)
    if task.status is TaskStatus.BLOCKED and task.breaker_open:
        return Readiness(
            ReadinessReason.BREAKER_OPEN, assignee=task.assignee, detail=task.last_error
        )
    return Readiness(
        ReadinessReason.NOT_DISPATCHABLE,
        assignee=task.assignee,
        detail=f"status {task.status.value} is not dispatchable",
    )


_NO_LIMIT = 1 << 62
_UNKNOWN, _NOT_SPAWNABLE, _EXTERNAL, _SANDBOX = range(4)


class _Lane:
    """Per-assignee state of one walk: looked up once, then reused per task."""

    __slots__ = ("assignee", "cap", "capped", "kind", "paused", "readiness", "running")

    def __init__(self, assignee: str, kind: int, cap: int, running: int) -> None:
        self.assignee = assignee
        self.kind = kind
        self.cap = cap
        self.running = running
        self.capped: Readiness | None = None
        self.paused: Readiness | None = None
        reason = {
            _UNKNOWN: ReadinessReason.ASSIGNEE_UNKNOWN,
            _NOT_SPAWNABLE: ReadinessReason.ASSIGNEE_NOT_SPAWNABLE,
            _EXTERNAL: ReadinessReason.AWAITING_WORKER,
            _SANDBOX: ReadinessReason.WILL_DISPATCH,
        }[kind]
        self.readiness = Readiness(reason, assignee=assignee)


def _limit(profile: ProfileView | None, default: int) -> int:
    """The work failures that block a task of ``profile`` (its policy, else the setting)."""
    if profile is not None and profile.retry.max_attempts > 0:
        return profile.retry.max_attempts
    return default


def _lane(
    assignee: str,
    profiles: Mapping[str, ProfileView],
    running: Mapping[str, int],
    per_profile: int | None,
) -> _Lane:
    profile = profiles.get(assignee)
    if profile is None:
        return _Lane(assignee, _UNKNOWN, _NO_LIMIT, 0)
    if profile.executor is ExecutorKind.SANDBOX:
        kind = _SANDBOX
    elif profile.executor is ExecutorKind.EXTERNAL:
        kind = _EXTERNAL
    else:
        kind = _NOT_SPAWNABLE
    cap = profile.max_in_progress if profile.max_in_progress > 0 else per_profile
    return _Lane(assignee, kind, _NO_LIMIT if cap is None else cap, running.get(assignee, 0))


# One flat loop on purpose: it is the hot path (10,000 tasks in a few ms), so
# everything per assignee is looked up once (a lane) and readiness values,
# which are immutable, are shared between the tasks of a lane.
def _walk(  # noqa: PLR0915
    ordered: list[TaskView],
    result: Plan,
    snapshot: Snapshot,
    running: dict[str, int],
    settings: PlannerSettings,
    spawn_limit: int | None,
) -> None:
    readiness = result.readiness
    profiles = snapshot.profiles
    now = snapshot.now
    paused = result.backend_unavailable or None
    limit = settings.failure_limit
    default = settings.default_assignee
    per_profile = settings.max_in_progress_per_profile
    global_cap = settings.max_in_progress
    total_stop = _NO_LIMIT if global_cap is None else global_cap
    spawn_stop = _NO_LIMIT if spawn_limit is None else spawn_limit
    total = sum(running.values())
    spawned = 0
    lanes: dict[str, _Lane] = {}
    no_assignee = Readiness(ReadinessReason.NO_ASSIGNEE)
    spawned_refs = result.spawned
    capped_refs = result.skipped_per_profile_capped

    for index, task in enumerate(ordered):
        if total >= total_stop or spawned >= spawn_stop:
            _stop_walk(result, ordered, index, total, global_cap, spawn_limit)
            break
        task_id = task.task_id
        failures = task.failure_count
        if failures and failures >= _limit(profiles.get(task.assignee or default or ""), limit):
            reason = f"{task.failure_count} failures" + (
                f": {task.last_error}" if task.last_error else ""
            )
            result.auto_blocked.append(BlockedRef(task_id, reason))
            readiness[task_id] = Readiness(
                ReadinessReason.BREAKER_OPEN, assignee=task.assignee, detail=reason
            )
            continue
        retry_at = task.next_attempt_time
        if retry_at is not None and now is not None and _later(retry_at, now):
            result.backing_off.append(TaskRef(task_id, task.assignee))
            readiness[task_id] = Readiness(
                ReadinessReason.BACKING_OFF,
                assignee=task.assignee,
                next_attempt_time=retry_at,
                attempt=task.runs + 1,
            )
            continue
        assignee = task.assignee
        if not assignee:
            if default is None:
                result.skipped_unassigned.append(task_id)
                readiness[task_id] = no_assignee
                continue
            assignee = default
            result.auto_assigned_default.append(TaskRef(task_id, assignee))
        lane = lanes.get(assignee)
        if lane is None:
            lane = lanes[assignee] = _lane(assignee, profiles, running, per_profile)
        kind = lane.kind
        if kind < _EXTERNAL:
            result.skipped_nonspawnable.append(TaskRef(task_id, assignee))
            readiness[task_id] = lane.readiness
            continue
        if paused is not None and kind == _SANDBOX:
            result.backend_paused.append(TaskRef(task_id, assignee))
            if lane.paused is None:
                lane.paused = Readiness(
                    ReadinessReason.BACKEND_UNAVAILABLE, assignee=assignee, detail=paused
                )
            readiness[task_id] = lane.paused
            continue
        if lane.running >= lane.cap:
            capped_refs.append(CappedRef(task_id, assignee, lane.running, lane.cap))
            if lane.capped is None:
                lane.capped = Readiness(
                    ReadinessReason.AT_PROFILE_CAP,
                    assignee=assignee,
                    running=lane.running,
                    cap=lane.cap,
                )
            readiness[task_id] = lane.capped
            continue
        if kind == _EXTERNAL:
            result.awaiting_worker.append(TaskRef(task_id, assignee))
            readiness[task_id] = lane.readiness
            continue
        spawned_refs.append(TaskRef(task_id, assignee))
        readiness[task_id] = lane.readiness
        lane.running += 1
        running[assignee] = lane.running
        total += 1
        spawned += 1


def _stop_walk(
    result: Plan,
    ordered: list[TaskView],
    index: int,
    total: int,
    global_cap: int | None,
    spawn_limit: int | None,
) -> None:
    if global_cap is not None and total >= global_cap:
        result.stopped_reason = f"max_in_progress reached ({global_cap})"
        why = Readiness(ReadinessReason.AT_GLOBAL_CAP, running=total, cap=global_cap)
    else:
        assert spawn_limit is not None
        result.stopped_reason = f"max_spawn reached ({spawn_limit})"
        why = Readiness(
            ReadinessReason.AT_GLOBAL_CAP,
            running=total,
            cap=spawn_limit,
            detail=f"not considered: max_spawn reached ({spawn_limit})",
        )
    _stop(result, ordered, index, why)


def _stop(result: Plan, ordered: list[TaskView], index: int, why: Readiness) -> None:
    readiness = result.readiness
    rest = ordered[index:]
    result.not_considered.extend(t.task_id for t in rest)
    shared: dict[str, Readiness] = {}
    for task in rest:
        entry = shared.get(task.assignee)
        if entry is None:
            entry = shared[task.assignee] = replace(why, assignee=task.assignee)
        readiness[task.task_id] = entry


def explain(snapshot: Snapshot, task_id: str, *, settings: PlannerSettings) -> Readiness | None:
    """Why one task is (not) about to run, from the same plan a tick would make.

    Args:
        snapshot: What the tick would see.
        task_id: The task to explain.
        settings: Parsed dispatcher settings.

    Returns:
        Its readiness, or ``None`` when the task is not in the snapshot.
    """
    return plan(snapshot, settings=settings, max_spawn=None).readiness.get(task_id)


def apply(snapshot: Snapshot, result: Plan) -> Snapshot:
    """The snapshot after a real tick applied ``result`` (in memory; for tests and bench).

    Spawned tasks become ``running`` and count against their profile;
    reclaimed runs are gone and their tasks are ready (failure counted) or
    blocked; promoted tasks are ready; defaults are assigned; auto-blocked
    tasks are blocked by the breaker.

    Args:
        snapshot: The snapshot the plan was made from.
        result: The plan.

    Returns:
        The new snapshot.
    """
    running = dict(snapshot.running)
    tasks = {t.task_id: t for t in snapshot.tasks}
    for rc in snapshot.reclaims:
        if rc.profile in running:
            running[rc.profile] = max(0, running[rc.profile] - 1)
    for rc_ref in (*result.reclaimed, *result.crashed):
        task = tasks.get(rc_ref.task_id)
        if task is not None:
            counted = rc_ref.failure_class is FailureClass.WORK
            tasks[task.task_id] = task._replace(
                status=TaskStatus.READY,
                failure_count=task.failure_count + 1 if counted else task.failure_count,
                last_error=rc_ref.reason if counted else task.last_error,
                next_attempt_time=rc_ref.next_attempt_time,
                runs=max(task.runs, 1),
                platform_streak=0 if counted else task.platform_streak + 1,
            )
    for task_id in result.promoted:
        tasks[task_id] = tasks[task_id]._replace(status=TaskStatus.READY)
    for ref in result.auto_assigned_default:
        tasks[ref.task_id] = tasks[ref.task_id]._replace(assignee=ref.assignee)
    for blocked in result.auto_blocked:
        tasks[blocked.task_id] = tasks[blocked.task_id]._replace(
            status=TaskStatus.BLOCKED,
            breaker_open=True,
            last_error=blocked.reason,
        )
    for ref in result.spawned:
        tasks[ref.task_id] = tasks[ref.task_id]._replace(status=TaskStatus.RUNNING)
        running[ref.assignee] = running.get(ref.assignee, 0) + 1
    return Snapshot(
        tasks=tuple(tasks.values()),
        profiles=snapshot.profiles,
        running=running,
        reclaims=(),
        now=snapshot.now,
        sandbox_backend=snapshot.sandbox_backend,
    )
