"""Client channels between services: traced, credentialed, with default deadlines.

``open_channel`` (sync) and ``open_aio_channel`` (``grpc.aio``) open an
insecure channel (services talk on a private network or loopback) through
:mod:`services.runtime.client_interceptors`: a client span per call with W3C
trace context in the metadata, the internal credential, and a default
deadline for unary calls that set none. Stubs on these channels return the
real call objects, so a server stream can be ``cancel()``-ed from any thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio
from opentelemetry import trace

from services.runtime.client_interceptors import AioClientInterceptor, ClientInterceptor
from services.runtime.interceptors import INTERNAL_TOKEN_KEY
from services.runtime.server_base import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_TIMEOUT_SECONDS = 10.0


def _options(max_message_bytes: int, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        *options,
    ]


def _metadata(
    internal_token: str | None, metadata: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    extra = list(metadata)
    if internal_token:
        extra.append((INTERNAL_TOKEN_KEY, internal_token))
    return extra


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
        A channel whose stubs propagate trace context and return real calls.
    """
    base = grpc.insecure_channel(target, options=_options(max_message_bytes, options))
    interceptor = ClientInterceptor(
        _metadata(internal_token, metadata), default_timeout, tracer_provider
    )
    return grpc.intercept_channel(base, interceptor)


def open_aio_channel(
    target: str,
    *,
    internal_token: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    tracer_provider: trace.TracerProvider | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[tuple[str, Any]] = (),
) -> aio.Channel:
    """:func:`open_channel` for ``grpc.aio`` clients; open it on the loop that uses it.

    Args and returns: as :func:`open_channel`, with an aio channel.
    """
    interceptor = AioClientInterceptor(
        _metadata(internal_token, metadata), default_timeout, tracer_provider
    )
    return aio.insecure_channel(
        target,
        options=_options(max_message_bytes, options),
        interceptors=interceptor.interceptors,
    )
