"""WorkerService servicer: external workers claim, heartbeat, stream and finish runs.

ClaimTask is a compare-and-set inside an exclusive write transaction, after
counting the profile's and the global running runs, so caps are exact even
with several kanban replicas on one PostgreSQL. Every later call is fenced by
``run_id``: a stale one changes nothing and is FAILED_PRECONDITION.

A run belongs to its holder, the principal (API key name) that claimed it:
every later call checks the holder first (another principal's run, or a run
the dispatcher executes, is PERMISSION_DENIED; an unknown run stays
NOT_FOUND), then staleness. ClaimTask and Heartbeat hand the holder a sandbox
token (see :mod:`services.runtime.sandbox_tokens`) for the run's sandbox spec.

ClaimTask is a coroutine: an attempt is a read (is anything claimable?) and,
only then, the write transaction, both in the handler pool; between attempts
the poll waits in its lane (:mod:`services.kanban.claim_lanes`) holding no
thread, and is woken only when a commit may have given its profile work.
With ``create`` it makes its own task and claims it in the same write
(:func:`~services.kanban.store.claims.claim_new`): nothing to wait for.
Every other method is blocking and runs whole in the pool.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from typing import Any

import grpc
from grpc import aio
from longshore.kanban.v1 import task_pb2
from longshore.kanban.v1 import worker_service_pb2 as pb
from longshore.kanban.v1 import worker_service_pb2_grpc as pb_grpc
from longshore.sandbox.v1 import sandbox_pb2
from sqlalchemy.orm import Session

from services.kanban import convert, limits, models
from services.kanban.claim_lanes import ClaimLanes
from services.kanban.db import Database
from services.kanban.events_bus import EventBus
from services.kanban.executor_types import merge_spec
from services.kanban.handler_pool import HandlerPool
from services.kanban.metrics import KanbanMetrics
from services.kanban.planner import FailureClass
from services.kanban.settings import DispatchLimits, KanbanSection
from services.kanban.store import Effects, claims, events, failures, keys, links, profiles, runs
from services.kanban.store.creates import NewTask
from services.kanban.tick import Dispatcher
from services.kanban.vocabulary import ExecutorKind, RunStatus, TaskStatus
from services.runtime.callers import DISPATCHER, Caller, caller, caller_from_metadata
from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.runtime.sandbox_tokens import SandboxGrant, SandboxTokens, spec_digest

MAX_WAIT_SECONDS = 60.0
#: Event source of a task blocked at claim by the profile's policy.
POLICY_SOURCE = "kanban.policy"


def _aware(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC (SQLite returns stored times without their zone)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def check_holder(run: models.TaskRun, who: Caller) -> None:
    """Refuse a WorkerService call on a run ``who`` does not hold.

    Raises:
        PermissionDenied: The dispatcher executes the run (holder
            ``dispatcher``, or ``executor_instance`` set on rows older than
            holders), or another principal holds it.
    """
    if run.holder == DISPATCHER or (not run.holder and run.executor_instance):
        raise PermissionDenied(
            f"run {run.run_id!r} is executed by the dispatcher; WorkerService cannot change it"
        )
    # No holder and no executor: claimed before holders were recorded, or by
    # a peer service directly; there is no principal to compare with. A peer
    # service (no principal) is trusted like an operator.
    if not run.holder or who.is_service or who.principal == run.holder:
        return
    raise PermissionDenied(
        f"run {run.run_id!r} is held by key {run.holder!r}, not by {who.describe()}"
    )


def run_spec(task: models.Task, profile: models.Profile) -> sandbox_pb2.SandboxSpec:
    """The run's sandbox spec with env values: what its holder passes to AcquireSandbox.

    The holder of a live run is trusted with its task's and profile's env
    values: they are inside the run's sandbox anyway, where any exec can
    print them. Every other read of a profile or task shows them redacted.
    """
    return _spec_of(profile.sandbox_spec, task.image, task.env)


def _spec_of(
    profile_spec: Mapping[str, Any] | None, image: str, env: Mapping[str, str] | None
) -> sandbox_pb2.SandboxSpec:
    """:func:`merge_spec` (the dispatcher's merge) over the stored columns."""
    return merge_spec(convert.spec_proto(profile_spec or {}), image=image, env=dict(env or {}))


@limits.enforced(pb.DESCRIPTOR.services_by_name["WorkerService"])
class WorkerServicer(pb_grpc.WorkerServiceServicer):
    """Implements ``longshore.kanban.v1.WorkerService``.

    Args:
        db: The database.
        bus: Rings when the event log may have grown (a task may be claimable).
        dispatcher: Applies post-commit effects.
        section: The `kanban` settings (lease, output cap).
        limits: Interpreted caps.
        tokens: Mints sandbox tokens; None when the deployment has no internal
            credential (then the sandbox manager checks no tokens either and
            ClaimTask returns none).
        deployment: The deployment the tokens name.
        pool: Runs the blocking work (every transaction) off the loop.
    """

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        dispatcher: Dispatcher,
        *,
        section: KanbanSection,
        limits: DispatchLimits,
        tokens: SandboxTokens | None,
        deployment: str,
        pool: HandlerPool,
        metrics: KanbanMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._db = db
        self._bus = bus
        self._dispatcher = dispatcher
        self._section = section
        self._limits = limits
        self._tokens = tokens
        self._deployment = deployment
        self._pool = pool

        async def lane_count(profile: str, board_id: str, most: int) -> tuple[int, float | None]:
            return await pool.run(self._lane_count, profile, board_id, most)

        self._lanes = ClaimLanes(
            bus,
            lane_count,
            recheck_seconds=bus.idle_seconds,
            global_cap=limits.planner.max_in_progress is not None,
        )

    def _token(
        self,
        run: models.TaskRun,
        spec: sandbox_pb2.SandboxSpec,
        expires: dt.datetime | None,
    ) -> tuple[str, dt.datetime | None]:
        """A sandbox token for ``run``'s spec, valid as long as its lease."""
        if self._tokens is None or expires is None:
            return "", None
        grant = SandboxGrant(
            deployment=self._deployment,
            task_id=run.task_id,
            profile=run.profile,
            run_id=run.run_id,
            spec_digest=spec_digest(spec),
            expires=expires.timestamp(),
            holder=run.holder,
        )
        return self._tokens.mint(grant), expires

    def _held(
        self, s: Session, run_id: str, context: grpc.ServicerContext, *, lock: bool = False
    ) -> models.TaskRun:
        """The run, if the caller holds it (one primary-key read, ``FOR UPDATE`` with ``lock``)."""
        run = runs.get_run(s, run_id, lock=lock)
        check_holder(run, caller(context))
        return run

    def _try_claim(
        self, s: Session, profile: models.Profile, request: pb.ClaimTaskRequest, holder: str
    ) -> tuple[models.Task, models.TaskRun] | None:
        return claims.claim_next(
            s,
            profile,
            worker_id=request.worker_id,
            board_id=request.board_id,
            task_id=request.task_id,
            holder=holder,
            settings=self._limits.planner,
            lease_seconds=self._section.claim_ttl_seconds,
            now=self._dispatcher.now(),
        )

    def _claimable(
        self, s: Session, profile: models.Profile, board_id: str, most: int, task_id: str = ""
    ) -> int:
        """How many tasks (at most ``most``) a claim of ``profile`` could take now: a read."""
        return claims.claimable(
            s,
            profile,
            board_id,
            self._dispatcher.now(),
            settings=self._limits.planner,
            most=most,
            task_id=task_id,
        )

    def _claim_profile(
        self, s: Session, request: pb.ClaimTaskRequest, *, board: bool = True
    ) -> models.Profile:
        """The poll's profile, if it may be claimed for (and, with ``board``, its board exists)."""
        profile = profiles.get(s, request.profile)
        if profile.executor != ExecutorKind.EXTERNAL:
            raise FailedPrecondition(
                f"profile {request.profile!r} has executor {profile.executor}, not external"
            )
        if board and request.board_id and keys.by_key(s, models.Board, request.board_id) is None:
            raise NotFound(f"board {request.board_id!r} not found")
        return profile

    def _attempt(self, request: pb.ClaimTaskRequest, holder: str) -> pb.ClaimTaskResponse | None:
        """One claim attempt (in the pool): a read, then a write only if there is work."""
        with self._db.read() as s:
            profile = self._claim_profile(s, request)
            if not self._claimable(s, profile, request.board_id, 1, request.task_id):
                return None
        with self._db.write() as s:
            profile = self._claim_profile(s, request)
            claimed = self._try_claim(s, profile, request, holder)
            if claimed is None:
                return None
            return self._claimed(s, *claimed, profile)

    def _claimed(
        self,
        s: Session,
        task: models.Task,
        run: models.TaskRun,
        profile: models.Profile,
        *,
        parents: list[str] | None = None,
    ) -> pb.ClaimTaskResponse:
        """The answer to a claim that took ``task`` (inside its write); ``parents`` if known."""
        if parents is None:
            parents = links.parent_ids(s, [task.task_id])[task.task_id]
        spec = run_spec(task, profile)
        token, token_expires = self._token(run, spec, run.lease_expire_time)
        return pb.ClaimTaskResponse(
            task=convert.task(task, parents),
            run_id=run.run_id,
            lease_expire_time=convert.timestamp(run.lease_expire_time),
            profile=convert.profile(profile),
            sandbox_token=token,
            sandbox_token_expire_time=convert.timestamp(token_expires),
            sandbox_spec=spec,
        )

    def _claim_new(
        self, request: pb.ClaimTaskRequest, who: Caller, wait: float
    ) -> pb.ClaimTaskResponse:
        """ClaimTask with ``create`` (in the pool): the task is made and claimed in one write."""
        if not (who.is_operator or "write" in who.scopes):
            raise PermissionDenied(
                f"create: {who.describe()} lacks the 'write' scope creating a task needs"
            )
        if wait or request.task_id:
            raise InvalidArgument("create: wait and task_id must be unset with it")
        new = request.create
        if new.assignee and new.assignee != request.profile:
            raise InvalidArgument(f"create.assignee: must be empty or {request.profile!r}")
        if new.status not in (task_pb2.TASK_STATUS_UNSPECIFIED, task_pb2.TASK_STATUS_READY):
            raise InvalidArgument("create.status: must be unset or TASK_STATUS_READY")
        if request.board_id and new.board_id not in ("", request.board_id):
            raise InvalidArgument(f"create.board_id: must be empty or {request.board_id!r}")
        values = convert.new_task_values(new)
        values.update(
            assignee=request.profile,
            status=TaskStatus.READY,
            board_id=new.board_id or request.board_id or models.DEFAULT_BOARD,
        )
        with self._db.write() as s:
            # The create checks the board (one read for it and the rest).
            profile = self._claim_profile(s, request, board=False)
            task, run = claims.claim_new(
                s,
                profile,
                NewTask(values=values),
                worker_id=request.worker_id,
                holder=who.principal,
                settings=self._limits.planner,
                lease_seconds=self._section.claim_ttl_seconds,
            )
            claimed = self._claimed(s, task, run, profile, parents=[])
        if self._metrics is not None:
            self._metrics.claim(request.profile, claimed=True)
        return claimed

    def _lane_count(self, profile_name: str, board_id: str, most: int) -> tuple[int, float | None]:
        """A lane's claimability read (in the pool); see :mod:`services.kanban.claim_lanes`.

        Returns:
            How many of ``most`` polls may claim now, and in how many seconds
            the earliest backoff of the lane's tasks ends (None: none backs off).
        """
        with self._db.read() as s:
            profile = keys.by_key(s, models.Profile, profile_name)
            if (
                profile is None
                or profile.executor != ExecutorKind.EXTERNAL
                or (board_id and keys.by_key(s, models.Board, board_id) is None)
            ):
                # Deleted or changed under the polls: wake them all, each
                # attempt then answers with the precise error.
                return most, None
            now = self._dispatcher.now()
            due = claims.next_backoff_end(s, profile.name, board_id, now)
            due_in = None if due is None else (_aware(due) - now).total_seconds()
            return self._claimable(s, profile, board_id, most), due_in

    async def ClaimTask(
        self, request: pb.ClaimTaskRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ClaimTaskResponse:
        if not request.profile:
            raise InvalidArgument("profile: required")
        if not request.worker_id:
            raise InvalidArgument("worker_id: required")
        wait = min(convert.seconds_of(request.wait, "wait"), MAX_WAIT_SECONDS)
        who = caller_from_metadata(context.invocation_metadata())
        if request.HasField("create"):
            return await self._pool.run(self._claim_new, request, who, wait)
        holder = who.principal
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        # A poll whose lane knows there is nothing for it waits without an
        # attempt of its own (see ClaimLanes.joinable); so does one that
        # timed out while its lane still knows it.
        seen = self._joinable(request, wait)
        while True:
            if seen is None:
                # Read before the attempt: a ring while the attempt runs (the
                # poll out of its lane) makes the next wait return at once.
                seen = self._lanes.rings_of(request.profile)
                claimed = await self._pool.run(self._attempt, request, holder)
                if claimed is not None:
                    if self._metrics is not None:
                        self._metrics.claim(request.profile, claimed=True)
                    return claimed
            remaining = deadline - loop.time()
            if remaining <= 0 or self._bus.closed:
                if self._metrics is not None:
                    self._metrics.claim(request.profile, claimed=False)
                return pb.ClaimTaskResponse()
            # Waiting holds no thread and no transaction; a client that goes
            # away cancels this await, and the poll leaves its lane.
            woken = await self._lanes.wait(request.profile, request.board_id, remaining, seen=seen)
            seen = None if woken else self._joinable(request, wait)

    def _joinable(self, request: pb.ClaimTaskRequest, wait: float) -> tuple[int, int] | None:
        """:meth:`ClaimLanes.joinable` for a long poll of any task of its lane, else None."""
        if wait <= 0 or request.task_id:
            return None
        return self._lanes.joinable(request.profile, request.board_id)

    def _refuse(self, run_id: str) -> None:
        """Raise NotFound or FailedPrecondition for a run that did not renew."""
        with self._db.read() as s:
            run = runs.get_run(s, run_id)
            status = run.status
        with self._db.write() as s:
            run = runs.get_run(s, run_id)
            if not events.has_event(s, run_id=run_id, kind="heartbeat_refused"):
                task = keys.by_key(s, models.Task, run.task_id)
                events.append(
                    s,
                    task_id=run.task_id,
                    board_id=task.board_id if task is not None else "",
                    kind="heartbeat_refused",
                    source=f"worker:{run.worker_id}",
                    payload={"status": status},
                    run_id=run_id,
                )
        raise FailedPrecondition(f"run {run_id!r} is stale: {status}")

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatResponse:
        if not request.run_id:
            raise InvalidArgument("run_id: required")
        token, token_expires = "", None
        with self._db.write() as s:
            # The holder never changes once claimed, so reading it before the
            # compare-and-set (not under a row lock) is safe.
            run = self._held(s, request.run_id, context)
            expire = runs.heartbeat(
                s, request.run_id, lease_seconds=self._section.claim_ttl_seconds
            )
            if expire is not None and self._tokens is not None:
                # Three columns in one indexed join, not two whole rows: this
                # runs on every heartbeat of every worker.
                columns = runs.spec_columns(s, run)
                if columns is not None:
                    spec = _spec_of(*columns)
                    token, token_expires = self._token(run, spec, expire)
        if expire is None:
            self._refuse(request.run_id)
        return pb.HeartbeatResponse(
            lease_expire_time=convert.timestamp(expire),
            sandbox_token=token,
            sandbox_token_expire_time=convert.timestamp(token_expires),
        )

    def AppendOutput(
        self, request: pb.AppendOutputRequest, context: grpc.ServicerContext
    ) -> pb.AppendOutputResponse:
        with self._db.write() as s:
            self._held(s, request.run_id, context)
            run = runs.append_output(
                s, request.run_id, request.data, max_bytes=self._section.run_output_max_bytes
            )
            return pb.AppendOutputResponse(
                output_bytes=run.output_bytes, truncated=run.output_truncated
            )

    def CompleteTask(
        self, request: pb.CompleteTaskRequest, context: grpc.ServicerContext
    ) -> pb.CompleteTaskResponse:
        effects = Effects()
        with self._db.write() as s:
            # Locked here already: complete() fences it without reading it again.
            run = self._held(s, request.run_id, context, lock=True)
            task = runs.complete(
                s,
                request.run_id,
                summary=request.summary,
                source=f"worker:{run.worker_id}",
                effects=effects,
            )
            msg = convert.task(task, links.parent_ids(s, [task.task_id])[task.task_id])
        self._dispatcher.apply_effects(effects)
        return pb.CompleteTaskResponse(task=msg)

    def FailTask(
        self, request: pb.FailTaskRequest, context: grpc.ServicerContext
    ) -> pb.FailTaskResponse:
        if not request.error.strip():
            raise InvalidArgument("error: required")
        effects = Effects()
        with self._db.write() as s:
            self._held(s, request.run_id, context, lock=True)
            run, task = runs.fenced(s, request.run_id, lock=True)
            outcome = failures.fail(
                s,
                run,
                task,
                status=RunStatus.FAILED,
                error=request.error,
                retryable=request.retryable,
                settings=self._limits.planner,
                source=f"worker:{run.worker_id}",
                effects=effects,
                exit_code=request.exit_code or None,
                failure_class=FailureClass.PLATFORM if request.platform else FailureClass.WORK,
                now=self._dispatcher.now(),
            )
            msg = convert.task(outcome.task, links.parent_ids(s, [task.task_id])[task.task_id])
        self._dispatcher.apply_effects(effects)
        return pb.FailTaskResponse(task=msg, blocked=outcome.blocked)
