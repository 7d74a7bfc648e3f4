"""Forward every method of the backend services as raw bytes.

The gateway never deserializes a forwarded message: a generic handler serves
each method discovered from the generated descriptors, checks the caller's
key, scope and rate, and relays the request bytes to the backend that owns the
service and the response bytes (or the upstream status) back. Deadlines are
propagated (capped), cancellation goes both ways (streams and long polls), the internal service
credential and the caller's key name are added, and W3C trace context is
injected so the backend's spans join the caller's trace.

Bidirectional streams (RunProcess) are relayed the same way, message by
message both ways, each request bounded like an upload's.

Unary, server-streaming and bidirectional calls open no client span: the serving layer's
server span is current while they run, and its context is what the backend
receives, so the backend's server span is its child. A client span there cost
every forwarded call ~20 us of the gateway's CPU (about 3%) and every held
long poll or stream ~3 KB of Python heap (a span's attribute map and event and
link lists live as long as the call), for a span that began and ended within
microseconds of the server span around it; the server span records the
status the caller gets, which for an upstream failure is the upstream's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from longshore.kanban.v1 import kanban_service_pb2, worker_service_pb2
from longshore.sandbox.v1 import sandbox_service_pb2
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from services.gateway.auth import Gate, Principal
from services.runtime.callers import PRINCIPAL_KEY, SCOPES_KEY, caller_metadata
from services.runtime.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from services.runtime.interceptors import INTERNAL_TOKEN_KEY

log = logging.getLogger(__name__)

# (generated module, service name, backend that owns it)
FORWARDED_SERVICES: tuple[tuple[Any, str, str], ...] = (
    (sandbox_service_pb2, "SandboxService", "sandbox"),
    (kanban_service_pb2, "KanbanService", "kanban"),
    (worker_service_pb2, "WorkerService", "kanban"),
)

# Metadata never relayed upstream: credentials and caller identity the gateway
# replaces, trace headers it re-injects from its own span, and transport
# headers. A sandbox token (`longshore-sandbox-token`) is relayed: the sandbox
# manager verifies it.
_STRIPPED = frozenset(
    {
        "authorization",
        INTERNAL_TOKEN_KEY,
        PRINCIPAL_KEY,
        SCOPES_KEY,
        "traceparent",
        "tracestate",
        "baggage",
        "user-agent",
        "te",
        "content-type",
        "grpc-accept-encoding",
        "grpc-encoding",
        "grpc-timeout",
    }
)
# A remaining time beyond this means the client set no deadline at all.
_NO_DEADLINE = 10 * 365 * 86400.0


@dataclass(frozen=True)
class MethodInfo:
    """One forwarded RPC as the descriptors describe it."""

    service: str
    path: str
    backend: str
    server_streaming: bool
    client_streaming: bool = False


def forwarded_methods() -> list[MethodInfo]:
    """Return every method of the forwarded services, from the generated descriptors."""
    methods: list[MethodInfo] = []
    for module, name, backend in FORWARDED_SERVICES:
        service = module.DESCRIPTOR.services_by_name[name]
        for method in service.methods:
            methods.append(
                MethodInfo(
                    service=service.full_name,
                    path=f"/{service.full_name}/{method.name}",
                    backend=backend,
                    server_streaming=method.server_streaming,
                    client_streaming=method.client_streaming,
                )
            )
    return methods


def forwarded_service_names() -> list[str]:
    """Return the full names of the forwarded services (for reflection)."""
    return [
        module.DESCRIPTOR.services_by_name[name].full_name for module, name, _ in FORWARDED_SERVICES
    ]


class Backend:
    """A backend the gateway dials: its name, configured address and ``grpc.aio`` channel.

    The channel is opened on first use, which happens on the server's event
    loop (an aio channel belongs to the loop it was opened on).
    """

    def __init__(self, name: str, address: str, *, max_message_bytes: int, balanced: bool) -> None:
        """Describe a backend.

        Args:
            name: ``kanban`` or ``sandbox``.
            address: As configured: ``host:port``, a comma-separated list of
                ``ip:port``, or a gRPC target (``dns:///kanban:50052``).
            max_message_bytes: Largest message relayed.
            balanced: Round robin over every address the target resolves to
                (kanban replicas), instead of gRPC's pick-first.
        """
        self.name = name
        self.address = address
        self.target = channel_target(address)
        self._limit = max_message_bytes + 64 * 1024
        self._balanced = balanced
        self._channel: aio.Channel | None = None
        # One multicallable per method, made once: building one per call costs.
        self._unary: dict[str, aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self._stream: dict[str, aio.UnaryStreamMultiCallable[bytes, bytes]] = {}
        self._upload: dict[str, aio.StreamUnaryMultiCallable[bytes, bytes]] = {}
        self._bidi: dict[str, aio.StreamStreamMultiCallable[bytes, bytes]] = {}

    @property
    def channel(self) -> aio.Channel:
        """The raw channel to forward over (opened on first use, on the loop)."""
        if self._channel is None:
            self._channel = backend_channel(self.target, self._limit, balanced=self._balanced)
        return self._channel

    def unary_unary(self, path: str) -> aio.UnaryUnaryMultiCallable[bytes, bytes]:
        """The raw-bytes unary method ``path`` on this backend's channel."""
        method = self._unary.get(path)
        if method is None:
            method = self._unary[path] = self.channel.unary_unary(path)
        return method

    def unary_stream(self, path: str) -> aio.UnaryStreamMultiCallable[bytes, bytes]:
        """The raw-bytes server-streaming method ``path`` on this backend's channel."""
        method = self._stream.get(path)
        if method is None:
            method = self._stream[path] = self.channel.unary_stream(path)
        return method

    def stream_unary(self, path: str) -> aio.StreamUnaryMultiCallable[bytes, bytes]:
        """The raw-bytes client-streaming method ``path`` on this backend's channel."""
        method = self._upload.get(path)
        if method is None:
            method = self._upload[path] = self.channel.stream_unary(path)
        return method

    def stream_stream(self, path: str) -> aio.StreamStreamMultiCallable[bytes, bytes]:
        """The raw-bytes bidirectional method ``path`` on this backend's channel."""
        method = self._bidi.get(path)
        if method is None:
            method = self._bidi[path] = self.channel.stream_stream(path)
        return method

    async def close(self) -> None:
        """Close the channel (cancels what is still in flight on it)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._unary.clear()
            self._stream.clear()
            self._upload.clear()
            self._bidi.clear()


def channel_target(address: str) -> str:
    """Return the gRPC target for a configured backend address.

    ``a:1,b:2`` (several replicas listed) becomes ``ipv4:a:1,b:2``; a target
    with a scheme is kept; ``host:port`` becomes ``dns:///host:port``, so
    every address the name resolves to (``docker compose up --scale
    kanban=3``) is a subchannel.
    """
    address = address.strip()
    if "," in address:
        return "ipv4:" + ",".join(part.strip() for part in address.split(",") if part.strip())
    if ":///" in address or address.startswith(("ipv4:", "ipv6:", "unix:")):
        return address
    return f"dns:///{address}"


@dataclass(frozen=True)
class DeadlinePolicy:
    """How long a forwarded call may take upstream."""

    default_seconds: float
    max_unary_seconds: float
    max_stream_seconds: float

    def timeout(self, remaining: float | None, *, streaming: bool) -> float:
        """Return the upstream timeout for a call with ``remaining`` seconds left.

        No client deadline means the default (unary) or the stream cap; a
        client deadline is kept but capped.
        """
        cap = self.max_stream_seconds if streaming else self.max_unary_seconds
        if remaining is None or remaining >= _NO_DEADLINE:
            return cap if streaming else min(self.default_seconds, cap)
        return max(0.0, min(remaining, cap))


def backend_channel(target: str, limit: int, *, balanced: bool) -> aio.Channel:
    """Open the raw channel the gateway forwards over.

    Plain (not intercepted) on purpose: the forwarder injects the credential
    and trace context itself. With ``balanced``, calls are spread round robin
    over every address ``target`` resolves to.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.enable_retries", 0),
    ]
    if balanced:
        options.append(("grpc.lb_policy_name", "round_robin"))
    return aio.insecure_channel(target, options=options)


class Forwarder(grpc.GenericRpcHandler):
    """Serves every forwarded method by relaying bytes to its backend."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        gate: Gate,
        internal_token: str,
        deadlines: DeadlinePolicy,
        max_message_bytes: int,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        """Create the forwarder.

        Args:
            backends: One per backend name used in :data:`FORWARDED_SERVICES`.
            gate: Authenticates, authorizes and rate-limits calls.
            internal_token: Credential the backends require.
            deadlines: Upstream deadline policy.
            max_message_bytes: Largest request or response message relayed.
            tracer_provider: Provider for the uploads' client spans; the global one by default.
        """
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        by_name = {b.name: b for b in backends}
        self._gate = gate
        self._token = internal_token
        self._deadlines = deadlines
        self._max_bytes = max_message_bytes
        # What the gateway adds for each principal, made on its first call: the
        # key ring is fixed for the process, so this stays as small as it is.
        self._vouched: dict[Principal, tuple[tuple[str, str], ...]] = {}
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}
        for info in forwarded_methods():
            backend = by_name[info.backend]
            self._handlers[info.path] = self._handler(info, backend)

    @property
    def methods(self) -> list[str]:
        """Full paths of every method served."""
        return sorted(self._handlers)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        """Return the handler of a forwarded method, or None for any other."""
        return self._handlers.get(handler_call_details.method)

    def _handler(self, info: MethodInfo, backend: Backend) -> grpc.RpcMethodHandler[bytes, bytes]:
        # The client span attributes every upload of this method shares, made once.
        service, _, method = info.path.lstrip("/").partition("/")
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "longshore.backend": backend.name,
            "server.address": backend.address,
        }
        if info.client_streaming and info.server_streaming:
            bidi = functools.partial(self._forward_bidi, info, backend)
            return grpc.stream_stream_rpc_method_handler(bidi)
        if info.client_streaming:

            async def upload(
                requests: AsyncIterator[bytes], context: aio.ServicerContext[bytes, bytes]
            ) -> bytes:
                return await self._forward_upload(info, backend, attributes, requests, context)

            return grpc.stream_unary_rpc_method_handler(upload)
        # Partials, not wrapping coroutines: one await less on every call, and
        # one async generator less alive for every held stream.
        if info.server_streaming:
            stream = functools.partial(self._forward_stream, info, backend)
            return grpc.unary_stream_rpc_method_handler(stream)
        unary = functools.partial(self._forward_unary, info, backend)
        return grpc.unary_unary_rpc_method_handler(unary)

    def _prepare(
        self, info: MethodInfo, request: bytes, metadata: Collection[tuple[str, str | bytes]]
    ) -> Principal:
        principal = self._gate.admit(metadata, info.path)
        if len(request) > self._max_bytes:
            raise ResourceExhausted(
                f"request of {len(request)} bytes exceeds the gateway limit of "
                f"{self._max_bytes} bytes (gateway.max_message_bytes)"
            )
        return principal

    def _metadata(
        self,
        principal: Principal,
        received: Collection[tuple[str, str | bytes]],
        span: trace.Span | None = None,
    ) -> aio.Metadata:
        metadata: list[tuple[str, str | bytes]] = [
            (key, value)
            for key, value in received
            if key not in _STRIPPED and not key.startswith(":")
        ]
        vouched = self._vouched.get(principal)
        if vouched is None:
            # The backends trust the caller's name and scopes only because the
            # internal token comes with them; a client's own copies were
            # stripped above.
            vouched = self._vouched[principal] = (
                (INTERNAL_TOKEN_KEY, self._token),
                *caller_metadata(principal.name, principal.scopes),
            )
        metadata.extend(vouched)
        # The context of ``span`` (a client span), else the current one (the
        # server span and the caller's baggage), so the backend's spans become
        # its children.
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=None if span is None else trace.set_span_in_context(span))
        metadata.extend(carrier.items())
        return aio.Metadata(*metadata)

    def _timeout(self, context: aio.ServicerContext[bytes, bytes], *, streaming: bool) -> float:
        """The upstream timeout (not a coroutine: an await less on every call).

        Raises:
            DeadlineExceeded: The client's deadline has already passed.
        """
        timeout = self._deadlines.timeout(context.time_remaining(), streaming=streaming)
        if timeout <= 0:
            raise DeadlineExceeded("deadline expired at the gateway")
        return timeout

    def _client_span(
        self, info: MethodInfo, attributes: dict[str, str], principal: Principal
    ) -> trace.Span:
        """Start the span of the upstream call (not made current: nothing else runs in it).

        The caller ends it.
        """
        return self._tracer.start_span(
            info.path,
            kind=SpanKind.CLIENT,
            attributes={**attributes, "longshore.principal": principal.name},
            record_exception=False,
            set_status_on_exception=False,
        )

    async def _forward_unary(
        self,
        info: MethodInfo,
        backend: Backend,
        request: bytes,
        context: aio.ServicerContext[bytes, bytes],
    ) -> bytes:
        received = context.invocation_metadata() or ()
        principal = self._prepare(info, request, received)
        timeout = self._timeout(context, streaming=False)
        metadata = self._metadata(principal, received)
        call = backend.unary_unary(info.path)(request, timeout=timeout, metadata=metadata)
        try:
            response: bytes = await call
        except asyncio.CancelledError:
            # The client went away (the server cancels this coroutine):
            # a backend long poll must not be held until its deadline.
            call.cancel()
            raise
        except grpc.RpcError as exc:
            raise _upstream_error(exc, backend) from None
        self._check_response(len(response), info)
        return response

    async def _forward_stream(
        self,
        info: MethodInfo,
        backend: Backend,
        request: bytes,
        context: aio.ServicerContext[bytes, bytes],
    ) -> AsyncIterator[bytes]:
        received = context.invocation_metadata() or ()
        principal = self._prepare(info, request, received)
        timeout = self._timeout(context, streaming=True)
        metadata = self._metadata(principal, received)
        call = backend.unary_stream(info.path)(request, timeout=timeout, metadata=metadata)
        try:
            async for message in call:
                self._check_response(len(message), info)
                yield message
        except grpc.RpcError as exc:
            raise _upstream_error(exc, backend) from None
        finally:
            # The client went away (CancelledError) or we stopped early:
            # end the upstream stream too.
            call.cancel()

    async def _forward_upload(
        self,
        info: MethodInfo,
        backend: Backend,
        attributes: dict[str, str],
        requests: AsyncIterator[bytes],
        context: aio.ServicerContext[bytes, bytes],
    ) -> bytes:
        """Relay a client stream message by message (WriteFiles), each bounded like a request."""
        received = context.invocation_metadata() or ()
        principal = self._gate.admit(received, info.path)
        timeout = self._timeout(context, streaming=True)
        too_big: list[ResourceExhausted] = []

        async def relay() -> AsyncIterator[bytes]:
            async for message in requests:
                if len(message) > self._max_bytes:
                    # Raising here would surface as the upstream's CANCELLED;
                    # keep the precise error and end the upstream call instead.
                    too_big.append(
                        ResourceExhausted(
                            f"request message of {len(message)} bytes exceeds the gateway "
                            f"limit of {self._max_bytes} bytes (gateway.max_message_bytes)"
                        )
                    )
                    call.cancel()
                    return
                yield message

        span = self._client_span(info, attributes, principal)
        try:
            metadata = self._metadata(principal, received, span)
            call = backend.stream_unary(info.path)(relay(), timeout=timeout, metadata=metadata)
            try:
                response: bytes = await call
            except asyncio.CancelledError:
                if too_big:
                    raise too_big[0] from None
                call.cancel()
                raise
            except grpc.RpcError as exc:
                if too_big:
                    raise too_big[0] from None
                raise _upstream_error(exc, backend, span) from None
        finally:
            span.end()
        self._check_response(len(response), info)
        return response

    async def _forward_bidi(
        self,
        info: MethodInfo,
        backend: Backend,
        requests: AsyncIterator[bytes],
        context: aio.ServicerContext[bytes, bytes],
    ) -> AsyncIterator[bytes]:
        """Relay a bidirectional stream (RunProcess): requests up as they come, responses down.

        The caller's half-close reaches the backend (the relay ends); a caller
        that goes away ends the call, whose done callback cancels the upstream
        call; an upstream that ends or fails ends the caller's call.
        """
        received = context.invocation_metadata() or ()
        principal = self._gate.admit(received, info.path)
        timeout = self._timeout(context, streaming=True)
        too_big: list[ResourceExhausted] = []

        async def relay() -> AsyncIterator[bytes]:
            async for message in requests:
                if len(message) > self._max_bytes:
                    # As for uploads: keep the precise error, end the upstream call.
                    too_big.append(
                        ResourceExhausted(
                            f"request message of {len(message)} bytes exceeds the gateway "
                            f"limit of {self._max_bytes} bytes (gateway.max_message_bytes)"
                        )
                    )
                    call.cancel()
                    return
                yield message

        metadata = self._metadata(principal, received)
        call = backend.stream_stream(info.path)(relay(), timeout=timeout, metadata=metadata)
        # A caller that goes away while the server writes to it closes this
        # generator only when it is collected (the serving layer wraps it), so
        # the call's own end cancels the upstream call, at once.
        context.add_done_callback(lambda _context: call.cancel())  # type: ignore[arg-type]
        try:
            async for message in call:
                self._check_response(len(message), info)
                yield message
        except asyncio.CancelledError:
            if too_big:
                raise too_big[0] from None
            raise
        except grpc.RpcError as exc:
            if too_big:
                raise too_big[0] from None
            raise _upstream_error(exc, backend) from None
        finally:
            call.cancel()

    def _check_response(self, size: int, info: MethodInfo) -> None:
        if size > self._max_bytes:
            raise ResourceExhausted(
                f"{info.path}: response of {size} bytes exceeds the gateway limit of "
                f"{self._max_bytes} bytes (gateway.max_message_bytes)"
            )


def _upstream_error(
    exc: grpc.RpcError, backend: Backend, span: trace.Span | None = None
) -> Exception:
    """Return what to raise for a failed upstream call (the interceptor maps it).

    ``span``, a client span of the upstream call, is given its status; without
    one the server span records the status the caller gets.
    """
    upstream = isinstance(exc, (grpc.Call, aio.AioRpcError))
    code = exc.code() if upstream else grpc.StatusCode.UNKNOWN
    details = (exc.details() if upstream else "") or ""
    if span is not None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code == grpc.StatusCode.UNAVAILABLE:
        if span is not None:
            span.set_status(StatusCode.ERROR, "backend unavailable")
        log.warning(
            "backend unavailable",
            extra={"backend": backend.name, "backend_address": backend.address},
        )
        return Unavailable(f"{backend.name} backend ({backend.address}) unavailable: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details:
        return ResourceExhausted(f"{backend.name} backend: {details}")
    # Client errors, deadlines and cancellations pass through unchanged.
    return exc
