"""The client side of every call between services: one span, trace context, defaults.

:class:`ClientInterceptor` (sync channels) and :class:`AioClientInterceptor`
(``grpc.aio`` channels) do for each call what the OpenTelemetry client
interceptor and the call defaults did together, and return the real call
object: a server stream stays a ``grpc.Call`` whose ``cancel()`` works from
any thread (the OpenTelemetry wrapper hands back a generator instead). Per
call they:

* start a CLIENT span named after the method (health checks and reflection
  excepted, as on the server), child of the current span;
* inject its W3C trace context (``traceparent``/``tracestate``) into the
  metadata, replacing any the caller set;
* add the channel's metadata (the internal credential, ...) unless the call
  sets the same key;
* give a unary call without a deadline the channel's default one;
* end the span when the call is done (cancelled streams included), with the
  status code as ``rpc.grpc.status_code`` and an error status unless OK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc import aio
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.runtime.server_base import trace_filter

Metadata = list[tuple[str, str | bytes]]
#: Keys the injected trace context owns (a caller's stale ones are dropped).
_TRACE_KEYS = frozenset({"traceparent", "tracestate"})


class _Details(grpc.ClientCallDetails):
    """Call details with our metadata and deadline filled in."""

    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = tuple(metadata) if metadata is not None else None
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


class _CallPlan:
    """What both interceptors add to a call: metadata, deadline, and the span."""

    def __init__(
        self,
        metadata: Sequence[tuple[str, str]],
        default_timeout: float | None,
        tracer_provider: trace.TracerProvider | None,
    ) -> None:
        self._metadata = list(metadata)
        self._timeout = default_timeout
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._traced = trace_filter()

    def begin(
        self,
        method: str | bytes,
        metadata: Any,
        timeout: float | None,
        details: Any,
        *,
        unary: bool,
    ) -> tuple[Metadata, float | None, Span | None]:
        """The call's metadata and deadline, and its span (None when not traced)."""
        if isinstance(method, bytes):  # how grpc.aio passes it
            method = method.decode()
        given: Metadata = [(str(k), v) for k, v in (metadata or ())]
        present = {key for key, _ in given}
        given.extend(item for item in self._metadata if item[0] not in present)
        if timeout is None and unary:
            timeout = self._timeout
        if not self._traced(details):
            return given, timeout, None
        service, _, name = method.lstrip("/").rpartition("/")
        span = self._tracer.start_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        given = [item for item in given if item[0] not in _TRACE_KEYS]
        given.extend(carrier.items())
        return given, timeout, span


def end_span(span: Span, code: grpc.StatusCode | None, details: str | None) -> None:
    """Ends a client span with the call's status."""
    code = code or grpc.StatusCode.UNKNOWN
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details or ''}"[:500]))
    span.end()


def _end_when_done(span: Span | None, call: Any) -> Any:
    """Ends ``span`` when the (sync) call completes; returns the call unchanged."""
    if span is not None:
        call.add_done_callback(lambda done: end_span(span, done.code(), done.details()))
    return call


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Traces a sync channel's calls and adds its defaults; returns the real calls.

    Args:
        metadata: Added to every call unless the call sets the key.
        default_timeout: Deadline of unary calls that set none.
        tracer_provider: Provider for client spans; the global one by default.
    """

    def __init__(
        self,
        metadata: Sequence[tuple[str, str]] = (),
        default_timeout: float | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._plan = _CallPlan(metadata, default_timeout, tracer_provider)

    def _call(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        details: grpc.ClientCallDetails,
        request: Any,
        *,
        unary: bool,
    ) -> Any:
        metadata, timeout, span = self._plan.begin(
            details.method, details.metadata, details.timeout, details, unary=unary
        )
        new = _Details(
            details.method,
            timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
        try:
            call = continuation(new, request)
        except BaseException as exc:
            if span is not None:
                end_span(span, getattr(exc, "code", lambda: None)(), str(exc))
            raise
        return _end_when_done(span, call)

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return self._call(continuation, client_call_details, request, unary=True)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return self._call(continuation, client_call_details, request, unary=False)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return self._call(continuation, client_call_details, request_iterator, unary=True)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return self._call(continuation, client_call_details, request_iterator, unary=False)


class AioClientInterceptor:
    """Traces a ``grpc.aio`` channel's calls and adds its defaults; returns the real calls.

    A ``grpc.aio`` channel files each interceptor under the first kind it is
    an instance of, so one object cannot serve all four: :attr:`interceptors`
    holds one per kind, sharing this one's plan; pass them all to the channel.

    Args:
        metadata: Added to every call unless the call sets the key.
        default_timeout: Deadline of unary calls that set none.
        tracer_provider: Provider for client spans; the global one by default.
    """

    def __init__(
        self,
        metadata: Sequence[tuple[str, str]] = (),
        default_timeout: float | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._plan = _CallPlan(metadata, default_timeout, tracer_provider)
        # The loop keeps only weak references to tasks: hold the span-ending
        # ones until they ran.
        self._ending: set[asyncio.Task[None]] = set()
        self.interceptors: list[aio.ClientInterceptor] = [
            _AioUnaryUnary(self),
            _AioUnaryStream(self),
            _AioStreamUnary(self),
            _AioStreamStream(self),
        ]

    async def call(
        self, continuation: Any, details: aio.ClientCallDetails, request: Any, *, unary: bool
    ) -> Any:
        """Starts the call with our metadata, deadline and span; returns the real call."""
        metadata, timeout, span = self._plan.begin(
            details.method, details.metadata, details.timeout, details, unary=unary
        )
        new = aio.ClientCallDetails(
            details.method,
            timeout,
            aio.Metadata(*metadata),
            details.credentials,
            details.wait_for_ready,
        )
        try:
            call = await continuation(new, request)
        except BaseException as exc:
            if span is not None:
                end_span(span, getattr(exc, "code", lambda: None)(), str(exc))
            raise
        if span is not None:
            call.add_done_callback(lambda done: self._end_later(span, done))
        return call

    def _end_later(self, span: Span, call: Any) -> None:
        # On the loop, in a done callback: the status is read with an await.
        async def end() -> None:
            try:
                code, details = await call.code(), await call.details()
            except asyncio.CancelledError:
                # The loop is closing: still end (and so export) the span.
                end_span(span, None, "the client's event loop ended first")
                raise
            end_span(span, code, details)

        task = asyncio.get_running_loop().create_task(end())
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)


class _AioUnaryUnary(aio.UnaryUnaryClientInterceptor):
    def __init__(self, owner: AioClientInterceptor) -> None:
        self._owner = owner

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self._owner.call(continuation, client_call_details, request, unary=True)


class _AioUnaryStream(aio.UnaryStreamClientInterceptor):
    def __init__(self, owner: AioClientInterceptor) -> None:
        self._owner = owner

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self._owner.call(continuation, client_call_details, request, unary=False)


class _AioStreamUnary(aio.StreamUnaryClientInterceptor):
    def __init__(self, owner: AioClientInterceptor) -> None:
        self._owner = owner

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await self._owner.call(
            continuation, client_call_details, request_iterator, unary=True
        )


class _AioStreamStream(aio.StreamStreamClientInterceptor):
    def __init__(self, owner: AioClientInterceptor) -> None:
        self._owner = owner

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        return await self._owner.call(
            continuation, client_call_details, request_iterator, unary=False
        )
