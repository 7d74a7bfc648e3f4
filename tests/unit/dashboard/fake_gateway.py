"""A gateway-shaped in-process fake for the dashboard's unit tests.

Serves GatewayService, KanbanService and SandboxService (the calls the
dashboard makes) from memory, checks ``authorization: Bearer <key>`` like the
real gateway and streams events live. The browser and integration tests run
against the real services instead.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import struct_pb2
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

from services.runtime.serving import GrpcService

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


def _check_key(context: grpc.ServicerContext, state: FakeState) -> frozenset[str]:
    """Admit a call like the real gateway: a known key holding the method's scope."""
    metadata = context.invocation_metadata()
    auths = [str(value) for key, value in metadata if key == "authorization"]
    if len(auths) != 1:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"expected one key, got {len(auths)}")
    key = auths[0].removeprefix("Bearer ")
    state.calls.append(key)
    entry = state.keys.get(key)
    if entry is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
    name, scopes = entry  # type: ignore[misc]
    method = sys._getframe(1).f_code.co_name  # the servicer method that asks
    needed = NEEDS.get(method, "read")
    if needed not in scopes and "admin" not in scopes:
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method} needs scope {needed}; key {name!r} has {'+'.join(sorted(scopes))}",
        )
    return scopes


class FakeState:
    """Boards, profiles, tasks, events and output in memory."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
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
            self.lock.notify_all()

    def append_output(self, run_id: str, data: bytes, *, done: bool = False) -> None:
        with self.lock:
            self.output[run_id] = self.output.get(run_id, b"") + data
            if done:
                self.run_done.add(run_id)
            self.lock.notify_all()


class FakeGateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    def GetStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
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

    def _task(self, task_id: str, context: grpc.ServicerContext) -> task_pb2.Task:
        task = self.state.tasks.get(task_id)
        if task is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"task {task_id!r} not found")
        return task  # type: ignore[return-value]

    def ListBoards(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        return kanban_service_pb2.ListBoardsResponse(
            boards=[board_pb2.Board(board_id="default", display_name="Default")]
        )

    def ListProfiles(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        return kanban_service_pb2.ListProfilesResponse(profiles=self.state.profiles)

    def ListTasks(self, request: Any, context: grpc.ServicerContext) -> Any:
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

    def CreateTask(self, request: Any, context: grpc.ServicerContext) -> Any:
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

    def GetTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        return kanban_service_pb2.GetTaskResponse(task=self._task(request.task_id, context))

    def MoveTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        task = self._task(request.task_id, context)
        if request.status not in ALLOWED[task.status]:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "transition not allowed")
        task.status = request.status
        self.state.event(task, "moved", to=task_pb2.TaskStatus.Name(request.status))
        return kanban_service_pb2.MoveTaskResponse(task=task)

    def AssignTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        task = self._task(request.task_id, context)
        task.assignee = request.assignee
        self.state.event(task, "assigned", assignee=request.assignee)
        return kanban_service_pb2.AssignTaskResponse(task=task)

    def BlockTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        task = self._task(request.task_id, context)
        task.status = task_pb2.TASK_STATUS_BLOCKED
        task.blocked_reason = request.reason
        self.state.event(task, "blocked", reason=request.reason)
        return kanban_service_pb2.BlockTaskResponse(task=task)

    def UnblockTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        task = self._task(request.task_id, context)
        if task.status != task_pb2.TASK_STATUS_BLOCKED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not blocked")
        task.status = task_pb2.TASK_STATUS_READY
        task.blocked_reason = ""
        self.state.event(task, "unblocked")
        return kanban_service_pb2.UnblockTaskResponse(task=task)

    def ListTaskEvents(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        events = [
            e
            for e in self.state.events
            if (not request.task_id or e.task_id == request.task_id)
            and (not request.board_id or e.board_id == request.board_id)
            and e.event_id > request.after_event_id
        ]
        return kanban_service_pb2.ListTaskEventsResponse(events=events)

    def WatchEvents(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        _check_key(context, self.state)
        sent = request.since_event_id
        while context.is_active():
            with self.state.lock:
                fresh = [e for e in self.state.events if e.event_id > sent]
                if not fresh:
                    self.state.lock.wait(0.2)
                    continue
            for event in fresh:
                sent = event.event_id
                if request.board_id and event.board_id != request.board_id:
                    continue
                if request.task_id and event.task_id != request.task_id:
                    continue
                yield kanban_service_pb2.WatchEventsResponse(event=event)

    def ListTaskRuns(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        self._task(request.task_id, context)
        return kanban_service_pb2.ListTaskRunsResponse(
            runs=self.state.runs.get(request.task_id, [])
        )

    def StreamRunOutput(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        _check_key(context, self.state)
        runs = self.state.runs.get(request.task_id, [])
        run_id = request.run_id or (runs[0].run_id if runs else "")
        if not run_id:
            context.abort(grpc.StatusCode.NOT_FOUND, "task has no runs")
        offset = request.offset
        while context.is_active():
            with self.state.lock:
                data = self.state.output.get(run_id, b"")
                done = run_id in self.state.run_done
                if len(data) <= offset and not done:
                    self.state.lock.wait(0.2)
                    continue
            chunk = data[offset:]
            offset = len(data)
            yield kanban_service_pb2.StreamRunOutputResponse(
                run_id=run_id, data=chunk, next_offset=offset, eof=done
            )
            if done:
                return

    def Dispatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        result = dispatch_pb2.DispatchResult(dry_run=request.dry_run)
        for task in self.state.tasks.values():
            if task.status == task_pb2.TASK_STATUS_READY and not task.assignee:
                result.skipped_unassigned.append(task.task_id)
        return kanban_service_pb2.DispatchResponse(result=result)


class FakeSandbox(sandbox_service_pb2_grpc.SandboxServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    def ListSandboxes(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        return sandbox_service_pb2.ListSandboxesResponse(sandboxes=self.state.sandboxes)

    def ReapOrphans(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_key(context, self.state)
        response = sandbox_service_pb2.ReapOrphansResponse(dry_run=request.dry_run)
        response.spared.add(sandbox_id="a" * 64, name="x", reason="running")
        return response


def fake_services(state: FakeState) -> list[GrpcService]:
    """The three services, ready for ``serve_in_process``."""
    gateway = FakeGateway(state)
    kanban = FakeKanban(state)
    sandbox = FakeSandbox(state)
    return [
        GrpcService(
            "longshore.gateway.v1.GatewayService",
            lambda s: gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(gateway, s),
        ),
        GrpcService(
            "longshore.kanban.v1.KanbanService",
            lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(kanban, s),
        ),
        GrpcService(
            "longshore.sandbox.v1.SandboxService",
            lambda s: sandbox_service_pb2_grpc.add_SandboxServiceServicer_to_server(sandbox, s),
        ),
    ]
