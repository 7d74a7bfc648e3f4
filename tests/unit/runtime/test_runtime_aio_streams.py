"""A wrapped stream closed between messages closes its behaviour at once, in any task.

gRPC closes a server-stream handler's generator (``aclose``) when the
client's cancel finds it between messages, possibly from another task than
the one that iterated it. The serving interceptor must then close the
behaviour's generator too (so its cleanup runs now, not when it is
collected), end the server span, and not leave OpenTelemetry detaching a
context in a Context it was not attached in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.runtime.aio_interceptors import AioServingInterceptor

METHOD = "/longshore.test.Held/Watch"


@dataclass
class Details:
    """The ``grpc.HandlerCallDetails`` of one call."""

    method: str = METHOD
    invocation_metadata: tuple[tuple[str, str], ...] = ()


@dataclass
class Context:
    """The few ``aio.ServicerContext`` calls the interceptor makes."""

    trailers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def set_trailing_metadata(self, trailers: tuple[tuple[str, str], ...]) -> None:
        self.trailers = trailers

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    def code(self) -> grpc.StatusCode | None:
        return None

    def details(self) -> str:
        return ""


class Held:
    """Yields one message, then waits until closed or cancelled; records what it saw."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.spans: list[str] = []

    async def watch(self, request: Any, context: Any) -> AsyncIterator[str]:
        try:
            for item in ("first", "second"):
                self.spans.append(getattr(trace.get_current_span(), "name", ""))
                yield item
            await asyncio.Event().wait()
            yield "never"
        finally:
            self.ended.set()


async def _wrapped(held: Held, provider: TracerProvider) -> Any:
    interceptor = AioServingInterceptor("test", tracer_provider=provider)

    async def continuation(details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_stream_rpc_method_handler(held.watch)

    handler = await interceptor.intercept_service(continuation, Details())  # type: ignore[arg-type]
    assert handler is not None and handler.unary_stream is not None
    return handler.unary_stream


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(spans: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider


def test_closing_between_messages_from_another_task_closes_the_behaviour(
    provider: TracerProvider, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        held = Held()
        stream = (await _wrapped(held, provider))("request", Context())
        assert await anext(stream) == "first"
        assert await anext(stream) == "second"
        # Another task, so another Context: where gRPC's close may run.
        await asyncio.get_running_loop().create_task(stream.aclose())
        assert held.ended.is_set(), "the behaviour's cleanup waited for the collector"
        assert held.spans == [METHOD, METHOD], "the server span is current while it runs"
        assert trace.get_current_span() is trace.INVALID_SPAN, "nothing stays attached here"

    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if "detach" in r.getMessage()], caplog.text
    assert [s.name for s in spans.get_finished_spans()] == [METHOD]


def test_cancelling_while_the_behaviour_waits_ends_it_and_its_span(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    async def scenario() -> None:
        held = Held()
        stream = (await _wrapped(held, provider))("request", Context())

        async def drain() -> None:
            async for _ in stream:
                pass

        task = asyncio.get_running_loop().create_task(drain())
        while len(held.spans) < 2:
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the behaviour is now waiting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert held.ended.is_set()

    asyncio.run(scenario())
    assert [s.name for s in spans.get_finished_spans()] == [METHOD]
