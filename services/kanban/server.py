"""KanbanService servicer: protos in, store calls in one transaction, protos out.

Each handler owns its transaction (``with db.write()`` or ``db.read()``);
rules live in :mod:`services.kanban.store`. What must follow a commit
(killing a cancelled run's exec, releasing a sandbox, waking the dispatcher)
comes back as :class:`~services.kanban.store.Effects` and goes to the
dispatcher once the transaction has committed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio
from longshore.kanban.v1 import event_pb2, task_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import kanban_service_pb2_grpc as pb_grpc
from longshore.sandbox.v1 import sandbox_pb2
from sqlalchemy.orm import Session

from services.kanban import commits, convert, limits, models, secrets
from services.kanban.create_batches import CreateBatcher
from services.kanban.db import Database
from services.kanban.events_bus import EventBus
from services.kanban.handler_pool import HandlerPool
from services.kanban.latest_plan import LatestPlan
from services.kanban.server_lists import ListReads
from services.kanban.server_runs import RunReads
from services.kanban.spec_checks import SpecChecks
from services.kanban.store import Effects, boards, comments, events, links, profiles, tasks
from services.kanban.store.creates import NewTask
from services.kanban.tick import Dispatcher
from services.kanban.warm_pools import WarmPools
from services.runtime.errors import InvalidArgument, quote

SOURCE = "api"
WATCH_BATCH = 500


@limits.enforced(pb.DESCRIPTOR.services_by_name["KanbanService"])
class KanbanServicer(ListReads, RunReads, pb_grpc.KanbanServiceServicer):
    """Implements ``longshore.kanban.v1.KanbanService``.

    Every request is checked against :mod:`services.kanban.limits` before its
    handler runs; the List calls live in :mod:`services.kanban.server_lists`.

    Args:
        db: The database.
        bus: Rings when the event log may have grown.
        dispatcher: Plans readiness, runs ticks, applies post-commit effects.
        spec_checks: Validates profiles' sandbox specs on the sandbox manager.
        pool: Runs the blocking work (every transaction) off the loop; the
            unary handlers below are blocking and run there whole (see
            :mod:`services.kanban.handler_pool`), the streams are coroutines.
    """

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        dispatcher: Dispatcher,
        *,
        spec_checks: SpecChecks,
        pool: HandlerPool,
        warm_pools: WarmPools,
    ) -> None:
        self._db = db
        self._pool = pool
        # Readiness answers come from the latest plan, built at most once
        # per state of what it plans from (not once per read).
        self._plans = LatestPlan(dispatcher, lambda: bus.generation)
        self._bus = bus
        self._dispatcher = dispatcher
        self._spec_checks = spec_checks
        self._warm_pools = warm_pools
        #: The group commit CreateTask writes through (see its module).
        self.creates = CreateBatcher(db, source=SOURCE, after=self._after)

    def _after(self, effects: Effects) -> None:
        self._dispatcher.apply_effects(effects)

    # -- boards ---------------------------------------------------------

    def CreateBoard(
        self, request: pb.CreateBoardRequest, context: grpc.ServicerContext
    ) -> pb.CreateBoardResponse:
        b = request.board
        with self._db.write() as s:
            row = boards.create(
                s, board_id=b.board_id, display_name=b.display_name, description=b.description
            )
            return pb.CreateBoardResponse(board=convert.board(row, {}))

    def GetBoard(
        self, request: pb.GetBoardRequest, context: grpc.ServicerContext
    ) -> pb.GetBoardResponse:
        with self._db.read() as s:
            row = boards.get(s, request.board_id)
            counts = boards.task_counts(s, [row.board_id])
            return pb.GetBoardResponse(board=convert.board(row, counts[row.board_id]))

    def DeleteBoard(
        self, request: pb.DeleteBoardRequest, context: grpc.ServicerContext
    ) -> pb.DeleteBoardResponse:
        effects = Effects()
        with self._db.write() as s:
            for task_id in boards.delete_board(s, request.board_id, force=request.force):
                tasks.delete_task(s, task_id, source=SOURCE, effects=effects)
            boards.remove(s, request.board_id)
        self._after(effects)
        return pb.DeleteBoardResponse()

    # -- profiles -------------------------------------------------------

    def CreateProfile(
        self, request: pb.CreateProfileRequest, context: grpc.ServicerContext
    ) -> pb.CreateProfileResponse:
        values = convert.profile_values(request.profile)
        profiles.validate(values)
        spec = request.profile.sandbox_spec
        secrets.merge({}, spec.env, "sandbox_spec.env")  # `<redacted>` is no value on create
        # Before the write transaction: no call to the sandbox manager inside one.
        self._check_spec(spec, values["allowed_images"])
        name = request.profile.name
        size = values["warm_pool_size"]
        if size:
            with self._db.read() as s:
                profiles.require_absent(s, name)
        with (
            self._warm_pools.around_write(name, size, values["executor"], spec, size > 0),
            self._db.write() as s,
        ):
            row = profiles.create(s, name=name, **values)
            return pb.CreateProfileResponse(profile=convert.profile(row))

    def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.ServicerContext
    ) -> pb.GetProfileResponse:
        with self._db.read() as s:
            return pb.GetProfileResponse(profile=convert.profile(profiles.get(s, request.name)))

    def UpdateProfile(
        self, request: pb.UpdateProfileRequest, context: grpc.ServicerContext
    ) -> pb.UpdateProfileResponse:
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgument("update_mask: name at least one field")
        allowed = {
            "executor",
            "sandbox_spec",
            "max_in_progress",
            "keep_sandbox",
            "default_max_runtime",
            "description",
            "retry_policy",
            "allowed_images",
            "warm_pool_size",
        }
        bad = [p for p in paths if p not in allowed]
        if bad:
            raise InvalidArgument(f"update_mask: {quote(bad[0])} is unknown or immutable")
        values = convert.profile_values(request.profile, paths)
        profiles.validate(values)
        name = request.profile.name
        with self._db.read() as s:
            stored = profiles.get(s, name)
            spec_json = values.get("sandbox_spec", stored.sandbox_spec or {})
            # Checked with the stored values of `<redacted>` env entries;
            # profiles.update merges again inside its transaction.
            merged = convert.spec_proto(profiles.merged_spec(stored.sandbox_spec, spec_json))
            images = values.get("allowed_images", list(stored.allowed_images or []))
            size = values.get("warm_pool_size", stored.warm_pool_size)
            executor = values.get("executor", stored.executor)
            # The pool changes with its spec, size or executor, if there is one.
            pooled = stored.warm_pool_size > 0 or size > 0
        if "sandbox_spec" in values or "allowed_images" in values:
            self._check_spec(merged, images)
        touched = pooled and bool({"sandbox_spec", "warm_pool_size", "executor"} & set(values))
        with (
            self._warm_pools.around_write(name, size, executor, merged, touched),
            self._db.write() as s,
        ):
            row = profiles.update(s, name, values)
            # No event, yet its polls may have work now (a cap raised, an
            # executor changed): wake them here and on every replica.
            commits.note_profile(s, name)
            msg = convert.profile(row)
        self._dispatcher.wake()
        return pb.UpdateProfileResponse(profile=msg)

    def _check_spec(self, spec: sandbox_pb2.SandboxSpec, allowed_images: list[str]) -> None:
        """Ask the sandbox manager whether ``spec`` is admissible (an empty spec asks nothing).

        A profile without a spec (a worker profile that brings its own
        sandbox, or none) has nothing for the manager to judge, and must not
        depend on the manager being up.
        """
        if spec != sandbox_pb2.SandboxSpec():
            self._spec_checks.check(spec, allowed_images)

    def DeleteProfile(
        self, request: pb.DeleteProfileRequest, context: grpc.ServicerContext
    ) -> pb.DeleteProfileResponse:
        with self._db.write() as s:
            pooled = profiles.get(s, request.name).warm_pool_size > 0
            profiles.delete(s, request.name)
            commits.note_profile(s, request.name)  # its polls answer NOT_FOUND now
        if pooled:
            # After the commit, best effort: the reconcile drains it if this fails.
            self._warm_pools.resync(request.name)
        return pb.DeleteProfileResponse()

    # -- tasks ----------------------------------------------------------

    def CreateTask(
        self, request: pb.CreateTaskRequest, context: grpc.ServicerContext
    ) -> pb.CreateTaskResponse:
        values = convert.new_task_values(request.task)
        # Written together with the creates arriving meanwhile (one
        # transaction, one answer each): see services.kanban.create_batches.
        made = self.creates.create(
            NewTask(values=values, parents=list(request.parent_ids), request_id=request.request_id)
        )
        # Converted after the commit: the row stays loaded (expire_on_commit
        # is off), and no lock is held for work that needs none.
        msg = convert.task(made.task, made.parent_ids)
        dedup = made.deduplicated
        return pb.CreateTaskResponse(task=msg, deduplicated=dedup)

    def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.ServicerContext
    ) -> pb.GetTaskResponse:
        with self._db.read() as s:
            row = tasks.get(s, request.task_id)
            parents = links.parent_ids(s, [row.task_id])[row.task_id]
            readiness = self._plans.readiness(s, [row])[row.task_id].to_proto()
            return pb.GetTaskResponse(task=convert.task(row, parents, readiness))

    def UpdateTask(
        self, request: pb.UpdateTaskRequest, context: grpc.ServicerContext
    ) -> pb.UpdateTaskResponse:
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgument("update_mask: name at least one field")
        values = convert.task_values(request.task, paths)
        if "env" in values:
            secrets.check_names(values["env"], "task.env")
        with self._db.write() as s:
            if "image" in values:
                current = tasks.get(s, request.task.task_id)
                profiles.check_task_image(s, current.assignee, values["image"])
            row = tasks.update(s, request.task.task_id, values, source=SOURCE)
            parents = links.parent_ids(s, [row.task_id])[row.task_id]
            return pb.UpdateTaskResponse(task=convert.task(row, parents))

    def DeleteTask(
        self, request: pb.DeleteTaskRequest, context: grpc.ServicerContext
    ) -> pb.DeleteTaskResponse:
        effects = Effects()
        with self._db.write() as s:
            tasks.delete_task(s, request.task_id, source=SOURCE, effects=effects)
        self._after(effects)
        return pb.DeleteTaskResponse()

    def _changed(self, s: Session, row: models.Task) -> task_pb2.Task:
        return convert.task(row, links.parent_ids(s, [row.task_id])[row.task_id])

    def _change_task(self, change: Callable[[Session, Effects], models.Task]) -> task_pb2.Task:
        """Applies one task change in a write transaction, then its post-commit effects."""
        effects = Effects()
        with self._db.write() as s:
            msg = self._changed(s, change(s, effects))
        self._after(effects)
        return msg

    def MoveTask(
        self, request: pb.MoveTaskRequest, context: grpc.ServicerContext
    ) -> pb.MoveTaskResponse:
        status = convert.task_status_name(request.status)
        msg = self._change_task(
            lambda s, effects: tasks.move(
                s, request.task_id, status, reason=request.reason, source=SOURCE, effects=effects
            )
        )
        return pb.MoveTaskResponse(task=msg)

    def AssignTask(
        self, request: pb.AssignTaskRequest, context: grpc.ServicerContext
    ) -> pb.AssignTaskResponse:

        def assign(s: Session, effects: Effects) -> models.Task:
            # The image was checked against the old assignee (or not at all
            # while unassigned); the new one must allow it too.
            profiles.check_task_image(s, request.assignee, tasks.get(s, request.task_id).image)
            return tasks.assign(
                s, request.task_id, request.assignee, source=SOURCE, effects=effects
            )

        msg = self._change_task(assign)
        return pb.AssignTaskResponse(task=msg)

    def BlockTask(
        self, request: pb.BlockTaskRequest, context: grpc.ServicerContext
    ) -> pb.BlockTaskResponse:
        msg = self._change_task(
            lambda s, effects: tasks.block(
                s, request.task_id, request.reason, source=SOURCE, effects=effects
            )
        )
        return pb.BlockTaskResponse(task=msg)

    def UnblockTask(
        self, request: pb.UnblockTaskRequest, context: grpc.ServicerContext
    ) -> pb.UnblockTaskResponse:
        msg = self._change_task(
            lambda s, effects: tasks.unblock(
                s, request.task_id, request.reason, source=SOURCE, effects=effects
            )
        )
        return pb.UnblockTaskResponse(task=msg)

    def LinkTasks(
        self, request: pb.LinkTasksRequest, context: grpc.ServicerContext
    ) -> pb.LinkTasksResponse:
        msg = self._change_task(
            lambda s, effects: links.link(
                s, request.parent_id, request.child_id, source=SOURCE, effects=effects
            )
        )
        return pb.LinkTasksResponse(child=msg)

    def UnlinkTasks(
        self, request: pb.UnlinkTasksRequest, context: grpc.ServicerContext
    ) -> pb.UnlinkTasksResponse:
        msg = self._change_task(
            lambda s, effects: links.unlink(
                s, request.parent_id, request.child_id, source=SOURCE, effects=effects
            )
        )
        return pb.UnlinkTasksResponse(child=msg)

    def ExplainTask(
        self, request: pb.ExplainTaskRequest, context: grpc.ServicerContext
    ) -> pb.ExplainTaskResponse:
        with self._db.read() as s:
            row = tasks.get(s, request.task_id)
            readiness = self._plans.readiness(s, [row])[row.task_id]
            return pb.ExplainTaskResponse(
                task_id=row.task_id,
                status=convert.task_status_value(row.status),
                readiness=readiness.to_proto(),
            )

    # -- comments and events --------------------------------------------

    def AddComment(
        self, request: pb.AddCommentRequest, context: grpc.ServicerContext
    ) -> pb.AddCommentResponse:
        with self._db.write() as s:
            row = comments.add(
                s, task_id=request.task_id, author=request.author, body=request.body, source=SOURCE
            )
            return pb.AddCommentResponse(comment=convert.comment(row))

    def _watch_batch(
        self, request: pb.WatchEventsRequest, cursor: int
    ) -> list[event_pb2.TaskEvent]:
        with self._db.read() as s:
            # Only settled ids (below the watermark): on PostgreSQL a smaller
            # id may still commit after a larger one.
            rows = events.deliverable_events(
                s,
                after_event_id=cursor,
                task_id=request.task_id,
                board_id=request.board_id,
                limit=WATCH_BATCH,
            )
            return [convert.event(r) for r in rows]

    def _require_board(self, board_id: str) -> None:
        with self._db.read() as s:
            boards.require(s, board_id)

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        if request.since_event_id < 0:
            raise InvalidArgument("since_event_id: must not be negative")
        await self._pool.run(self._require_board, request.board_id)
        signal = self._bus.events()
        cursor = request.since_event_id
        # Each read takes a pool thread; the waits between them take none. A
        # client that goes away cancels the stream at its next await.
        while not self._bus.closed:
            version = signal.version
            batch = await self._pool.run(self._watch_batch, request, cursor)
            for msg in batch:
                yield pb.WatchEventsResponse(event=msg)
                cursor = msg.event_id
            if len(batch) < WATCH_BATCH:
                await self._bus.wait(signal, version, self._bus.idle_seconds)

    # -- dispatch -------------------------------------------------------

    def Dispatch(
        self, request: pb.DispatchRequest, context: grpc.ServicerContext
    ) -> pb.DispatchResponse:
        if request.max_spawn < 0:
            raise InvalidArgument("max_spawn: must not be negative")
        if request.board_id:
            with self._db.read() as s:
                boards.require(s, request.board_id)
        started = dt.datetime.now(dt.UTC)
        result = self._dispatcher.tick(
            dry_run=request.dry_run,
            board_id=request.board_id,
            max_spawn=request.max_spawn or None,
        )
        response = pb.DispatchResponse(result=result)
        response.duration.FromTimedelta(dt.datetime.now(dt.UTC) - started)
        return response
