"""uvicorn serving the dashboard: the socket, the limits, start and graceful stop.

The socket is bound before anything else (so the gate learns the real port,
port 0 in tests, and a port in use is one clear error at start). uvicorn's
limits are set here on purpose rather than left to its defaults:

* request line and headers: at most ``asgi.MAX_HEADER_BYTES`` (431 beyond);
* keep-alive: an idle connection is closed after ``keep_alive_seconds``, and
  so is a new connection that sends nothing at all (uvicorn only arms the
  timer after a first response; :class:`_Http` arms it on connect);
* at most :data:`MAX_CONNECTIONS` connections at once (503 beyond);
* bodies: size and time limits in :mod:`.asgi`;
* no proxy-header rewriting: the gate decides which proxy it trusts.

Stopping (SIGTERM) cancels every open event stream first, so those responses
end and uvicorn's drain finishes within :data:`GRACEFUL_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import Server

from services.dashboard.app import Dashboard
from services.dashboard.asgi import MAX_HEADER_BYTES, build_asgi

MAX_CONNECTIONS = 256
GRACEFUL_SECONDS = 10
DEFAULT_KEEP_ALIVE_SECONDS = 5


class ListenError(OSError):
    """The address cannot be bound; the message is one line naming it."""


def bind(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` (IPv6 when the host has a colon).

    Raises:
        ListenError: The address is in use or cannot be bound; says which.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets
    # that say so, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {shown}: {reason.lower()}") from exc
    sock.setblocking(False)
    return sock


class _Http(H11Protocol):
    """h11 with the keep-alive timer armed at connect (idle new connections close)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )


class _Server(Server):
    """uvicorn's server with signals left to the caller and streams ended first."""

    def __init__(self, config: uvicorn.Config, dashboard: Dashboard) -> None:
        super().__init__(config)
        self._dashboard = dashboard

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # __main__ owns SIGTERM/SIGINT (uvicorn would re-raise them at exit,
        # turning a clean stop into death by signal).
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Event streams never finish by themselves: cancel their upstream
        # calls so their responses end and the drain below can complete.
        self._dashboard.hub.cancel_all()
        await super().shutdown(sockets)


class DashboardServer:
    """The dashboard on uvicorn, on a bound socket.

    Args:
        sock: The listening socket from :func:`bind`.
        dashboard: The application.
        keep_alive_seconds: Idle time after which a connection is closed.
    """

    def __init__(
        self,
        sock: socket.socket,
        dashboard: Dashboard,
        *,
        keep_alive_seconds: int = DEFAULT_KEEP_ALIVE_SECONDS,
    ) -> None:
        self.socket = sock
        self.app = dashboard
        config = uvicorn.Config(
            build_asgi(dashboard),
            http=_Http,
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
        # uvicorn's INFO lines ("Started server process", with an ANSI-coloured
        # copy in `color_message`) repeat what the dashboard logs itself; its
        # warnings (malformed requests) stay.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _Server(config, dashboard)
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        """The bound host and port."""
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self.server_address[1]

    def serve(self) -> None:
        """Serve on this thread until :meth:`request_stop` (then drain and return)."""
        asyncio.run(self._server.serve(sockets=[self.socket]))

    def request_stop(self) -> None:
        """Ask the server to stop (safe from a signal handler: it sets a flag)."""
        self._server.should_exit = True

    def start(self) -> threading.Thread:
        """Serve on a background thread (tests); returns once it accepts connections."""
        self._thread = threading.Thread(target=self.serve, name="dashboard-http", daemon=True)
        self._thread.start()
        # uvicorn exposes "started" as a flag only: poll it, bounded.
        pause = threading.Event()
        deadline = time.monotonic() + 30.0
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("the dashboard's HTTP server did not start within 30 s")
            pause.wait(0.01)
        return self._thread

    def stop(self) -> None:
        """Stop accepting, end open event streams, drain, and wait for the thread."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(GRACEFUL_SECONDS + 5)
        self.socket.close()
