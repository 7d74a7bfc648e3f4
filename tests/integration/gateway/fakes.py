"""Stand-in backends over the real v1 contracts, for deterministic gateway tests.

They record what reached them (metadata, deadlines, cancellations) so a test
can assert what the gateway forwarded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
from longshore.kanban.v1 import (
    event_pb2,
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    task_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from longshore.sandbox.v1 import sandbox_service_pb2, sandbox_service_pb2_grpc

from services.runtime import errors
from services.runtime.serving import GrpcService


@dataclass
class Seen:
    """What the fake backends observed."""

    metadata: dict[str, str] = field(default_factory=dict)
    time_remaining: float | None = None
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    claim_ended: threading.Event = field(default_factory=threading.Event)


def _record(seen: Seen, context: grpc.ServicerContext) -> None:
    seen.metadata = {k: str(v) for k, v in context.invocation_metadata() or ()}
    seen.time_remaining = context.time_remaining()


class FakeKanban(kanban_service_pb2_grpc.KanbanServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def GetTask(
        self, request: kanban_service_pb2.GetTaskRequest, context: grpc.ServicerContext
    ) -> kanban_service_pb2.GetTaskResponse:
        _record(self.seen, context)
        if request.task_id != "t1":
            raise errors.NotFound(f"task {request.task_id!r} not found")
        return kanban_service_pb2.GetTaskResponse(task=task_pb2.Task(task_id="t1", title="one"))

    def CreateTask(
        self, request: kanban_service_pb2.CreateTaskRequest, context: grpc.ServicerContext
    ) -> kanban_service_pb2.CreateTaskResponse:
        _record(self.seen, context)
        if not request.task.title:
            raise errors.InvalidArgument("task.title: required")
        return kanban_service_pb2.CreateTaskResponse(task=request.task)

    def GetRunOutput(
        self, request: kanban_service_pb2.GetRunOutputRequest, context: grpc.ServicerContext
    ) -> kanban_service_pb2.GetRunOutputResponse:
        return kanban_service_pb2.GetRunOutputResponse(run_id="r", data=b"x" * request.limit)

    def WatchEvents(
        self, request: kanban_service_pb2.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[kanban_service_pb2.WatchEventsResponse]:
        _record(self.seen, context)
        if not context.add_callback(self.seen.stream_cancelled.set):
            self.seen.stream_cancelled.set()
        yield kanban_service_pb2.WatchEventsResponse(
            event=event_pb2.TaskEvent(event_id=1, kind="created")
        )
        # Live tail: nothing more happens until the caller goes away.
        self.seen.stream_cancelled.wait(30)


class FakeWorker(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def ClaimTask(
        self, request: worker_service_pb2.ClaimTaskRequest, context: grpc.ServicerContext
    ) -> worker_service_pb2.ClaimTaskResponse:
        _record(self.seen, context)
        ended = threading.Event()
        if not context.add_callback(ended.set):
            ended.set()  # cancelled already
        ended.wait(request.wait.seconds)  # long poll: nothing ever becomes ready
        self.seen.claim_ended.set()
        return worker_service_pb2.ClaimTaskResponse()


class FakeSandbox(sandbox_service_pb2_grpc.SandboxServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def ListSandboxes(
        self, request: sandbox_service_pb2.ListSandboxesRequest, context: grpc.ServicerContext
    ) -> sandbox_service_pb2.ListSandboxesResponse:
        _record(self.seen, context)
        return sandbox_service_pb2.ListSandboxesResponse()


def kanban_services(seen: Seen) -> list[GrpcService]:
    kanban, worker = FakeKanban(seen), FakeWorker(seen)
    return [
        GrpcService(
            "longshore.kanban.v1.KanbanService",
            lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(kanban, s),
        ),
        GrpcService(
            "longshore.kanban.v1.WorkerService",
            lambda s: worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(worker, s),
        ),
    ]


def sandbox_services(seen: Seen) -> list[GrpcService]:
    sandbox = FakeSandbox(seen)
    return [
        GrpcService(
            "longshore.sandbox.v1.SandboxService",
            lambda s: sandbox_service_pb2_grpc.add_SandboxServiceServicer_to_server(sandbox, s),
        )
    ]
