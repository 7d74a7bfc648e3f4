"""The parts of the gRPC server factory that need no event loop.

:func:`services.runtime.aio_serving.build_aio_server` is the one gRPC server
factory; it takes from here: the bind check and the one-line
:class:`BindError`, the channel options (``grpc.so_reuseport`` off, so two
servers never share a port silently; bounded message sizes), the trace filter, the health detail as
metadata text, and :class:`ServerLifecycle` (the stop request, the health
detail, the shutdown hooks, serving until SIGTERM/SIGINT).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2
from opentelemetry.instrumentation.grpc import filters

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: What a service's ``__main__`` exits with when it cannot start (bad settings,
#: an address it cannot listen on): a supervisor must not mistake it for a crash.
EXIT_CANNOT_START = 2


class BindError(RuntimeError):
    """A server cannot listen on its address; the message is one line for an operator.

    Attributes:
        listen: The ``host:port`` asked for.
        reason: Why, as the operating system says it (e.g. "address already in use").
    """

    def __init__(self, listen: str, reason: str) -> None:
        super().__init__(f"cannot listen on {listen[:100]}: {reason}")
        self.listen = listen
        self.reason = reason


def check_listen(listen: str) -> None:
    """Raises :class:`BindError` when ``listen`` (``host:port``) cannot be bound now.

    gRPC's own bind failure says only "Failed to bind" (the errno goes to a
    C-core log line), so the address is tried first with a plain socket with
    the options gRPC binds with: ``SO_REUSEADDR`` on (a port with connections
    in TIME_WAIT is bindable) and ``SO_REUSEPORT`` off (a port another process
    listens on is not). Like gRPC, it passes when any resolved address binds.
    Port 0 (any free port) always passes.

    Args:
        listen: The address a server is about to bind.

    Raises:
        BindError: The port is invalid, the host does not resolve, or no
            address binds; the reason is the operating system's.
    """
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise BindError(listen, "the port is not a number") from None
    if not 0 <= port <= 65535:
        raise BindError(listen, "the port is out of range (0-65535)")
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(listen, f"cannot resolve {host[:100]!r}: {exc.strerror}") from None
    failure: OSError | None = None
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
            return
        except OSError as exc:
            failure = failure or exc
    code = failure.errno if failure is not None else None
    reason = os.strerror(code).lower() if code else "no address to bind"
    if code == errno.EADDRNOTAVAIL:
        reason += " (the host is not an address of this machine)"
    raise BindError(listen, reason)


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """The options every server binds with (either kind)."""
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def trace_filter() -> Any:
    """Traces every call except health checks and reflection."""
    return filters.negate(
        filters.any_of(
            filters.health_check(),
            filters.service_prefix("grpc.reflection"),
        )
    )


def bind(grpc_server: aio.Server, listen: str) -> tuple[int, str]:
    """Binds ``listen`` on a gRPC server; returns the port and the host peers dial.

    Raises:
        BindError: gRPC could not bind the address.
    """
    # The address was free a moment ago; another process may have taken it since.
    unbound = BindError(listen, "gRPC could not bind it (GRPC_VERBOSITY=debug says why)")
    try:
        port = grpc_server.add_insecure_port(listen)
    except RuntimeError:
        raise unbound from None
    if port == 0:
        raise unbound
    host = listen.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return port, host


#: How often a serving main thread wakes to run signal handlers that were
#: delivered to another thread (see :meth:`ServerLifecycle.serve`).
SIGNAL_POLL_SECONDS = 0.2


class ServerLifecycle:
    """What a Longshore gRPC server keeps apart from its loop: the stop request,
    the health detail, and serving until SIGTERM/SIGINT.

    Subclasses set ``_stop_requested`` and ``_unhealthy_detail`` in their
    ``__init__`` and implement :meth:`start` and :meth:`stop`.
    """

    _stop_requested: threading.Event
    _unhealthy_detail: str

    @property
    def health_detail(self) -> str:
        """Why the server reports NOT_SERVING ("" while healthy)."""
        return self._unhealthy_detail

    def _record_serving(self, serving: bool, detail: str) -> None:
        """Keeps the state ``set_serving`` reports (the detail as metadata text)."""
        self._unhealthy_detail = "" if serving else (metadata_text(detail) or "not serving")

    def _health_status(self) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        """The status the health service reports for every service now."""
        if self._unhealthy_detail:
            return health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse.SERVING

    def start(self) -> None:
        """Starts serving."""
        raise NotImplementedError

    def stop(self, grace: float = 10.0) -> None:
        """Drains and stops."""
        raise NotImplementedError

    def request_stop(self) -> None:
        """Asks :meth:`serve_until_signal` to shut down (safe from any thread)."""
        self._stop_requested.set()

    def serve(self, grace: float = 10.0) -> None:
        """Starts (unless started), waits for :meth:`request_stop`, then drains and stops."""
        self.start()
        # Bounded waits, again and again, never one without a timeout: the
        # kernel may hand SIGTERM to any thread (grpc's, the engine
        # client's), and then only a flag is set; the main thread runs the
        # Python handler when it next runs bytecode, which a wait without a
        # timeout never does (seen: a manager that ignored SIGTERM in CI).
        while not self._stop_requested.wait(SIGNAL_POLL_SECONDS):
            pass
        self.stop(grace)

    def serve_until_signal(self, grace: float = 10.0) -> None:
        """Starts (unless started), waits for SIGTERM/SIGINT or :meth:`request_stop`, stops."""
        with stop_on_signal(self.request_stop):
            self.serve(grace)


@contextmanager
def stop_on_signal(request_stop: Callable[[], None]) -> Iterator[None]:
    """Within the ``with``, SIGTERM and SIGINT call ``request_stop`` (and log it).

    Only the request happens in the handler: the drain must run on the
    serving thread, not inside a signal handler that interrupted it.
    The previous handlers are restored on exit.
    """

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received; draining", extra={"signal": signal.Signals(signum).name})
        request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def metadata_text(text: str) -> str:
    """``text`` as one printable ASCII line: it travels as gRPC metadata, where
    anything else makes the health check itself fail (INTERNAL)."""
    line = " ".join(text.split())
    return "".join(c if " " <= c <= "~" else "?" for c in line)[:500]
