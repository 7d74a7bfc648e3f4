"""Run the gateway: ``python -m services.gateway``.

Wiring only: settings → logging → tracing → key ring, limiter, backends →
server. See :mod:`services.gateway.settings` for every variable.
"""

from __future__ import annotations

import logging
import sys

from longshore.gateway.v1 import gateway_service_pb2_grpc

from services.gateway.auth import ApiKeyFormatError, Gate, KeyRing
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
from services.runtime.config import SettingsError, load_settings
from services.runtime.logs import configure_logging
from services.runtime.serving import GrpcService, build_server
from services.runtime.tracing import configure_tracing

log = logging.getLogger("services.gateway")


def main() -> int:
    """Start the gateway and serve until SIGTERM/SIGINT; return the exit code."""
    try:
        settings = load_settings(GatewaySettings)
        keys = KeyRing.from_entries(settings.gateway.api_keys)
    except (SettingsError, ApiKeyFormatError) as exc:
        sys.stderr.write(f"gateway: {exc}\n")
        return 2
    if not settings.internal_token:
        sys.stderr.write("gateway: LONGSHORE_INTERNAL_TOKEN must be set (backends require it)\n")
        return 2
    configure_logging("gateway", settings.log_level)
    provider = configure_tracing("gateway", endpoint=settings.otel_endpoint)
    section = settings.gateway
    if not len(keys):
        log.warning("no API keys configured: every call will be UNAUTHENTICATED")
    gate = Gate(keys, RateLimiter(section.rate_limit_rps, section.rate_limit_burst))
    backends = [
        Backend(
            "kanban",
            settings.kanban.addr,
            backend_channel(settings.kanban.addr, section.max_message_bytes),
        ),
        Backend(
            "sandbox",
            settings.sandbox.addr,
            backend_channel(settings.sandbox.addr, section.max_message_bytes),
        ),
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
    )
    check_complete([*forwarder.methods, "/longshore.gateway.v1.GatewayService/GetStatus"])
    status = StatusServicer(
        backends,
        gate=gate,
        deployment=settings.deployment,
        probe_timeout=section.health_probe_timeout_seconds,
    )
    names = forwarded_service_names()
    services = [
        GrpcService(
            "longshore.gateway.v1.GatewayService",
            lambda s: gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(status, s),
        ),
        # One generic handler serves every forwarded method; the names are listed
        # so health and reflection report the forwarded services too.
        GrpcService(names[0], lambda s: s.add_generic_rpc_handlers((forwarder,))),
        *(GrpcService(name, lambda s: None) for name in names[1:]),
    ]
    try:
        server = build_server(
            services,
            listen=section.listen,
            max_workers=section.max_workers,
            max_message_bytes=section.max_message_bytes,
            shutdown_delay=settings.shutdown_delay_seconds,
        )
    except RuntimeError as exc:
        log.error("cannot start: %s", exc)
        return 1
    log.info("gateway listening", extra={"address": server.address, "api_keys": len(keys)})
    server.serve_until_signal()
    status.close()
    for backend in backends:
        backend.channel.close()
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
