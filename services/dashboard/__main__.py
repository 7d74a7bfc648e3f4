"""``python -m services.dashboard``: settings -> logging -> tracing -> serve."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from services.dashboard.auth.modes import GateConfigError
from services.dashboard.listener import ListenError
from services.dashboard.server import build_dashboard
from services.dashboard.settings import DashboardSettings
from services.runtime.config import SettingsError, load_settings
from services.runtime.logs import configure_logging
from services.runtime.tracing import configure_tracing

log = logging.getLogger("services.dashboard")


def main() -> int:
    """Run the dashboard until SIGTERM or SIGINT, then drain and exit 0."""
    try:
        settings = load_settings(DashboardSettings)
    except SettingsError as exc:
        sys.stderr.write(f"dashboard: {exc}\n")
        return 2
    configure_logging("dashboard", settings.log_level)
    provider = configure_tracing("dashboard", endpoint=settings.otel_endpoint)
    try:
        built = build_dashboard(settings)
    except GateConfigError as exc:
        log.error("refusing to start: %s", exc)
        sys.stderr.write(f"dashboard: refusing to start: {exc}\n")
        return 2
    except ListenError as exc:
        # One line, no traceback: the operator needs the address, not a stack.
        sys.stderr.write(f"dashboard: {exc}\n")
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        built.server.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("dashboard serving", extra={"url": built.url})
    sys.stdout.flush()
    built.server.serve()
    log.info("dashboard stopped")
    built.gateway.close()
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
