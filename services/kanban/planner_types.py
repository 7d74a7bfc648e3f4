"""Value types of the dispatcher planner: what a tick sees and what it decides.

The planner (``services.kanban.planner``) is a pure function from a
:class:`Snapshot` to a :class:`Plan`. These types carry no database handles and
no clocks, so a dry run, a real tick and the in-memory benchmark all plan from
the same values. ``planner.py`` re-exports every name here.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from longshore.kanban.v1 import dispatch_pb2, task_pb2

from services.kanban.vocabulary import ExecutorKind, TaskStatus


class ReadinessReason(enum.IntEnum):
    """Why a task is (not) about to run; values equal ``ReadinessReason`` in task.proto."""

    WILL_DISPATCH = task_pb2.READINESS_REASON_WILL_DISPATCH
    RUNNING = task_pb2.READINESS_REASON_RUNNING
    NO_ASSIGNEE = task_pb2.READINESS_REASON_NO_ASSIGNEE
    ASSIGNEE_UNKNOWN = task_pb2.READINESS_REASON_ASSIGNEE_UNKNOWN
    ASSIGNEE_NOT_SPAWNABLE = task_pb2.READINESS_REASON_ASSIGNEE_NOT_SPAWNABLE
    AT_PROFILE_CAP = task_pb2.READINESS_REASON_AT_PROFILE_CAP
    AT_GLOBAL_CAP = task_pb2.READINESS_REASON_AT_GLOBAL_CAP
    WAITING_ON_PARENTS = task_pb2.READINESS_REASON_WAITING_ON_PARENTS
    BREAKER_OPEN = task_pb2.READINESS_REASON_BREAKER_OPEN
    AWAITING_WORKER = task_pb2.READINESS_REASON_AWAITING_WORKER
    NOT_DISPATCHABLE = task_pb2.READINESS_REASON_NOT_DISPATCHABLE
    BACKING_OFF = task_pb2.READINESS_REASON_BACKING_OFF
    BACKEND_UNAVAILABLE = task_pb2.READINESS_REASON_BACKEND_UNAVAILABLE


class FailureClass(enum.StrEnum):
    """Whose failure ended a run (``TaskRun.failure_class``; FailureClass in run.proto)."""

    WORK = "work"
    """The work failed (exit, timeout, missing image, invalid spec): it counts."""
    PLATFORM = "platform"
    """The platform failed (a backend down, our own restart, a cancel): never counts."""


class ReclaimKind(enum.StrEnum):
    """Why a running run is taken back (the tick's ``reclaimed`` vs ``crashed`` bucket)."""

    LEASE_EXPIRED = "lease expired"
    EXECUTOR_GONE = "executor gone"

    @property
    def failure_class(self) -> FailureClass:
        """An external worker that stops heartbeating failed its work; a run of
        ours whose executor is gone was lost to our own restart (the platform)."""
        return FailureClass.WORK if self is ReclaimKind.LEASE_EXPIRED else FailureClass.PLATFORM


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a profile's failed tasks are retried (``RetryPolicy`` in profile.proto).

    Zeros mean "the dispatcher's setting"; :func:`planner.retry_policy`
    resolves them.

    Attributes:
        max_attempts: Work failures in a row that block the task (the breaker).
        initial_backoff_seconds: Delay before the first retry; doubled per failure.
        max_backoff_seconds: Longest delay between retries.
    """

    max_attempts: int = 0
    initial_backoff_seconds: float = 0.0
    max_backoff_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class BackendView:
    """A backend the dispatcher's breaker holds open (unavailable), as one tick sees it.

    Attributes:
        name: The backend (``sandbox``).
        since: When it became unavailable (aware UTC).
        reason: Why, e.g. the probe's error or the health detail.
        next_probe: When the breaker probes it next (aware UTC).
    """

    name: str
    since: datetime
    reason: str
    next_probe: datetime

    def message(self, now: datetime | None) -> str:
        """``sandbox backend unavailable since 12:00:03Z (reason), next probe in 4s``."""
        text = f"{self.name} backend unavailable since {clock_text(self.since)} ({self.reason})"
        if now is None:
            return text
        left = max(0, math.ceil((self.next_probe - now).total_seconds()))
        return f"{text}, next probe in {left}s"


def clock_text(when: datetime) -> str:
    """``HH:MM:SSZ`` of an aware (or naive UTC) time."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%H:%M:%SZ")


class TaskView(NamedTuple):
    """One task as the planner sees it (immutable; change one with ``_replace``).

    A named tuple rather than a frozen dataclass: a snapshot builds one per
    ready task (10,000 on a big board), and a frozen dataclass's ``__init__``
    (one ``object.__setattr__`` per field) made that a fifth of a tick.

    Attributes:
        task_id: The task id.
        board_id: The board it is on (informational; the walk spans boards).
        status: Its column. The walk considers ``ready`` tasks; ``todo`` tasks
            with nothing in ``waiting_on`` are promoted and walked in the same
            tick; ``running`` tasks named by a :class:`ReclaimView` go back to
            ready (or blocked); other statuses only matter to ``explain``.
        assignee: Profile name; ``""`` means unassigned.
        priority: Higher runs first.
        create_time: Ties in priority go to the older task (then to the
            smaller ``task_id``). All times in one snapshot must be comparable
            (all naive UTC or all aware).
        waiting_on: Parent ids that are not ``done`` yet (empty: all parents
            done, or no parents).
        failure_count: Counted failures of the current streak.
        breaker_open: For a ``blocked`` task: whether the failure breaker
            (rather than a person) blocked it.
        last_error: The last counted failure, used in a breaker reason.
        next_attempt_time: For a ``ready`` task retried after a failure: the
            walk leaves it alone until then (aware UTC; ``None`` = at once).
        runs: Runs the task has had (filled for tasks backing off or being
            reclaimed: the next one is attempt ``runs + 1``).
        platform_streak: Platform failures in a row ending its latest runs
            (filled for reclaimed tasks: the exponent of a platform backoff).
    """

    task_id: str
    board_id: str
    status: TaskStatus
    assignee: str
    priority: int
    create_time: datetime
    waiting_on: tuple[str, ...] = ()
    failure_count: int = 0
    breaker_open: bool = False
    last_error: str = ""
    next_attempt_time: datetime | None = None
    runs: int = 0
    platform_streak: int = 0


@dataclass(frozen=True, slots=True)
class ProfileView:
    """One profile as the planner sees it.

    Attributes:
        name: Profile name.
        executor: How its tasks run.
        max_in_progress: The profile's own cap; ``0`` (or less) means the
            ``max_in_progress_per_profile`` setting applies.
        retry: Its retry policy (zeros = the settings').
    """

    name: str
    executor: ExecutorKind
    max_in_progress: int = 0
    retry: RetryPolicy = RetryPolicy()


@dataclass(frozen=True, slots=True)
class ReclaimView:
    """A running run the tick takes back (K1 decides which from the database).

    Attributes:
        task_id: The task the run holds (present in the snapshot as ``running``).
        run_id: The run losing the task.
        profile: The profile the run counts against.
        kind: Expired lease (``reclaimed`` bucket) or gone executor (``crashed``).
    """

    task_id: str
    run_id: str
    profile: str
    kind: ReclaimKind


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one tick plans from, read in one transaction.

    Attributes:
        tasks: Ready and todo tasks, running tasks being reclaimed, and any
            other task ``explain`` may be asked about. Order does not matter.
        profiles: Profiles by name.
        running: Running runs per profile, *including* runs listed in
            ``reclaims`` (the planner subtracts those) and runs that predate
            the tick. Runs of external workers count too.
        reclaims: Running runs whose lease expired or whose executor is gone.
        now: The tick's time (aware UTC): tasks whose ``next_attempt_time``
            is later are backing off, and reclaimed tasks back off from it.
            ``None`` = no backoff applies (a snapshot without a clock).
        sandbox_backend: The sandbox backend while the dispatcher's breaker
            holds it unavailable; ``None`` while it is available.
    """

    tasks: tuple[TaskView, ...]
    profiles: Mapping[str, ProfileView]
    running: Mapping[str, int] = field(default_factory=dict)
    reclaims: tuple[ReclaimView, ...] = ()
    now: datetime | None = None
    sandbox_backend: BackendView | None = None

    @property
    def running_total(self) -> int:
        """Running runs over all profiles, reclaims included."""
        return sum(self.running.values())


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    """The dispatcher settings the planner needs, already parsed.

    Build it with :meth:`from_raw` (see ``planner.parse_cap``) so invalid caps
    mean "no cap" with one warning.

    Attributes:
        default_assignee: Profile an unassigned ready task takes; ``None`` = none.
        max_in_progress: Global cap on running runs; ``None`` = no cap.
        max_in_progress_per_profile: Cap for profiles without their own;
            ``None`` = no cap.
        failure_limit: Counted failures at which the breaker blocks a task,
            for profiles whose retry policy sets none.
        retry_initial_backoff_seconds: First retry delay, for profiles whose
            retry policy sets none.
        retry_max_backoff_seconds: Longest retry delay, likewise.
    """

    default_assignee: str | None = None
    max_in_progress: int | None = None
    max_in_progress_per_profile: int | None = None
    failure_limit: int = 2
    retry_initial_backoff_seconds: float = 5.0
    retry_max_backoff_seconds: float = 300.0


# The bucket entries are named tuples: a 10,000-task plan makes 10,000 of them,
# and a tuple is built twice as fast as a frozen dataclass.
class TaskRef(NamedTuple):
    """A task a bucket names, with the assignee involved (``""`` when none)."""

    task_id: str
    assignee: str


class CappedRef(NamedTuple):
    """A ready task deferred because its assignee has ``running`` of ``cap`` running."""

    task_id: str
    assignee: str
    running: int
    cap: int


class BlockedRef(NamedTuple):
    """A task the failure breaker blocks in this tick, and why."""

    task_id: str
    reason: str


class ReclaimRef(NamedTuple):
    """A run taken back in this tick; ``blocked`` when it tripped the breaker.

    ``failure_class`` says whose failure it was (only ``work`` counts) and
    ``next_attempt_time`` when the task may run again (``None``: at once,
    or blocked).
    """

    task_id: str
    run_id: str
    reason: str
    blocked: bool = False
    failure_class: FailureClass = FailureClass.WORK
    next_attempt_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Readiness:
    """Why a task is (not) about to run (mirrors ``Readiness`` in task.proto).

    Attributes:
        reason: The reason.
        assignee: The assignee involved, when any.
        running: Running runs of the assignee (AT_PROFILE_CAP) or in total
            (AT_GLOBAL_CAP).
        cap: The cap that applied.
        waiting_on: Parents not done yet (WAITING_ON_PARENTS).
        detail: Extra words for the message (e.g. the breaker's reason, or
            the backend's unavailability for BACKEND_UNAVAILABLE).
        next_attempt_time: When a BACKING_OFF task may run again.
        attempt: The attempt a BACKING_OFF task will make next (1 = first).
    """

    reason: ReadinessReason
    assignee: str = ""
    running: int = 0
    cap: int = 0
    waiting_on: tuple[str, ...] = ()
    detail: str = ""
    next_attempt_time: datetime | None = None
    attempt: int = 0

    @property
    def message(self) -> str:
        """One line for people, e.g. ``builder at per-profile cap (2 of 2 running)``."""
        return _message(self)

    def to_proto(self) -> task_pb2.Readiness:
        """The ``longshore.kanban.v1.Readiness`` message."""
        return task_pb2.Readiness(
            reason=task_pb2.ReadinessReason.ValueType(int(self.reason)),
            message=self.message,
            running=self.running,
            cap=self.cap,
            waiting_on=list(self.waiting_on),
        )


def _message(r: Readiness) -> str:
    reason = r.reason
    if reason is ReadinessReason.WILL_DISPATCH:
        return f"the next tick spawns it on {r.assignee}"
    if reason is ReadinessReason.RUNNING:
        return f"running on {r.assignee}" if r.assignee else "running"
    if reason is ReadinessReason.NO_ASSIGNEE:
        return "no assignee and no kanban.default_assignee"
    if reason is ReadinessReason.ASSIGNEE_UNKNOWN:
        return f"assignee {r.assignee} names no profile"
    if reason is ReadinessReason.ASSIGNEE_NOT_SPAWNABLE:
        return f"{r.assignee} has executor none (a human lane)"
    if reason is ReadinessReason.AT_PROFILE_CAP:
        return f"{r.assignee} at per-profile cap ({r.running} of {r.cap} running)"
    if reason is ReadinessReason.AT_GLOBAL_CAP:
        return r.detail or f"at global cap max_in_progress ({r.running} of {r.cap} running)"
    if reason is ReadinessReason.WAITING_ON_PARENTS:
        return "waiting on parents: " + ", ".join(r.waiting_on)
    if reason is ReadinessReason.BREAKER_OPEN:
        return "blocked by the failure breaker" + (f": {r.detail}" if r.detail else "")
    if reason is ReadinessReason.AWAITING_WORKER:
        return f"waiting for an external {r.assignee} worker to claim it"
    if reason is ReadinessReason.BACKING_OFF:
        when = clock_text(r.next_attempt_time) if r.next_attempt_time is not None else "soon"
        return f"retrying after backoff at {when} (attempt {r.attempt})"
    if reason is ReadinessReason.BACKEND_UNAVAILABLE:
        return r.detail or "the backend is unavailable"
    return r.detail or "not in a dispatchable status"


@dataclass(slots=True)
class Plan:
    """Everything a tick does (or, dry, would do), bucket by bucket.

    The buckets mirror ``DispatchResult`` in dispatch.proto; ``spawn_failed``
    is absent because only applying the plan can fail a spawn. Lists keep the
    walk order (priority, then age), so a plan is deterministic.
    """

    reclaimed: list[ReclaimRef] = field(default_factory=list)
    crashed: list[ReclaimRef] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    spawned: list[TaskRef] = field(default_factory=list)
    auto_assigned_default: list[TaskRef] = field(default_factory=list)
    skipped_unassigned: list[str] = field(default_factory=list)
    skipped_nonspawnable: list[TaskRef] = field(default_factory=list)
    skipped_per_profile_capped: list[CappedRef] = field(default_factory=list)
    auto_blocked: list[BlockedRef] = field(default_factory=list)
    awaiting_worker: list[TaskRef] = field(default_factory=list)
    backing_off: list[TaskRef] = field(default_factory=list)
    backend_paused: list[TaskRef] = field(default_factory=list)
    backend_unavailable: str = ""
    stopped_reason: str = ""
    not_considered: list[str] = field(default_factory=list)
    readiness: dict[str, Readiness] = field(default_factory=dict)

    def to_proto(self, *, dry_run: bool) -> dispatch_pb2.DispatchResult:
        """The ``DispatchResult`` for this plan (run ids, sandboxes, spawn failures
        and ``tick_time`` are the caller's to fill in)."""
        # Filled with ``add()``: a bucket holds up to every ready task, and
        # upb copies a message built apart and passed in a list (10,000
        # capped tasks: ~12 ms that way, ~5 ms with add()).
        out = dispatch_pb2.DispatchResult(
            dry_run=dry_run,
            promoted=self.promoted,
            skipped_unassigned=self.skipped_unassigned,
            stopped_reason=self.stopped_reason,
            not_considered=self.not_considered,
            backend_unavailable=self.backend_unavailable,
        )
        for target, reclaims in ((out.reclaimed, self.reclaimed), (out.crashed, self.crashed)):
            for r in reclaims:
                target.add(task_id=r.task_id, run_id=r.run_id, reason=r.reason)
        for spawned in self.spawned:
            out.spawned.add(task_id=spawned.task_id, assignee=spawned.assignee)
        for field_, refs in (
            (out.auto_assigned_default, self.auto_assigned_default),
            (out.skipped_nonspawnable, self.skipped_nonspawnable),
            (out.awaiting_worker, self.awaiting_worker),
            (out.backing_off, self.backing_off),
            (out.backend_paused, self.backend_paused),
        ):
            add = field_.add
            for ref in refs:
                add(task_id=ref.task_id, assignee=ref.assignee)
        add_capped = out.skipped_per_profile_capped.add
        for c in self.skipped_per_profile_capped:
            add_capped(task_id=c.task_id, assignee=c.assignee, running=c.running, cap=c.cap)
        for b in self.auto_blocked:
            out.auto_blocked.add(task_id=b.task_id, reason=b.reason)
        return out
