"""Run the gateway: ``python -m services.gateway``.

Wiring only: settings → logging → tracing → server. Every variable is listed
in :mod:`services.gateway.settings`; API keys are documented in
:mod:`services.gateway.auth`.
"""

from __future__ import annotations

import logging
import sys

from services.gateway.auth import ApiKeyFormatError
from services.gateway.server import build_gateway
from services.gateway.settings import GatewaySettings
from services.runtime.config import SettingsError, load_settings
from services.runtime.logs import configure_logging
from services.runtime.metrics import configure_metrics
from services.runtime.serving import EXIT_CANNOT_START, BindError
from services.runtime.tracing import configure_tracing

log = logging.getLogger("services.gateway")


def main() -> int:
    """Start the gateway and serve until SIGTERM/SIGINT; return the exit code."""
    try:
        settings = load_settings(GatewaySettings)
    except SettingsError as exc:
        sys.stderr.write(f"gateway: {exc}\n")
        return 2
    if not settings.internal_token:
        sys.stderr.write("gateway: LONGSHORE_INTERNAL_TOKEN must be set (backends require it)\n")
        return 2
    configure_logging("gateway", settings.log_level)
    provider = configure_tracing("gateway", endpoint=settings.otel_endpoint)
    try:
        meters = configure_metrics(
            "gateway",
            otlp_endpoint=settings.otel_endpoint,
            prometheus_listen=settings.metrics_listen,
        )
        gateway = build_gateway(settings, meter=meters.recording_meter("longshore.gateway"))
    except BindError as exc:
        sys.stderr.write(f"gateway: {exc}\n")
        return EXIT_CANNOT_START
    except (ApiKeyFormatError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        return 2
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
    try:
        gateway.server.serve_until_signal()
    finally:
        gateway.close()
        meters.shutdown()
        provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
