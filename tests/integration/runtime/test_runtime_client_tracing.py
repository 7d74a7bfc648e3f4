"""The client interceptor keeps the call: a traced stream is cancellable, and traced.

Through ``open_channel`` (sync) and ``open_aio_channel`` (``grpc.aio``), a
server stream is the real ``grpc`` call: ``cancel()`` reaches the server,
which sees its call cancelled, and the server span is a child of the client
span that carried the W3C trace context.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc import aio
from longshore.kanban.v1 import event_pb2, kanban_service_pb2, kanban_service_pb2_grpc, task_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.runtime.aio_serving import AioService
from services.runtime.channels import open_aio_channel, open_channel
from services.runtime.testing import serve_in_process
from services.runtime.tracing import service_resource
from tests.integration.runtime.demo_services import kanban_service
from tests.support.otlp import OtlpReceiver, ReceivedSpan

WATCH = "/longshore.kanban.v1.KanbanService/WatchEvents"
KANBAN = "longshore.kanban.v1.KanbanService"
#: Generous bound on waiting for the other side (an Event, not a sleep).
WAIT = 10.0


def _first_event() -> kanban_service_pb2.WatchEventsResponse:
    return kanban_service_pb2.WatchEventsResponse(
        event=event_pb2.TaskEvent(event_id=1, kind="created")
    )


class HeldStream(kanban_service_pb2_grpc.KanbanServiceServicer):
    """WatchEvents sends one event, then holds the call until the client goes.

    The handler sees the client's cancel as a CancelledError while it waits,
    or as GeneratorExit when the cancel finds the stream between messages
    (its first one still being sent): either way it ends at once.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.token = ""

    async def WatchEvents(  # type: ignore[override]
        self, request: kanban_service_pb2.WatchEventsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[kanban_service_pb2.WatchEventsResponse]:
        self.token = dict(context.invocation_metadata() or ()).get("longshore-internal-token", "")
        try:
            yield _first_event()
            await asyncio.Event().wait()  # held: only the client ends it
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise


@pytest.fixture
def provider(otlp_receiver: OtlpReceiver) -> Iterator[TracerProvider]:
    provider = TracerProvider(resource=service_resource("demo"))
    # Export synchronously so the test need not wait for a batch.
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp_receiver.endpoint, insecure=True))
    )
    yield provider
    provider.shutdown()


def _client_and_server(receiver: OtlpReceiver) -> tuple[ReceivedSpan, ReceivedSpan]:
    spans = receiver.wait_for(
        lambda got: {"CLIENT", "SERVER"} <= {s.kind for s in got if s.name == WATCH}, WAIT
    )
    client = next(s for s in spans if s.name == WATCH and s.kind == "CLIENT")
    server = next(s for s in spans if s.name == WATCH and s.kind == "SERVER")
    return client, server


def test_a_sync_stream_is_cancellable_and_its_server_span_is_a_child(
    otlp_receiver: OtlpReceiver, provider: TracerProvider
) -> None:
    servicer = HeldStream()
    with (
        serve_in_process([kanban_service(servicer)], tracer_provider=provider) as running,
        open_channel(running.address, internal_token="s3cret", tracer_provider=provider) as channel,
    ):
        call = kanban_service_pb2_grpc.KanbanServiceStub(channel).WatchEvents(
            kanban_service_pb2.WatchEventsRequest()
        )
        assert isinstance(call, grpc.Call), type(call)
        assert next(call).event.event_id == 1
        call.cancel()
        assert servicer.cancelled.wait(WAIT), "the server never saw the cancel"
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() == grpc.StatusCode.CANCELLED
    assert servicer.token == "s3cret", "the channel's credential reached the server"
    client, server = _client_and_server(otlp_receiver)
    assert server.trace_id == client.trace_id
    assert server.parent_span_id == client.span_id
    assert client.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert client.status_code == "ERROR"


def test_a_unary_call_gets_the_default_deadline_and_an_ok_span(
    otlp_receiver: OtlpReceiver, provider: TracerProvider
) -> None:
    class Deadline(kanban_service_pb2_grpc.KanbanServiceServicer):
        remaining: float | None = None

        async def GetTask(  # type: ignore[override]
            self, request: kanban_service_pb2.GetTaskRequest, context: aio.ServicerContext
        ) -> kanban_service_pb2.GetTaskResponse:
            Deadline.remaining = context.time_remaining()
            return kanban_service_pb2.GetTaskResponse(task=task_pb2.Task(task_id="t1"))

    with (
        serve_in_process([kanban_service(Deadline())], tracer_provider=provider) as running,
        open_channel(running.address, default_timeout=7, tracer_provider=provider) as channel,
    ):
        reply = kanban_service_pb2_grpc.KanbanServiceStub(channel).GetTask(
            kanban_service_pb2.GetTaskRequest(task_id="t1")
        )
    assert reply.task.task_id == "t1"
    # The wire's grpc-timeout is rounded up to its unit, so the server may see
    # a hair over 7 s; without the default it would see None.
    assert Deadline.remaining is not None and 0 < Deadline.remaining <= 7.5
    name = "/longshore.kanban.v1.KanbanService/GetTask"
    spans = otlp_receiver.wait_for(
        lambda got: {"CLIENT", "SERVER"} <= {s.kind for s in got if s.name == name}, WAIT
    )
    client = next(s for s in spans if s.name == name and s.kind == "CLIENT")
    server = next(s for s in spans if s.name == name and s.kind == "SERVER")
    assert server.parent_span_id == client.span_id
    assert client.attributes["rpc.grpc.status_code"] == 0
    assert client.status_code == "UNSET"


def test_an_aio_stream_is_cancellable_and_its_server_span_is_a_child(
    otlp_receiver: OtlpReceiver, provider: TracerProvider
) -> None:
    servicer = HeldStream()
    service = AioService(
        KANBAN, lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(servicer, s)
    )

    async def watch_then_cancel(address: str) -> grpc.StatusCode:
        async with open_aio_channel(address, tracer_provider=provider) as channel:
            call = kanban_service_pb2_grpc.KanbanServiceStub(channel).WatchEvents(
                kanban_service_pb2.WatchEventsRequest()
            )
            first = await call.read()
            assert first.event.event_id == 1
            assert call.cancel()
            code: grpc.StatusCode = await call.code()
            # The client span ends in a done callback on this loop: wait for
            # its export here, while the loop still runs.
            await asyncio.to_thread(_client_and_server, otlp_receiver)
            return code

    with serve_in_process([service], tracer_provider=provider) as running:
        code = asyncio.run(watch_then_cancel(running.address))
        assert servicer.cancelled.wait(WAIT), "the server never saw the cancel"
    assert code == grpc.StatusCode.CANCELLED
    client, server = _client_and_server(otlp_receiver)
    assert server.trace_id == client.trace_id
    assert server.parent_span_id == client.span_id
