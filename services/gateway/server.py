"""Assemble the gateway server from its settings (used by ``__main__`` and tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from longshore.gateway.v1 import gateway_service_pb2_grpc
from opentelemetry import trace
from opentelemetry.metrics import Meter

from services.gateway.auth import Gate, KeyRing
from services.gateway.forwarding import (
    Backend,
    DeadlinePolicy,
    Forwarder,
    forwarded_service_names,
)
from services.gateway.ratelimit import RateLimiter
from services.gateway.scopes import check_complete
from services.gateway.settings import GatewaySettings
from services.gateway.status import StatusServicer
from services.runtime.aio_serving import AioServer, AioService, build_aio_server
from services.runtime.rpc_metrics import CallWindow

GATEWAY_SERVICE = "longshore.gateway.v1.GatewayService"


@dataclass
class Gateway:
    """A built (not yet started) gateway and what to close after it stops."""

    server: AioServer
    backends: list[Backend]
    status: StatusServicer
    keys: KeyRing
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Stop the server if it still runs (its shutdown closes the backend channels)."""
        if self._closed:
            return
        self._closed = True
        self.server.stop(0)


def build_gateway(
    settings: GatewaySettings,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter: Meter | None = None,
) -> Gateway:
    """Build the gateway server: forwarding, GetStatus, health and reflection.

    Args:
        settings: Loaded gateway settings.
        tracer_provider: Provider for server spans; the global one by default.
        meter: Records RPC metrics (see services.runtime.rpc_metrics); None = not
            recorded. GetStatus reports the last minute of traffic either way.

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
        # Every kanban replica shares one database, so any may serve any call:
        # round robin. A sandbox lives on the manager that made it: pick-first.
        Backend(
            name,
            peer.addr,
            max_message_bytes=section.max_message_bytes,
            balanced=name == "kanban",
        )
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
    traffic = CallWindow()
    status = StatusServicer(
        backends,
        gate=gate,
        deployment=settings.deployment,
        probe_timeout=section.health_probe_timeout_seconds,
        traffic=traffic,
    )
    names = forwarded_service_names()
    services = [
        AioService(
            GATEWAY_SERVICE,
            lambda s: gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(status, s),
        ),
        # One generic handler serves every forwarded method; every name is
        # listed so that health and reflection report the forwarded services.
        AioService(names[0], lambda s: s.add_generic_rpc_handlers((forwarder,))),
        *(AioService(name, lambda s: None) for name in names[1:]),
    ]
    # No max_workers: a held call costs a coroutine. gateway.max_workers now
    # bounds the calls in flight (beyond it: RESOURCE_EXHAUSTED).
    server = build_aio_server(
        services,
        listen=section.listen,
        tracer_provider=tracer_provider,
        max_message_bytes=section.max_message_bytes,
        max_concurrent_rpcs=section.max_concurrent_calls or None,
        shutdown_delay=settings.shutdown_delay_seconds,
        meter=meter,
        call_window=traffic,
    )
    for backend in backends:
        server.add_shutdown_hook(backend.close)
    return Gateway(server=server, backends=backends, status=status, keys=keys)
