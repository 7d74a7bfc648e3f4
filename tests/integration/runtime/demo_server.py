"""A runtime-built server run as a real process, for the shutdown tests.

Usage: python -m tests.integration.runtime.demo_server LISTEN
Prints "hook ran" from its shutdown hook, after the server drained.
"""

from __future__ import annotations

import sys

from services.runtime.aio_serving import build_aio_server
from services.runtime.logs import configure_logging
from tests.integration.runtime.demo_services import FailingGateway, gateway_service


def main() -> None:
    configure_logging("demo")
    server = build_aio_server(
        [gateway_service(FailingGateway("ok"))], listen=sys.argv[1], shutdown_delay=1.5
    )
    server.add_shutdown_hook(lambda: print("hook ran", flush=True))
    server.serve_until_signal(grace=2)


if __name__ == "__main__":
    main()
