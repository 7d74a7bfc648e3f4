"""A runtime-built server run as a real process, for the shutdown tests.

Usage: python -m tests.integration.runtime.demo_server LISTEN [--sigterm-a-thread-on PATH]
Prints "hook ran" from its shutdown hook, after the server drained. With
``--sigterm-a-thread-on PATH`` it sends itself SIGTERM once PATH exists
(the test creates it once it has seen the server serving), aimed at a
thread that is not the main one (as the kernel may deliver a process's
signal to any of its threads).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from services.runtime.aio_serving import build_aio_server
from services.runtime.logs import configure_logging
from tests.integration.runtime.demo_services import FailingGateway, gateway_service


def main() -> None:
    configure_logging("demo")
    server = build_aio_server(
        [gateway_service(FailingGateway("ok"))], listen=sys.argv[1], shutdown_delay=1.5
    )
    server.add_shutdown_hook(lambda: print("hook ran", flush=True))
    if sys.argv[2:3] == ["--sigterm-a-thread-on"]:
        trigger = Path(sys.argv[3])

        def signal_this_thread() -> None:
            # Not on a timer: a loaded machine's health check may first see
            # the server serving after any fixed delay.
            while not trigger.exists():
                time.sleep(0.05)
            # This thread receives it: the main thread is left waiting.
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        threading.Thread(target=signal_this_thread, daemon=True).start()
    server.serve_until_signal(grace=2)


if __name__ == "__main__":
    main()
