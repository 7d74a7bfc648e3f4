"""uvicorn serving the front door: the socket, the limits, start and graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from uvicorn.server import Server

from services.e2b.app import FrontDoor

MAX_CONNECTIONS = 512
GRACEFUL_SECONDS = 10
MAX_HEADER_BYTES = 64 * 1024


class ListenError(OSError):
    """The address cannot be bound; the message is one line naming it."""


def bind(listen: str) -> socket.socket:
    """Bind and listen on ``host:port``.

    Raises:
        ListenError: Malformed, in use or not bindable; says which.
    """
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ListenError(f"e2b.listen: {listen!r} is not host:port") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such sockets,
    # and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ListenError(f"e2b.listen: cannot bind {listen}: {exc.strerror}") from None
    return sock


class _Server(Server):
    """uvicorn's server with signals left to the caller and the front door closed last."""

    def __init__(self, config: uvicorn.Config, door: FrontDoor) -> None:
        super().__init__(config)
        self._door = door

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # run_service owns SIGTERM/SIGINT.
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        await self._door.close()


class FrontDoorServer:
    """The front door on uvicorn, on a bound socket."""

    def __init__(self, sock: socket.socket, door: FrontDoor, *, keep_alive_seconds: int) -> None:
        self.socket = sock
        self.door = door
        config = uvicorn.Config(
            door.asgi,
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=keep_alive_seconds,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
            limit_concurrency=MAX_CONNECTIONS,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        )
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _Server(config, door)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.socket.getsockname()[1])

    def serve(self) -> None:
        """Serve on this thread until :meth:`request_stop` (then drain and return)."""
        asyncio.run(self._server.serve(sockets=[self.socket]))

    def request_stop(self) -> None:
        """Ask the server to stop (safe from a signal handler: it sets a flag)."""
        self._server.should_exit = True

    def start(self) -> threading.Thread:
        """Serve on a background thread; returns once it accepts connections."""
        self._thread = threading.Thread(target=self.serve, name="e2b-http", daemon=True)
        self._thread.start()
        pause = threading.Event()
        deadline = time.monotonic() + 30.0
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("the front door's HTTP server did not start within 30 s")
            pause.wait(0.01)
        return self._thread
