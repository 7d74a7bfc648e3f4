"""A real OTLP/gRPC trace receiver for tests: the ``otlp_receiver`` fixture.

Services under test export their spans to it exactly as they would to a
collector (``OTEL_EXPORTER_OTLP_ENDPOINT=<receiver.endpoint>``); tests then
assert on the flattened spans, waiting on a condition instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver got it, flattened out of its resource and scope.

    Ids are lowercase hex; ``parent_span_id`` is ``""`` for a root span.
    ``kind`` is ``"INTERNAL"``, ``"SERVER"``, ``"CLIENT"``, ``"PRODUCER"`` or
    ``"CONSUMER"``; ``status_code`` is ``"UNSET"``, ``"OK"`` or ``"ERROR"``.
    ``links`` holds ``(trace_id, span_id)`` pairs.
    """

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    service_name: str
    kind: str
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...] = ()
    status_code: str = "UNSET"
    status_message: str = ""
    events: tuple[str, ...] = ()
    scope_name: str = ""
    resource: dict[str, Any] = field(default_factory=dict)
    start_time_unix_nano: int = 0
    end_time_unix_nano: int = 0


def any_value(value: common_pb2.AnyValue) -> Any:
    """Convert an OTLP ``AnyValue`` to the plain Python value."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return key_values(value.kvlist_value.values)
    return getattr(value, which)


def key_values(items: Any) -> dict[str, Any]:
    """Convert repeated OTLP ``KeyValue`` to a dict."""
    return {kv.key: any_value(kv.value) for kv in items}


def flatten(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Flatten an export request into :class:`ReceivedSpan` values, in order."""
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = key_values(resource_spans.resource.attributes)
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        service_name=service,
                        kind=trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        attributes=key_values(span.attributes),
                        links=tuple((ln.trace_id.hex(), ln.span_id.hex()) for ln in span.links),
                        status_code=trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix(
                            "STATUS_CODE_"
                        ),
                        status_message=span.status.message,
                        events=tuple(event.name for event in span.events),
                        scope_name=scope_spans.scope.name,
                        resource=resource,
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                    )
                )
    return spans


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver on ``127.0.0.1``, keeping spans in memory.

    Args:
        host: Interface to bind.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._cond = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-receiver"),
            options=[("grpc.so_reuseport", 0)],
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port(f"{host}:0")
        self.host = host

    @property
    def endpoint(self) -> str:
        """``http://host:port``, for ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTLPSpanExporter``."""
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port`` without a scheme."""
        return f"{self.host}:{self.port}"

    def start(self) -> OtlpReceiver:
        """Start serving."""
        self._server.start()
        return self

    def stop(self, grace: float = 0.5) -> None:
        """Stop serving."""
        self._server.stop(grace).wait()

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        """Receive a batch of spans (the OTLP TraceService RPC)."""
        del context
        received = flatten(request)
        with self._cond:
            self._spans.extend(received)
            self._cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        """A snapshot of every span received so far, in arrival order."""
        with self._cond:
            return list(self._spans)

    def clear(self) -> None:
        """Forget the spans received so far."""
        with self._cond:
            self._spans.clear()

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """Block until ``predicate(spans)`` holds, re-checking on every export.

        Args:
            predicate: Called with a snapshot of all spans received so far.
            timeout: Seconds to wait.

        Returns:
            The spans at the moment the predicate held.

        Raises:
            TimeoutError: It did not hold in time; lists the span names seen.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = list(self._spans)
                if predicate(snapshot):
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({f"{s.service_name}:{s.name}" for s in snapshot})
                    raise TimeoutError(
                        f"spans did not match within {timeout}s; received {len(snapshot)}: {names}"
                    )
                self._cond.wait(remaining)

    def wait_for_span(self, name: str, timeout: float = 10.0) -> ReceivedSpan:
        """Wait for the first span called ``name`` and return it."""
        spans = self.wait_for(lambda got: any(s.name == name for s in got), timeout)
        return next(s for s in spans if s.name == name)


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A running OTLP/gRPC trace receiver for one test.

    Use ``.endpoint``, ``.spans()``, ``.wait_for(predicate)`` and ``.clear()``.
    """
    receiver = OtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
