"""A gateway-shaped in-process fake for the dashboard's unit tests.

Serves GatewayService, KanbanService and SandboxService (the calls the
dashboard makes) from memory, checks ``authorization: Bearer <key>`` like the
real gateway and streams events live. The browser and integration tests run
against the real services instead. The servicers are ``grpc.aio`` ones, like
the real gateway's: they refuse a call by raising the typed error the real
gateway's interceptor maps, and a stream waits on the server's loop (woken
by :class:`FakeState` when a test adds an event or output).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import struct_pb2
from grpc import aio
from longshore.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longshore.kanban.v1 import (
    board_pb2,
    dispatch_pb2,
    event_pb2,
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    profile_pb2,
    run_pb2,
    task_pb2,
)
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2, sandbox_service_pb2_grpc

from services.runtime import errors
from services.runtime.aio_serving import AioService

Context = aio.ServicerContext[Any, Any]

DASHBOARD_KEY = "dash-key"
USER_KEY = "user-key"
READ_KEY = "read-key"
SSO_KEY = "sso-key"
#: A secret planted in every env map the fake returns (a gateway that leaks):
#: the dashboard must never send it to a browser.
PLANTED_SECRET = "planted-secret-6f1d"

#: Method name -> the scope it needs (everything else needs read), as in
#: services/gateway/scopes.py.
NEEDS = {
    "CreateTask": "write",
    "MoveTask": "write",
    "AssignTask": "write",
    "BlockTask": "write",
    "UnblockTask": "write",
    "Dispatch": "write",
    "ReapOrphans": "admin",
}

ALLOWED = {
    task_pb2.TASK_STATUS_TRIAGE: {2, 3, 7},
    task_pb2.TASK_STATUS_TODO: {3, 5, 7, 1},
    task_pb2.TASK_STATUS_READY: {2, 5, 7},
    task_pb2.TASK_STATUS_RUNNING: {3, 6, 5, 7},
    task_pb2.TASK_STATUS_BLOCKED: {3, 2, 7},
    task_pb2.TASK_STATUS_DONE: {7, 3},
    task_pb2.TASK_STATUS_ARCHIVED: set(),
}


def _check_key(context: Context, state: FakeState) -> frozenset[str]:
    """Admit a call like the real gateway: a known key holding the method's scope."""
    metadata = context.invocation_metadata()
    auths = [str(value) for key, value in metadata if key == "authorization"]
    if len(auths) != 1:
        raise errors.Unauthenticated(f"expected one key, got {len(auths)}")
    key = auths[0].removeprefix("Bearer ")
    state.calls.append(key)
    entry = state.keys.get(key)
    if entry is None:
        raise errors.Unauthenticated("unknown API key")
    name, scopes = entry
    method = sys._getframe(1).f_code.co_name  # the servicer method that asks
    needed = NEEDS.get(method, "read")
    if needed not in scopes and "admin" not in scopes:
        raise errors.PermissionDenied(
            f"{method} needs scope {needed}; key {name!r} has {'+'.join(sorted(scopes))}"
        )
    return scopes


class FakeState:
    """Boards, profiles, tasks, events and output in memory."""

    def __init__(self) -> None:
        # Tests change the state from their thread, handlers read it on the
        # server's loop: one lock for both, held only for a read or a write.
        self.lock = threading.Lock()
        #: Streams waiting for a change: (their loop, the event to set), under ``lock``.
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        #: key -> (name, scopes); tests remove a key to "rotate" it.
        self.keys: dict[str, tuple[str, frozenset[str]]] = {
            DASHBOARD_KEY: ("dashboard", frozenset({"admin"})),
            USER_KEY: ("user", frozenset({"read", "write"})),
            READ_KEY: ("reader", frozenset({"read"})),
            SSO_KEY: ("sso", frozenset({"read"})),
        }
        #: Backends GetStatus reports after kanban and sandbox.
        self.extra_backends: list[gateway_service_pb2.BackendStatus] = []
        #: The key of every call, in order (which credential the dashboard used).
        self.calls: list[str] = []
        self.tasks: dict[str, task_pb2.Task] = {}
        self.events: list[event_pb2.TaskEvent] = []
        self.output: dict[str, bytes] = {}
        self.run_done: set[str] = set()
        self.runs: dict[str, list[run_pb2.TaskRun]] = {}
        self.profiles = [
            profile_pb2.Profile(
                name="builder",
                executor=profile_pb2.EXECUTOR_SANDBOX,
                sandbox_spec=sandbox_pb2.SandboxSpec(
                    image="busybox", env={"TOKEN": PLANTED_SECRET}
                ),
            ),
            profile_pb2.Profile(name="human", executor=profile_pb2.EXECUTOR_NONE),
        ]
        self.sandboxes = [
            sandbox_pb2.Sandbox(
                sandbox_id="a" * 64,
                name="longshore-default-builder-t1",
                task_id="t1",
                profile="builder",
                state=sandbox_pb2.SANDBOX_STATE_RUNNING,
                persist=True,
                image="busybox",
            )
        ]

    def changed(self) -> asyncio.Event:
        """An event set at the next change; call on the loop, holding ``lock``.

        Registered under the lock that guards the read before it, so a change
        between the read and the wait still wakes the stream.
        """
        event = asyncio.Event()
        self._waiters.append((asyncio.get_running_loop(), event))
        return event

    def _wake(self) -> None:
        """Wakes every waiting stream (holding ``lock``); an asyncio.Event is
        not thread-safe, so it is set on its own loop."""
        for loop, event in self._waiters:
            # RuntimeError: that server stopped and closed its loop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        self._waiters.clear()

    def event(self, task: task_pb2.Task, kind: str, **payload: Any) -> None:
        with self.lock:
            struct = struct_pb2.Struct()
            struct.update(payload)
            event = event_pb2.TaskEvent(
                event_id=len(self.events) + 1,
                task_id=task.task_id,
                board_id=task.board_id,
                kind=kind,
                payload=struct,
                source="api",
            )
            event.create_time.GetCurrentTime()
            self.events.append(event)
            self._wake()

    def append_output(self, run_id: str, data: bytes, *, done: bool = False) -> None:
        with self.lock:
            self.output[run_id] = self.output.get(run_id, b"") + data
            if done:
                self.run_done.add(run_id)
            self._wake()


class FakeGateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    async def GetStatus(self, request: Any, context: Context) -> Any:
        scopes = _check_key(context, self.state)
        response = gateway_service_pb2.GetStatusResponse(
            version="9.9.9", deployment="test", scopes=sorted(scopes)
        )
        response.backends.add(
            name="kanban", address="k:1", health=gateway_service_pb2.BACKEND_HEALTH_SERVING
        )
        response.backends.add(
            name="sandbox", address="s:1", health=gateway_service_pb2.BACKEND_HEALTH_UNREACHABLE
        )
        response.backends.extend(self.state.extra_backends)
        return response


class FakeKanban(kanban_service_pb2_grpc.KanbanServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    def _task(self, task_id: str, context: Context) -> task_pb2.Task:
        task = self.state.tasks.get(task_id)
        if task is None:
            raise errors.NotFound(f"task {task_id!r} not found")
        return task

    async def ListBoards(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        return kanban_service_pb2.ListBoardsResponse(
            boards=[board_pb2.Board(board_id="default", display_name="Default")]
        )

    async def ListProfiles(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        return kanban_service_pb2.ListProfilesResponse(profiles=self.state.profiles)

    async def ListTasks(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        tasks = [
            t
            for t in self.state.tasks.values()
            if (not request.board_id or t.board_id == request.board_id)
            and (not request.assignee or t.assignee == request.assignee)
        ]
        for task in tasks:
            if task.status == task_pb2.TASK_STATUS_READY and request.include_readiness:
                task.readiness.reason = task_pb2.READINESS_REASON_NO_ASSIGNEE
                task.readiness.message = "no assignee and no default assignee"
        return kanban_service_pb2.ListTasksResponse(tasks=tasks)

    async def CreateTask(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        task = task_pb2.Task()
        task.CopyFrom(request.task)
        task.env["API_TOKEN"] = PLANTED_SECRET  # as if the gateway leaked a value
        task.task_id = f"t{len(self.state.tasks) + 1}"
        task.status = task.status or task_pb2.TASK_STATUS_READY
        task.create_time.GetCurrentTime()
        self.state.tasks[task.task_id] = task
        self.state.event(task, "created", title=task.title)
        return kanban_service_pb2.CreateTaskResponse(task=task)

    async def GetTask(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        return kanban_service_pb2.GetTaskResponse(task=self._task(request.task_id, context))

    async def MoveTask(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        task = self._task(request.task_id, context)
        if request.status not in ALLOWED[task.status]:
            raise errors.FailedPrecondition("transition not allowed")
        task.status = request.status
        self.state.event(task, "moved", to=task_pb2.TaskStatus.Name(request.status))
        return kanban_service_pb2.MoveTaskResponse(task=task)

    async def AssignTask(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        task = self._task(request.task_id, context)
        task.assignee = request.assignee
        self.state.event(task, "assigned", assignee=request.assignee)
        return kanban_service_pb2.AssignTaskResponse(task=task)

    async def BlockTask(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        task = self._task(request.task_id, context)
        task.status = task_pb2.TASK_STATUS_BLOCKED
        task.blocked_reason = request.reason
        self.state.event(task, "blocked", reason=request.reason)
        return kanban_service_pb2.BlockTaskResponse(task=task)

    async def UnblockTask(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        task = self._task(request.task_id, context)
        if task.status != task_pb2.TASK_STATUS_BLOCKED:
            raise errors.FailedPrecondition("not blocked")
        task.status = task_pb2.TASK_STATUS_READY
        task.blocked_reason = ""
        self.state.event(task, "unblocked")
        return kanban_service_pb2.UnblockTaskResponse(task=task)

    async def ListTaskEvents(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        events = [
            e
            for e in self.state.events
            if (not request.task_id or e.task_id == request.task_id)
            and (not request.board_id or e.board_id == request.board_id)
            and e.event_id > request.after_event_id
        ]
        return kanban_service_pb2.ListTaskEventsResponse(events=events)

    async def WatchEvents(self, request: Any, context: Context) -> AsyncIterator[Any]:
        _check_key(context, self.state)
        sent = request.since_event_id
        # Ends when the caller goes away: the wait below is cancelled.
        while True:
            with self.state.lock:
                fresh = [e for e in self.state.events if e.event_id > sent]
                changed = None if fresh else self.state.changed()
            if changed is not None:
                await changed.wait()
                continue
            for event in fresh:
                sent = event.event_id
                if request.board_id and event.board_id != request.board_id:
                    continue
                if request.task_id and event.task_id != request.task_id:
                    continue
                yield kanban_service_pb2.WatchEventsResponse(event=event)

    async def ListTaskRuns(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        self._task(request.task_id, context)
        return kanban_service_pb2.ListTaskRunsResponse(
            runs=self.state.runs.get(request.task_id, [])
        )

    async def StreamRunOutput(self, request: Any, context: Context) -> AsyncIterator[Any]:
        _check_key(context, self.state)
        runs = self.state.runs.get(request.task_id, [])
        run_id = request.run_id or (runs[0].run_id if runs else "")
        if not run_id:
            raise errors.NotFound("task has no runs")
        offset = request.offset
        while True:
            with self.state.lock:
                data = self.state.output.get(run_id, b"")
                done = run_id in self.state.run_done
                changed = self.state.changed() if len(data) <= offset and not done else None
            if changed is not None:
                await changed.wait()
                continue
            chunk = data[offset:]
            offset = len(data)
            yield kanban_service_pb2.StreamRunOutputResponse(
                run_id=run_id, data=chunk, next_offset=offset, eof=done
            )
            if done:
                return

    async def Dispatch(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        result = dispatch_pb2.DispatchResult(dry_run=request.dry_run)
        for task in self.state.tasks.values():
            if task.status == task_pb2.TASK_STATUS_READY and not task.assignee:
                result.skipped_unassigned.append(task.task_id)
        return kanban_service_pb2.DispatchResponse(result=result)


class FakeSandbox(sandbox_service_pb2_grpc.SandboxServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    async def ListSandboxes(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        return sandbox_service_pb2.ListSandboxesResponse(sandboxes=self.state.sandboxes)

    async def ReapOrphans(self, request: Any, context: Context) -> Any:
        _check_key(context, self.state)
        response = sandbox_service_pb2.ReapOrphansResponse(dry_run=request.dry_run)
        response.spared.add(sandbox_id="a" * 64, name="x", reason="running")
        return response


def fake_services(state: FakeState) -> list[AioService]:
    """The three services, ready for ``serve_in_process``."""
    gateway = FakeGateway(state)
    kanban = FakeKanban(state)
    sandbox = FakeSandbox(state)
    return [
        AioService(
            "longshore.gateway.v1.GatewayService",
            lambda s: gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(gateway, s),
        ),
        AioService(
            "longshore.kanban.v1.KanbanService",
            lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(kanban, s),
        ),
        AioService(
            "longshore.sandbox.v1.SandboxService",
            lambda s: sandbox_service_pb2_grpc.add_SandboxServiceServicer_to_server(sandbox, s),
        ),
    ]
