"""Stand-in backends over the real v1 contracts, for deterministic gateway tests.

They record what reached them (metadata, deadlines, cancellations) so a test
can assert what the gateway forwarded. They are ``grpc.aio`` servicers, as the
real backends are: a call the caller cancels, or whose deadline passes, is
cancelled in the handler (a CancelledError at its ``await``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from grpc import aio
from longshore.kanban.v1 import (
    event_pb2,
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    task_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from longshore.sandbox.v1 import (
    process_pb2,
    sandbox_pb2,
    sandbox_service_pb2,
    sandbox_service_pb2_grpc,
)

from services.runtime import errors
from services.runtime.aio_serving import AioService


@dataclass
class Seen:
    """What the fake backends observed."""

    metadata: dict[str, str] = field(default_factory=dict)
    time_remaining: float | None = None
    # threading.Events: set on the server's loop, waited on by the test's thread.
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    claim_ended: threading.Event = field(default_factory=threading.Event)
    bidi_cancelled: threading.Event = field(default_factory=threading.Event)
    bidi_half_closed: threading.Event = field(default_factory=threading.Event)


Context = aio.ServicerContext[object, object]


def _record(seen: Seen, context: Context) -> None:
    seen.metadata = {k: str(v) for k, v in context.invocation_metadata() or ()}
    seen.time_remaining = context.time_remaining()


class FakeKanban(kanban_service_pb2_grpc.KanbanServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def GetTask(  # type: ignore[override]
        self, request: kanban_service_pb2.GetTaskRequest, context: Context
    ) -> kanban_service_pb2.GetTaskResponse:
        _record(self.seen, context)
        if request.task_id != "t1":
            raise errors.NotFound(f"task {request.task_id!r} not found")
        return kanban_service_pb2.GetTaskResponse(task=task_pb2.Task(task_id="t1", title="one"))

    async def CreateTask(  # type: ignore[override]
        self, request: kanban_service_pb2.CreateTaskRequest, context: Context
    ) -> kanban_service_pb2.CreateTaskResponse:
        _record(self.seen, context)
        if not request.task.title:
            raise errors.InvalidArgument("task.title: required")
        return kanban_service_pb2.CreateTaskResponse(task=request.task)

    async def GetRunOutput(  # type: ignore[override]
        self, request: kanban_service_pb2.GetRunOutputRequest, context: Context
    ) -> kanban_service_pb2.GetRunOutputResponse:
        return kanban_service_pb2.GetRunOutputResponse(run_id="r", data=b"x" * request.limit)

    async def WatchEvents(  # type: ignore[override]
        self, request: kanban_service_pb2.WatchEventsRequest, context: Context
    ) -> AsyncIterator[kanban_service_pb2.WatchEventsResponse]:
        _record(self.seen, context)
        yield kanban_service_pb2.WatchEventsResponse(
            event=event_pb2.TaskEvent(event_id=1, kind="created")
        )
        try:
            # Live tail: nothing more happens until the caller goes away.
            await asyncio.sleep(30)
        finally:
            # Cancelled (a cancel or the deadline) or the 30 s ran out: the call ended.
            self.seen.stream_cancelled.set()


class FakeWorker(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def ClaimTask(  # type: ignore[override]
        self, request: worker_service_pb2.ClaimTaskRequest, context: Context
    ) -> worker_service_pb2.ClaimTaskResponse:
        _record(self.seen, context)
        try:
            # Long poll: nothing ever becomes ready; a cancel or the deadline ends it.
            await asyncio.sleep(request.wait.seconds)
        finally:
            self.seen.claim_ended.set()
        return worker_service_pb2.ClaimTaskResponse()


class FakeSandbox(sandbox_service_pb2_grpc.SandboxServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def ListSandboxes(  # type: ignore[override]
        self, request: sandbox_service_pb2.ListSandboxesRequest, context: Context
    ) -> sandbox_service_pb2.ListSandboxesResponse:
        _record(self.seen, context)
        return sandbox_service_pb2.ListSandboxesResponse()

    async def RunProcess(  # type: ignore[override]
        self, request_iterator: AsyncIterator[process_pb2.RunProcessRequest], context: Context
    ) -> AsyncIterator[process_pb2.RunProcessResponse]:
        """Echoes each stdin message as output; a signal ends the stream with it.

        After the caller's half-close, ``cat`` exits at once; anything else
        keeps running (as a real process outlives its input) for 30 s.
        """
        _record(self.seen, context)
        ended = False

        def done(_context: object) -> None:
            # The call's end, seen by gRPC itself: a closed handler's finally
            # may run only when its generator is collected.
            if not ended:
                self.seen.bidi_cancelled.set()

        context.add_done_callback(done)  # type: ignore[arg-type]
        argv: list[str] = []
        async for request in request_iterator:
            kind = request.WhichOneof("message")
            if kind == "start":
                argv = list(request.start.config.argv)
                started = process_pb2.Process(argv=request.start.config.argv)
                yield process_pb2.RunProcessResponse(
                    event=process_pb2.ProcessEvent(started=started)
                )
            elif kind == "stdin":
                chunk = sandbox_pb2.OutputChunk(
                    stream=sandbox_pb2.OUTPUT_STREAM_STDOUT, data=request.stdin
                )
                yield process_pb2.RunProcessResponse(
                    event=process_pb2.ProcessEvent(output=process_pb2.ProcessOutput(chunk=chunk))
                )
            elif kind == "signal":
                ended = True
                raise errors.FailedPrecondition(f"signal {request.signal}: refused")
        self.seen.bidi_half_closed.set()
        if argv != ["cat"]:
            await asyncio.sleep(30)
        ended = True
        yield process_pb2.RunProcessResponse(
            event=process_pb2.ProcessEvent(exit=process_pb2.ProcessExit(exit_code=0))
        )


def kanban_services(seen: Seen) -> list[AioService]:
    kanban, worker = FakeKanban(seen), FakeWorker(seen)
    return [
        AioService(
            "longshore.kanban.v1.KanbanService",
            lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(kanban, s),
        ),
        AioService(
            "longshore.kanban.v1.WorkerService",
            lambda s: worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(worker, s),
        ),
    ]


def sandbox_services(seen: Seen) -> list[AioService]:
    sandbox = FakeSandbox(seen)
    return [
        AioService(
            "longshore.sandbox.v1.SandboxService",
            lambda s: sandbox_service_pb2_grpc.add_SandboxServiceServicer_to_server(sandbox, s),
        )
    ]
