"""A Unix-socket proxy in front of the Docker engine that a test can cut and restore.

Point a service at the proxy with ``DOCKER_HOST=unix://<proxy.path>``; every
engine call then goes through it, byte for byte (hijacked exec streams
included). :meth:`EngineProxy.cut` makes the engine unreachable for that
service only: every open connection is closed (clients see a reset or EOF)
and new connections are refused (``ECONNREFUSED``: the socket file stays but
nobody listens). :meth:`EngineProxy.restore` listens again on the same path.
The real engine and every other client are untouched.

Example::

    with EngineProxy() as proxy:
        svc = ServiceProcess(
            ["python", "-m", "services.sandbox"],
            env={"DOCKER_HOST": proxy.docker_host, ...},
            health_addr=addr,
            name="sandbox",
        )
        with svc:
            svc.start()
            proxy.cut()        # the engine is gone for ~10 s
            ...                # health NOT_SERVING, calls UNAVAILABLE
            proxy.restore()    # back again
            ...

Threads only: one acceptor, two pumps per connection, all daemon threads; at
most ``max_connections`` connections are relayed at once (more are closed on
accept), and leaving the ``with`` block (or :meth:`close`) stops every thread
and removes the socket file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

DEFAULT_ENGINE_SOCKET = "/var/run/docker.sock"
_CHUNK = 65536
_JOIN_SECONDS = 5.0


def _engine_socket_path() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://") :]
    return DEFAULT_ENGINE_SOCKET


class _Pair:
    """One relayed connection: the client's socket and ours to the engine."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self._lock = threading.Lock()
        self._open_directions = 2
        self.closed = threading.Event()

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    # Half-close: the exec API shuts down the write side after
                    # stdin; pass that on so the engine sees EOF too.
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    break
                dst.sendall(data)
        except OSError:
            self.kill()
        finally:
            with self._lock:
                self._open_directions -= 1
                done = self._open_directions <= 0
            if done:
                self.kill()

    def kill(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.closed.set()


class EngineProxy:
    """Relays a Unix socket to the engine's socket; :meth:`cut` / :meth:`restore` it.

    Args:
        upstream: The engine's socket; ``DOCKER_HOST`` (if ``unix://``) or
            ``/var/run/docker.sock`` when omitted.
        max_connections: Connections relayed at once; further ones are closed.
    """

    def __init__(self, upstream: str | None = None, *, max_connections: int = 256) -> None:
        self.upstream = upstream or _engine_socket_path()
        self.max_connections = max_connections
        self._dir = tempfile.mkdtemp(prefix="engine-proxy-")
        self.path = str(Path(self._dir) / "docker.sock")
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._closed = False

    @property
    def docker_host(self) -> str:
        """The ``DOCKER_HOST`` value that routes a client through this proxy."""
        return f"unix://{self.path}"

    @property
    def is_cut(self) -> bool:
        """Whether the proxy is currently refusing connections."""
        with self._lock:
            return self._listener is None

    def start(self) -> Self:
        """Starts listening (idempotent); returns ``self``."""
        self.restore()
        return self

    def cut(self) -> None:
        """Closes every relayed connection and refuses new ones until :meth:`restore`."""
        with self._lock:
            listener, self._listener = self._listener, None
            acceptor, self._acceptor = self._acceptor, None
            pairs = list(self._pairs)
            self._pairs.clear()
        if listener is not None:
            # shutdown wakes the acceptor blocked in accept(); the socket file
            # stays, so a connect now fails with ECONNREFUSED, not ENOENT.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for pair in pairs:
            pair.kill()
        if acceptor is not None:
            acceptor.join(_JOIN_SECONDS)
        log.info("engine proxy cut", extra={"path": self.path, "connections": len(pairs)})

    def restore(self) -> None:
        """Listens again on the same path (does nothing if already listening)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("engine proxy is closed")
            if self._listener is not None:
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.path)
            listener.listen(128)
            self._listener = listener
            acceptor = threading.Thread(
                target=self._accept_loop, args=(listener,), name="engine-proxy-accept", daemon=True
            )
            self._acceptor = acceptor
        acceptor.start()
        log.info("engine proxy listening", extra={"path": self.path})

    def close(self) -> None:
        """Cuts, waits for every pump thread and removes the socket file."""
        self.cut()
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(_JOIN_SECONDS)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut() closed the listener
            self._relay(listener, client)

    def _relay(self, listener: socket.socket, client: socket.socket) -> None:
        try:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream)
        except OSError:
            client.close()
            return
        pair = _Pair(client, upstream)
        with self._lock:
            # A cut() between accept and here must not leave this pair open.
            admitted = self._listener is listener and len(self._pairs) < self.max_connections
            if admitted:
                self._pairs.add(pair)
                self._threads = [t for t in self._threads if t.is_alive()]
        if not admitted:
            pair.kill()
            return
        for src, dst in ((client, upstream), (upstream, client)):
            thread = threading.Thread(
                target=self._pump, args=(pair, src, dst), name="engine-proxy-pump", daemon=True
            )
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        pair.pump(src, dst)
        if pair.closed.is_set():
            with self._lock:
                self._pairs.discard(pair)
