"""``python -m services.e2b``: settings -> logging -> tracing -> serve.

Wiring only, through :func:`services.runtime.service_main.run_service`.
"""

from __future__ import annotations

import logging
import sys

from services.e2b.app import build_front_door
from services.e2b.listener import FrontDoorServer, ListenError, bind
from services.e2b.settings import E2bSettings
from services.runtime.service_main import ServiceParts, run_service

log = logging.getLogger("services.e2b")


def build(settings: E2bSettings, parts: ServiceParts) -> FrontDoorServer:
    """The front door's HTTP server, bound."""
    section = settings.e2b
    sock = bind(section.listen)
    door = build_front_door(settings.gateway.addr, section)
    server = FrontDoorServer(sock, door, keep_alive_seconds=section.keep_alive_seconds)
    parts.close_on_exit(lambda: log.info("e2b front door stopped"))
    log.info("e2b front door serving", extra={"listen": section.listen, "port": server.port})
    sys.stdout.flush()
    return server


def main() -> int:
    """Run the front door until SIGTERM or SIGINT, then drain and exit 0."""
    return run_service("e2b", E2bSettings, build, refusals=(ListenError,))


if __name__ == "__main__":
    sys.exit(main())
