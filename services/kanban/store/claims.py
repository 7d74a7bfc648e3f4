"""Claims: the cap-domain locks that keep caps exact, and an external worker's claim.

A claim spends a slot of a cap domain: its profile's ``max_in_progress`` and,
when one is configured, the global ``max_in_progress``. Counting running runs
and then inserting one is a read-modify-write, so two replicas counting at
once could both see a free slot. On PostgreSQL every claimer therefore first
takes a transaction-scoped advisory lock per domain it spends, and only then
counts: READ COMMITTED gives the count (a later statement) a snapshot taken
after the previous holder committed, so the count includes its runs. Nothing
else takes these locks: ending a run only frees a slot, which can make a
count stale in the safe direction only.

Lock order, everywhere: the global domain first, then the profiles by lock
key, and all cap locks before any row lock. Claims are the only writers that
take both kinds, so no two transactions can wait on each other in a circle.

On SQLite every write transaction is exclusive already (``BEGIN
IMMEDIATE``), so the locks are no-ops and a count inside it is exact.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ScalarResult, Select, bindparam, func, or_, select, text
from sqlalchemy.orm import Session

from services.kanban.models import Profile, Task, TaskRun
from services.kanban.planner import PlannerSettings
from services.kanban.store import Effects, creates, effects_of, events, lifecycle, runs
from services.kanban.store.creates import NewTask
from services.kanban.store.profiles import check_image
from services.kanban.vocabulary import ExecutorKind, RunStatus, TaskStatus
from services.runtime.errors import (
    Aborted,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    quote,
)

#: Advisory lock class (first key) of one profile's cap domain; the second
#: key is ``hashtext(profile)``. Two names with one hash share a lock: that
#: only serializes them, never breaks a cap.
PROFILE_LOCK_CLASS = 0x4C6F6E67  # "Long"
#: Advisory lock class of the global domain (second key 0).
GLOBAL_LOCK_CLASS = 0x4C6F6E68
#: Source of a block decided by policy at claim time.
POLICY_SOURCE = "kanban.policy"

_LOCK_PROFILES = text(
    # One round trip for any number of profiles. The keys are sorted in the
    # subquery and locked in that order (the aggregate consumes the sorted
    # rows one by one), which is the order every claimer uses.
    "SELECT count(pg_advisory_xact_lock(:cls, k)) FROM ("
    " SELECT DISTINCT hashtext(n) AS k FROM unnest(CAST(:names AS text[])) AS n ORDER BY k"
    ") AS keys"
)
# The same, entering the event gate in the same round trip (every claim
# appends events). The gate is shared and never taken exclusively, so where
# it falls among the cap locks cannot make anyone wait in a circle. It comes
# last in the select list, which PostgreSQL evaluates left to right, so a
# claim queued for its cap does not hold the gate meanwhile (a holder delays
# WatchEvents' watermark; it could never make it wrong).
_LOCK_PROFILES_AND_GATE = text(
    "SELECT (SELECT count(pg_advisory_xact_lock(:cls, k)) FROM ("
    " SELECT DISTINCT hashtext(n) AS k FROM unnest(CAST(:names AS text[])) AS n ORDER BY k"
    ") AS keys), pg_advisory_xact_lock_shared(:gate, 0)"
)


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def lock_cap_domains(session: Session, profiles: Iterable[str], *, global_cap: bool) -> None:
    """Lock the cap domains a claim is about to spend, in the one lock order.

    Call it before any row lock of the transaction and before counting
    running runs. It also enters the event gate (:func:`events.enter_gate`)
    in the same round trip, for the claim's events.

    With ``global_cap`` every claim of every replica waits on one lock: a
    global ``max_in_progress`` is one counter, so its claims are serialized
    by necessity; without it claims of different profiles never wait on
    each other.

    Args:
        session: The claiming write session.
        profiles: Profiles whose slots the transaction may spend.
        global_cap: A global ``max_in_progress`` is configured.
    """
    if not _postgres(session):
        return
    if global_cap:
        session.execute(text("SELECT pg_advisory_xact_lock(:cls, 0)"), {"cls": GLOBAL_LOCK_CLASS})
    names = sorted(set(profiles))
    if names:
        gate = events.gate_column(session) is not None  # not entered yet
        session.execute(
            _LOCK_PROFILES_AND_GATE if gate else _LOCK_PROFILES,
            {"cls": PROFILE_LOCK_CLASS, "names": names, "gate": events.EVENT_GATE_CLASS},
        )
        if gate:
            events.gate_entered(session)


def running_counts(session: Session, profiles: Iterable[str] | None = None) -> dict[str, int]:
    """Running runs per profile (only ``profiles`` when given)."""
    stmt = select(TaskRun.profile, func.count()).where(TaskRun.status == RunStatus.RUNNING)
    if profiles is not None:
        stmt = stmt.where(TaskRun.profile.in_(sorted(set(profiles))))
    return {p: int(n) for p, n in session.execute(stmt.group_by(TaskRun.profile))}


# The reads of every claim and of every poll's pre-read, built once: building a
# statement (and its cache key) costs more than running it here.
_RUNNING_TOTAL = (
    select(func.count()).select_from(TaskRun).where(TaskRun.status == RunStatus.RUNNING)
)
_RUNNING_OF = _RUNNING_TOTAL.where(TaskRun.profile == bindparam("profile"))
_READY: dict[tuple[bool, bool, bool, bool], Select[Any]] = {}


def _ready_statement(*, ids: bool, board: bool, task: bool, lock: bool) -> Select[Any]:
    """The ready tasks a claim of one profile may take, best first (one per shape)."""
    shape = (ids, board, task, lock)
    stmt = _READY.get(shape)
    if stmt is not None:
        return stmt
    # Not a task backing off after a failure (its retry is not due), nor one
    # past the profile's retry limit (the breaker blocks it).
    stmt = select(Task.task_id if ids else Task).where(
        Task.status == TaskStatus.READY,
        Task.assignee == bindparam("profile"),
        Task.failure_count < bindparam("attempts"),
        or_(Task.next_attempt_time.is_(None), Task.next_attempt_time <= bindparam("now")),
    )
    if board:
        stmt = stmt.where(Task.board_id == bindparam("board_id"))
    if task:
        stmt = stmt.where(Task.task_id == bindparam("task_id"))
    stmt = stmt.order_by(Task.priority.desc(), Task.create_time, Task.task_id)
    stmt = stmt.limit(bindparam("most"))
    if lock:
        # SKIP LOCKED: a row another replica is claiming (or editing) is
        # passed over rather than waited on; its claim re-checks the status
        # anyway, so two replicas never take one task. Ignored on SQLite.
        stmt = stmt.with_for_update(skip_locked=True)
    _READY[shape] = stmt
    return stmt


def _ready(
    session: Session,
    profile: Profile,
    board_id: str,
    now: dt.datetime,
    settings: PlannerSettings,
    *,
    ids: bool,
    lock: bool,
    most: int = 1,
    task_id: str = "",
) -> ScalarResult[Any]:
    stmt = _ready_statement(ids=ids, board=bool(board_id), task=bool(task_id), lock=lock)
    params = {
        "profile": profile.name,
        "attempts": profile.retry_max_attempts or settings.failure_limit,
        "now": now,
        "board_id": board_id,
        "task_id": task_id,
        "most": most,
    }
    return session.scalars(stmt, params)


def running_of(session: Session, profile: str) -> int:
    """Running runs of one profile."""
    return int(session.scalar(_RUNNING_OF, {"profile": profile}) or 0)


def running_total(session: Session) -> int:
    """Running runs of every profile."""
    return int(session.scalar(_RUNNING_TOTAL) or 0)


def _room(session: Session, profile: Profile, settings: PlannerSettings) -> tuple[int | None, str]:
    """Free slots of ``profile``'s cap domains (None: uncapped) and the cap that is full."""
    room: int | None = None
    cap = profile.max_in_progress or settings.max_in_progress_per_profile
    if cap:
        room = cap - running_of(session, profile.name)
        if room <= 0:
            return 0, f"profile {quote(profile.name)} is at its concurrency cap ({cap} running)"
    if settings.max_in_progress:
        free = settings.max_in_progress - running_total(session)
        if free <= 0:
            return 0, (
                f"the deployment is at its concurrency cap ({settings.max_in_progress} running)"
            )
        room = free if room is None else min(room, free)
    return room, ""


def _full(session: Session, profile: Profile, settings: PlannerSettings) -> str:
    """Which cap a claim of ``profile`` would exceed now ("" = none), as messages say it."""
    return _room(session, profile, settings)[1]


def claimable(
    session: Session,
    profile: Profile,
    board_id: str,
    now: dt.datetime,
    *,
    settings: PlannerSettings,
    most: int = 1,
    task_id: str = "",
) -> int:
    """How many tasks (at most ``most``) :func:`claim_next` might take now: a pure read.

    The same conditions as a claim (caps, status, backoff, retry limit),
    without locks: a long-polling worker asks this in a read transaction
    first, so an idle poll writes nothing and waits on no lock. The answer is
    only a hint (another replica may claim first); :func:`claim_next` decides.
    """
    if profile.executor != ExecutorKind.EXTERNAL or most <= 0:
        return 0
    room, _ = _room(session, profile, settings)
    if room is not None:
        most = min(most, room)
    if most <= 0:
        return 0
    found = _ready(
        session, profile, board_id, now, settings, ids=True, lock=False, most=most, task_id=task_id
    )
    return len(found.all())


def next_backoff_end(
    session: Session, profile: str, board_id: str, now: dt.datetime
) -> dt.datetime | None:
    """When the earliest retry backoff of ``profile``'s ready tasks ends (None: none backs off)."""
    stmt = select(func.min(Task.next_attempt_time)).where(
        Task.status == TaskStatus.READY,
        Task.assignee == profile,
        Task.next_attempt_time > now,
    )
    if board_id:
        stmt = stmt.where(Task.board_id == board_id)
    return session.scalar(stmt)


def claim_next(
    session: Session,
    profile: Profile,
    *,
    worker_id: str,
    board_id: str,
    holder: str,
    settings: PlannerSettings,
    lease_seconds: float,
    now: dt.datetime,
    task_id: str = "",
) -> tuple[Task, TaskRun] | None:
    """Claim the next ready task of ``profile`` for an external worker.

    Locks the profile's cap domain (and the global one when configured),
    counts under it, takes the best ready task row, re-checks the image
    policy and claims it with a compare-and-set.

    Args:
        session: The claim's write session (nothing locked yet).
        profile: The profile claimed from.
        worker_id: The worker, recorded on the run.
        board_id: Only this board's tasks ("" = any).
        holder: The principal that will own the run.
        task_id: Only this task ("" = the best ready one).
        settings: The dispatcher's caps and failure limit.
        lease_seconds: The run's first lease.
        now: "Now" for backoffs (the dispatcher's clock).

    Returns:
        The task and its new run, or None when there is nothing to claim.
    """
    lock_cap_domains(session, [profile.name], global_cap=bool(settings.max_in_progress))
    if _full(session, profile, settings):
        return None
    task = _ready(
        session, profile, board_id, now, settings, ids=False, lock=True, task_id=task_id
    ).first()
    if task is None:
        return None
    try:
        # Checked again at claim: the profile's images may have changed
        # since the task was written. A refusal is for good: block it.
        check_image(profile, task.image)
    except PermissionDenied as exc:
        lifecycle.set_status(
            session,
            task,
            TaskStatus.BLOCKED,
            reason=exc.message,
            source=POLICY_SOURCE,
            effects=effects_of(session),
        )
        return None
    run = runs.claim(
        session,
        task,
        profile=profile.name,
        worker_id=worker_id,
        executor_instance="",
        lease_seconds=lease_seconds,
        source=f"worker:{worker_id}",
        holder=holder,
    )
    return (task, run) if run is not None else None


def claim_new(
    session: Session,
    profile: Profile,
    item: NewTask,
    *,
    worker_id: str,
    holder: str,
    settings: PlannerSettings,
    lease_seconds: float,
) -> tuple[Task, TaskRun]:
    """Create a ready task of ``profile`` and claim it for an external worker, at once.

    Both happen in the caller's transaction, under the same cap-domain locks
    as :func:`claim_next`: the task is never ready outside it, so no other
    worker can take it, and the dispatcher is not woken for it (it has
    nothing to dispatch).

    Args:
        session: The claim's write session (nothing locked yet).
        profile: The external profile the task is for (its ``assignee``).
        item: The create: its values name ``profile`` as assignee, status READY.
        worker_id: The worker, recorded on the run.
        holder: The principal that will own the run.
        settings: The dispatcher's caps.
        lease_seconds: The run's first lease.

    Raises:
        ResourceExhausted: The profile or the deployment is at its cap;
            nothing is written.
        ServiceError: The create's own refusal, as CreateTask gives it
            (InvalidArgument, NotFound for the board, PermissionDenied for
            an image the profile does not allow).
    """
    lock_cap_domains(session, [profile.name], global_cap=bool(settings.max_in_progress))
    if full := _full(session, profile, settings):
        raise ResourceExhausted(full)
    source = f"worker:{worker_id}"
    # A scratch Effects: the create's wake is for a task the claim below takes.
    (made,) = creates.create_many(session, [item], source=source, effects=Effects())
    if isinstance(made, ServiceError):
        raise made
    run = runs.claim(
        session,
        made.task,
        profile=profile.name,
        worker_id=worker_id,
        executor_instance="",
        lease_seconds=lease_seconds,
        source=source,
        holder=holder,
    )
    if run is None:  # only a concurrent writer of a row this transaction made could
        raise Aborted(f"task {quote(made.task.task_id)} changed under its claim; retry")
    return made.task, run
