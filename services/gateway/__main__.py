"""Run the gateway: ``python -m services.gateway``.

Wiring only: settings → logging → tracing → server, through
:func:`services.runtime.service_main.run_service`. Every variable is listed in
:mod:`services.gateway.settings`; API keys are documented in
:mod:`services.gateway.auth`.
"""

from __future__ import annotations

import logging
import sys

from services.gateway.auth import ApiKeyFormatError
from services.gateway.server import build_gateway
from services.gateway.settings import GatewaySettings
from services.runtime.aio_serving import AioServer
from services.runtime.config import SettingsError
from services.runtime.service_main import ServiceParts, run_service

log = logging.getLogger("services.gateway")


def build(settings: GatewaySettings, parts: ServiceParts) -> AioServer:
    """The gateway's server, bound; its shutdown closes the backend channels."""
    if not settings.internal_token:
        raise SettingsError("LONGSHORE_INTERNAL_TOKEN must be set (backends require it)")
    gateway = build_gateway(settings, meter=parts.meters.recording_meter("longshore.gateway"))
    parts.close_on_exit(gateway.close)
    if not len(gateway.keys):
        log.warning("no API keys configured: every call will be UNAUTHENTICATED")
    log.info(
        "gateway ready",
        extra={
            "address": gateway.server.address,
            "api_keys": len(gateway.keys),
            "backends": {b.name: b.address for b in gateway.backends},
        },
    )
    return gateway.server


def main() -> int:
    """Serve the gateway until SIGTERM/SIGINT; return the exit code."""
    return run_service("gateway", GatewaySettings, build, refusals=(ApiKeyFormatError,))


if __name__ == "__main__":
    sys.exit(main())
