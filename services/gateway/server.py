"""Assemble the gateway server from its settings (used by ``__main__`` and tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from longshore.gateway.v1 import gateway_service_pb2_grpc
from opentelemetry import trace

from services.gateway.auth import Gate, KeyRing
from services.gateway.forwarding import (
    Backend,
    DeadlinePolicy,
    Forwarder,
    backend_channel,
    forwarded_service_names,
)
from services.gateway.ratelimit import RateLimiter
from services.gateway.scopes import check_complete
from services.gateway.settings import GatewaySettings
from services.gateway.status import StatusServicer
from services.runtime.serving import GrpcService, Server, build_server

GATEWAY_SERVICE = "longshore.gateway.v1.GatewayService"


@dataclass
class Gateway:
    """A built (not yet started) gateway and what to close after it stops."""

    server: Server
    backends: list[Backend]
    status: StatusServicer
    keys: KeyRing
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Release the backend channels and probe threads (after the server stopped)."""
        if self._closed:
            return
        self._closed = True
        self.status.close()
        for backend in self.backends:
            backend.channel.close()


def build_gateway(
    settings: GatewaySettings,
    *,
    tracer_provider: trace.TracerProvider | None = None,
) -> Gateway:
    """Build the gateway server: forwarding, GetStatus, health and reflection.

    Args:
        settings: Loaded gateway settings.
        tracer_provider: Provider for server spans; the global one by default.

    Returns:
        The gateway; start it with ``gateway.server.start()`` or
        ``serve_until_signal()`` and call :meth:`Gateway.close` after it stopped.

    Raises:
        services.gateway.auth.ApiKeyFormatError: A configured key is malformed.
        RuntimeError: A served method lacks a scope, or the address cannot be bound.
    """
    section = settings.gateway
    keys = KeyRing.from_entries(section.api_keys)
    gate = Gate(keys, RateLimiter(section.rate_limit_rps, section.rate_limit_burst))
    backends = [
        Backend(name, peer.addr, backend_channel(peer.addr, section.max_message_bytes))
        for name, peer in (("kanban", settings.kanban), ("sandbox", settings.sandbox))
    ]
    forwarder = Forwarder(
        backends,
        gate=gate,
        internal_token=settings.internal_token,
        deadlines=DeadlinePolicy(
            default_seconds=section.default_deadline_seconds,
            max_unary_seconds=section.max_deadline_seconds,
            max_stream_seconds=section.max_stream_seconds,
        ),
        max_message_bytes=section.max_message_bytes,
        tracer_provider=tracer_provider,
    )
    check_complete([*forwarder.methods, f"/{GATEWAY_SERVICE}/GetStatus"])
    status = StatusServicer(
        backends,
        gate=gate,
        deployment=settings.deployment,
        probe_timeout=section.health_probe_timeout_seconds,
    )
    names = forwarded_service_names()
    services = [
        GrpcService(
            GATEWAY_SERVICE,
            lambda s: gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(status, s),
        ),
        # One generic handler serves every forwarded method; every name is
        # listed so that health and reflection report the forwarded services.
        GrpcService(names[0], lambda s: s.add_generic_rpc_handlers((forwarder,))),
        *(GrpcService(name, lambda s: None) for name in names[1:]),
    ]
    try:
        server = build_server(
            services,
            listen=section.listen,
            max_workers=section.max_workers,
            tracer_provider=tracer_provider,
            max_message_bytes=section.max_message_bytes,
            shutdown_delay=settings.shutdown_delay_seconds,
        )
    except RuntimeError:
        status.close()
        for backend in backends:
            backend.channel.close()
        raise
    return Gateway(server=server, backends=backends, status=status, keys=keys)
