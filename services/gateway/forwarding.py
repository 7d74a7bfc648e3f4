"""Forward every method of the backend services as raw bytes.

The gateway never deserializes a forwarded message: a generic handler serves
each method discovered from the generated descriptors, checks the caller's
key, scope and rate, and relays the request bytes to the backend that owns the
service and the response bytes (or the upstream status) back. Deadlines are
propagated (capped), cancellation goes both ways (streams and long polls), the internal service
credential and the caller's key name are added, and W3C trace context is
injected so the backend's spans join the caller's trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from longshore.kanban.v1 import kanban_service_pb2, worker_service_pb2
from longshore.sandbox.v1 import sandbox_service_pb2
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from services.gateway.auth import Gate, Principal
from services.runtime.callers import PRINCIPAL_KEY, SCOPES_KEY, caller_metadata
from services.runtime.errors import ResourceExhausted, Unavailable
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
# Unary methods whose backend waits on purpose: forwarded so that a client's
# cancellation reaches the backend. Other unary calls are short and forwarded
# with a plain blocking call (cheaper); a cancelled one runs out upstream
# within its propagated deadline. Server streams always pass cancellation on.
LONG_POLL_METHODS = frozenset({"/longshore.kanban.v1.WorkerService/ClaimTask"})
# A remaining time beyond this means the client set no deadline at all.
_NO_DEADLINE = 10 * 365 * 86400.0


@dataclass(frozen=True)
class MethodInfo:
    """One forwarded RPC as the descriptors describe it."""

    service: str
    path: str
    backend: str
    server_streaming: bool


def forwarded_methods() -> list[MethodInfo]:
    """Return every method of the forwarded services, from the generated descriptors.

    Raises:
        RuntimeError: A method streams client messages (not supported).
    """
    methods: list[MethodInfo] = []
    for module, name, backend in FORWARDED_SERVICES:
        service = module.DESCRIPTOR.services_by_name[name]
        for method in service.methods:
            if method.client_streaming:
                raise RuntimeError(f"{service.full_name}/{method.name}: client streaming")
            methods.append(
                MethodInfo(
                    service=service.full_name,
                    path=f"/{service.full_name}/{method.name}",
                    backend=backend,
                    server_streaming=method.server_streaming,
                )
            )
    return methods


def forwarded_service_names() -> list[str]:
    """Return the full names of the forwarded services (for reflection)."""
    return [
        module.DESCRIPTOR.services_by_name[name].full_name for module, name, _ in FORWARDED_SERVICES
    ]


@dataclass(frozen=True)
class Backend:
    """A backend the gateway dials."""

    name: str
    address: str
    channel: grpc.Channel


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


def backend_channel(address: str, max_message_bytes: int) -> grpc.Channel:
    """Open the raw channel the gateway forwards over.

    Plain (not intercepted) on purpose: the forwarder injects the credential
    and trace context itself and needs the call objects to cancel them.
    """
    limit = max_message_bytes + 64 * 1024
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.enable_retries", 0),
        ],
    )


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
            tracer_provider: Provider for the client spans; the global one by default.
        """
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        by_name = {b.name: b for b in backends}
        self._gate = gate
        self._token = internal_token
        self._deadlines = deadlines
        self._max_bytes = max_message_bytes
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
        if info.server_streaming:
            stream_call: grpc.UnaryStreamMultiCallable[bytes, bytes] = backend.channel.unary_stream(
                info.path
            )

            def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                return self._forward_stream(info, backend, stream_call, request, context)

            return grpc.unary_stream_rpc_method_handler(stream)
        unary_call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = backend.channel.unary_unary(
            info.path
        )

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return self._forward_unary(info, backend, unary_call, request, context)

        return grpc.unary_unary_rpc_method_handler(unary)

    def _prepare(
        self, info: MethodInfo, request: bytes, context: grpc.ServicerContext
    ) -> Principal:
        principal = self._gate.admit(context.invocation_metadata() or (), info.path)
        if len(request) > self._max_bytes:
            raise ResourceExhausted(
                f"request of {len(request)} bytes exceeds the gateway limit of "
                f"{self._max_bytes} bytes (gateway.max_message_bytes)"
            )
        return principal

    def _metadata(
        self, principal: Principal, context: grpc.ServicerContext
    ) -> tuple[tuple[str, str | bytes], ...]:
        metadata: list[tuple[str, str | bytes]] = [
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if key not in _STRIPPED and not key.startswith(":")
        ]
        metadata.append((INTERNAL_TOKEN_KEY, self._token))
        # The backends trust these only because the internal token comes with
        # them; a client's own copies were stripped above.
        metadata.extend(caller_metadata(principal.name, principal.scopes))
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata.extend(carrier.items())
        return tuple(metadata)

    def _timeout(self, context: grpc.ServicerContext, *, streaming: bool) -> float:
        timeout = self._deadlines.timeout(context.time_remaining(), streaming=streaming)
        if timeout <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired at the gateway")
        return timeout

    def _forward_unary(
        self,
        info: MethodInfo,
        backend: Backend,
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes],
        request: bytes,
        context: grpc.ServicerContext,
    ) -> bytes:
        principal = self._prepare(info, request, context)
        timeout = self._timeout(context, streaming=False)
        with _client_span(self._tracer, info, backend, principal) as span:
            # Inside the client span, so the backend's spans become its children.
            metadata = self._metadata(principal, context)
            try:
                if info.path in LONG_POLL_METHODS:
                    # Worth a future (about +0.5 ms): a caller that gives up
                    # must not hold a backend long poll until its deadline.
                    future = call.future(request, timeout=timeout, metadata=metadata)
                    if not context.add_callback(lambda: _discard(future.cancel())):
                        future.cancel()  # the caller left before we registered
                    response: bytes = future.result()
                else:
                    response = call(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as exc:
                raise _upstream_error(exc, backend, span) from None
        self._check_response(len(response), info)
        return response

    def _forward_stream(
        self,
        info: MethodInfo,
        backend: Backend,
        call: grpc.UnaryStreamMultiCallable[bytes, bytes],
        request: bytes,
        context: grpc.ServicerContext,
    ) -> Iterator[bytes]:
        principal = self._prepare(info, request, context)
        timeout = self._timeout(context, streaming=True)
        with _client_span(self._tracer, info, backend, principal) as span:
            responses = call(request, timeout=timeout, metadata=self._metadata(principal, context))
            cancel: Callable[[], Any] = responses.cancel
            if not context.add_callback(lambda: _discard(cancel())):
                cancel()  # the caller left before we registered
            try:
                for message in responses:
                    self._check_response(len(message), info)
                    yield message
            except grpc.RpcError as exc:
                raise _upstream_error(exc, backend, span) from None
            finally:
                # The client went away or we stopped early: end the upstream stream too.
                cancel()

    def _check_response(self, size: int, info: MethodInfo) -> None:
        if size > self._max_bytes:
            raise ResourceExhausted(
                f"{info.path}: response of {size} bytes exceeds the gateway limit of "
                f"{self._max_bytes} bytes (gateway.max_message_bytes)"
            )


def _discard(_: object) -> None:
    """Drop a return value (``add_callback`` wants callables returning None)."""


def _client_span(
    tracer: trace.Tracer, info: MethodInfo, backend: Backend, principal: Principal
) -> Any:
    service, _, method = info.path.lstrip("/").partition("/")
    return tracer.start_as_current_span(
        info.path,
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "longshore.backend": backend.name,
            "longshore.principal": principal.name,
            "server.address": backend.address,
        },
        record_exception=False,
        set_status_on_exception=False,
    )


def _upstream_error(exc: grpc.RpcError, backend: Backend, span: trace.Span) -> Exception:
    """Return what to raise for a failed upstream call (the interceptor maps it)."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code == grpc.StatusCode.UNAVAILABLE:
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
