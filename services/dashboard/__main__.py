"""``python -m services.dashboard``: settings -> logging -> tracing -> serve.

Wiring only, through :func:`services.runtime.service_main.run_service`.
"""

from __future__ import annotations

import logging
import sys

from services.dashboard.auth.modes import GateConfigError
from services.dashboard.listener import DashboardServer, ListenError
from services.dashboard.server import build_dashboard
from services.dashboard.settings import DashboardSettings
from services.runtime.service_main import ServiceParts, run_service

log = logging.getLogger("services.dashboard")


def build(settings: DashboardSettings, parts: ServiceParts) -> DashboardServer:
    """The dashboard's HTTP server, bound; the gateway client closes after it drained."""
    built = build_dashboard(settings)
    parts.close_on_exit(built.gateway.close)
    parts.close_on_exit(lambda: log.info("dashboard stopped"))
    log.info("dashboard serving", extra={"url": built.url})
    sys.stdout.flush()
    return built.server


def main() -> int:
    """Run the dashboard until SIGTERM or SIGINT, then drain and exit 0."""
    # An unsafe auth configuration or an address in use: one line, exit 2.
    return run_service(
        "dashboard", DashboardSettings, build, refusals=(GateConfigError, ListenError)
    )


if __name__ == "__main__":
    sys.exit(main())
