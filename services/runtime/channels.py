"""Client channels between services: traced, credentialed, with default deadlines.

``open_channel`` wraps an insecure channel (services talk on a private network
or loopback) with the OpenTelemetry client interceptor, which propagates W3C
trace context, and with :class:`_CallDefaults`, which adds the internal
credential and a default deadline to unary calls that set none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

from services.runtime.interceptors import INTERNAL_TOKEN_KEY
from services.runtime.serving import DEFAULT_MAX_MESSAGE_BYTES, trace_filter

DEFAULT_TIMEOUT_SECONDS = 10.0


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


class _CallDefaults(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds metadata to every call and a deadline to unary calls without one."""

    def __init__(self, metadata: Sequence[tuple[str, str]], default_timeout: float | None) -> None:
        self._metadata = list(metadata)
        self._timeout = default_timeout

    def _details(self, details: grpc.ClientCallDetails, unary: bool) -> _Details:
        metadata: list[tuple[str, str | bytes]] = list(details.metadata or ())
        present = {key for key, _ in metadata}
        metadata.extend(item for item in self._metadata if item[0] not in present)
        timeout = details.timeout
        if timeout is None and unary:
            timeout = self._timeout
        return _Details(
            details.method,
            timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details, True), request)

    def intercept_unary_stream(  # type: ignore[override]
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Iterator[Any]],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Iterator[Any]:
        return continuation(self._details(client_call_details, False), request)


def open_channel(
    target: str,
    *,
    internal_token: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    tracer_provider: trace.TracerProvider | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """Opens a channel to ``target`` (``host:port``) for service-to-service calls.

    Args:
        target: Peer address.
        internal_token: Credential the peer requires; sent as metadata.
        metadata: Extra metadata for every call (e.g. ``authorization``).
        default_timeout: Deadline for unary calls that set none; streams are
            unbounded unless the caller sets one.
        tracer_provider: Provider for client spans; the global one by default.
        max_message_bytes: Largest message sent or received.
        options: Further channel options, e.g. ``("grpc.service_config", json)``
            for a retry policy.

    Returns:
        A channel whose stubs propagate trace context.
    """
    base = grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            *options,
        ],
    )
    extra = list(metadata)
    if internal_token:
        extra.append((INTERNAL_TOKEN_KEY, internal_token))
    traced = grpcext.intercept_channel(
        base, client_interceptor(tracer_provider=tracer_provider, filter_=trace_filter())
    )
    return grpc.intercept_channel(traced, _CallDefaults(extra, default_timeout))
