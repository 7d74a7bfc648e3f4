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
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

import grpc
from longshore.kanban.v1 import worker_service_pb2 as pb
from longshore.kanban.v1 import worker_service_pb2_grpc as pb_grpc
from longshore.sandbox.v1 import sandbox_pb2
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.kanban import convert, limits, models
from services.kanban.db import Database
from services.kanban.events_bus import EventBus
from services.kanban.executor_types import merge_spec
from services.kanban.planner import FailureClass
from services.kanban.settings import DispatchLimits, KanbanSection
from services.kanban.store import Effects, claims, events, failures, links, profiles, runs
from services.kanban.tick import Dispatcher
from services.runtime.callers import DISPATCHER, Caller, caller
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
POLL_SLICE_SECONDS = 1.0


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
    ) -> None:
        self._db = db
        self._bus = bus
        self._dispatcher = dispatcher
        self._section = section
        self._limits = limits
        self._tokens = tokens
        self._deployment = deployment

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

    def _held(self, s: Session, run_id: str, context: grpc.ServicerContext) -> models.TaskRun:
        """The run, if the caller holds it (one primary-key read)."""
        run = runs.get_run(s, run_id)
        check_holder(run, caller(context))
        return run

    def _try_claim(
        self, s: Session, profile: models.Profile, worker_id: str, board_id: str, holder: str
    ) -> tuple[models.Task, models.TaskRun] | None:
        return claims.claim_next(
            s,
            profile,
            worker_id=worker_id,
            board_id=board_id,
            holder=holder,
            settings=self._limits.planner,
            lease_seconds=self._section.claim_ttl_seconds,
            now=self._dispatcher.now(),
        )

    def ClaimTask(
        self, request: pb.ClaimTaskRequest, context: grpc.ServicerContext
    ) -> pb.ClaimTaskResponse:
        if not request.profile:
            raise InvalidArgument("profile: required")
        if not request.worker_id:
            raise InvalidArgument("worker_id: required")
        wait = min(convert.seconds_of(request.wait, "wait"), MAX_WAIT_SECONDS)
        deadline = time.monotonic() + wait
        while True:
            version = self._bus.version
            with self._db.write() as s:
                profile = profiles.get(s, request.profile)
                if profile.executor != models.EXECUTOR_EXTERNAL:
                    raise FailedPrecondition(
                        f"profile {request.profile!r} has executor {profile.executor}, not external"
                    )
                if request.board_id and s.get(models.Board, request.board_id) is None:
                    raise NotFound(f"board {request.board_id!r} not found")
                claimed = self._try_claim(
                    s, profile, request.worker_id, request.board_id, caller(context).principal
                )
                if claimed is not None:
                    task, run = claimed
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
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not context.is_active() or self._bus.closed:
                return pb.ClaimTaskResponse()
            self._bus.wait(version, min(remaining, POLL_SLICE_SECONDS))

    def _refuse(self, run_id: str) -> None:
        """Raise NotFound or FailedPrecondition for a run that did not renew."""
        with self._db.read() as s:
            run = runs.get_run(s, run_id)
            status = run.status
        with self._db.write() as s:
            run = runs.get_run(s, run_id)
            if not events.has_event(s, run_id=run_id, kind="heartbeat_refused"):
                task = s.get(models.Task, run.task_id)
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
                columns = s.execute(
                    select(models.Task.image, models.Task.env, models.Profile.sandbox_spec)
                    .join(models.Profile, models.Profile.name == run.profile)
                    .where(models.Task.task_id == run.task_id)
                ).one_or_none()
                if columns is not None:
                    spec = _spec_of(columns.sandbox_spec, columns.image, columns.env)
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
            self._held(s, request.run_id, context)
            run, _task = runs.fenced(s, request.run_id, lock=True)
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
            self._held(s, request.run_id, context)
            run, task = runs.fenced(s, request.run_id, lock=True)
            outcome = failures.fail(
                s,
                run,
                task,
                status=models.RUN_FAILED,
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
