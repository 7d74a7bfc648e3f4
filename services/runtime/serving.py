"""The gRPC server factory every service uses.

``build_server`` returns a :class:`Server` with the library health service,
reflection, tracing, the internal-credential check and the error mapping
installed, bound with ``grpc.so_reuseport`` off so two servers never share a
port silently. ``Server.serve_until_signal`` implements the shutdown order:
SIGTERM → health NOT_SERVING → stop accepting → drain in-flight calls within
the grace period → run shutdown hooks (e.g. drain cleanup threads) → return.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import filters, server_interceptor

from services.runtime.interceptors import (
    ErrorInterceptor,
    InternalTokenInterceptor,
    VersionInterceptor,
)
from services.runtime.version import __version__

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


@dataclass(frozen=True)
class GrpcService:
    """A service to mount: its full proto name and how to register its servicer."""

    name: str
    register: Callable[[grpc.Server], None]


def trace_filter() -> Any:
    """Traces every call except health checks and reflection."""
    return filters.negate(
        filters.any_of(
            filters.health_check(),
            filters.service_prefix("grpc.reflection"),
        )
    )


def bind(grpc_server: grpc.Server | aio.Server, listen: str) -> tuple[int, str]:
    """Binds ``listen`` on a (sync or aio) server; returns the port and the host peers dial.

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


class ServerLifecycle:
    """What every Longshore server shares, sync or ``grpc.aio``: the stop request,
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
        self._stop_requested.wait()
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


class Server(ServerLifecycle):
    """A started-or-startable gRPC server with health and orderly shutdown."""

    def __init__(
        self,
        grpc_server: grpc.Server,
        port: int,
        host: str,
        service_names: Sequence[str],
        health_servicer: health.HealthServicer,
        shutdown_delay: float,
    ) -> None:
        self.grpc_server = grpc_server
        self.port = port
        self.address = f"{host}:{port}"
        self.health = health_servicer
        self._service_names = list(service_names)
        self._hooks: list[Callable[[], None]] = []
        self._shutdown_delay = shutdown_delay
        self._stop_requested = threading.Event()
        self._started = False
        self._stopped = threading.Event()
        self._unhealthy_detail = ""

    def set_serving(self, serving: bool, detail: str = "") -> None:
        """Report every service SERVING or NOT_SERVING (with why) on the health service.

        A dependency probe calls this (the engine for the sandbox manager, the
        database for kanban). Ignored once shutdown began: draining stays
        NOT_SERVING. Before :meth:`start`, the state is applied at start.
        """
        if self._stopped.is_set():
            return
        self._unhealthy_detail = "" if serving else (metadata_text(detail) or "not serving")
        if not self._started:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            self.health.set(name, status)

    def add_shutdown_hook(self, hook: Callable[[], None]) -> None:
        """Runs ``hook`` after the server drained, before :meth:`stop` returns."""
        self._hooks.append(hook)

    def start(self) -> None:
        """Starts serving and marks every service SERVING; a second call does nothing."""
        if self._started:
            return
        self._started = True
        self.grpc_server.start()
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if self._unhealthy_detail
            else health_pb2.HealthCheckResponse.SERVING
        )
        for name in ["", *self._service_names]:
            self.health.set(name, status)
        log.info("serving", extra={"address": self.address, "services": self._service_names})

    def stop(self, grace: float = 10.0) -> None:
        """Drains and stops: NOT_SERVING, stop accepting, wait ``grace``, run hooks."""
        if self._stopped.is_set():
            return
        self.health.enter_graceful_shutdown()
        if self._shutdown_delay > 0:
            # Let probes and load balancers see NOT_SERVING before calls are refused.
            threading.Event().wait(self._shutdown_delay)
        self.grpc_server.stop(grace).wait()
        for hook in self._hooks:
            try:
                hook()
            except Exception:
                log.exception("shutdown hook failed", extra={"hook": repr(hook)})
        self._stopped.set()
        log.info("stopped", extra={"address": self.address})


def build_server(
    services: Sequence[GrpcService],
    *,
    listen: str,
    max_workers: int = 16,
    internal_token: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    shutdown_delay: float = 0.0,
    extra_interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> Server:
    """Creates a server for ``services`` bound to ``listen`` (``host:port``; port 0 = any).

    Args:
        services: The servicers to mount.
        listen: Address to bind.
        max_workers: Size of the handler thread pool (bounds concurrent calls).
        internal_token: When set, every RPC except health and reflection must
            carry it as ``longshore-internal-token`` metadata.
        tracer_provider: Provider for server spans; the global one by default.
        max_message_bytes: Largest request or response accepted.
        shutdown_delay: Seconds health stays NOT_SERVING before calls are refused.
        extra_interceptors: Run after auth and before error mapping.

    Returns:
        The server, not yet started.

    Raises:
        BindError: The address cannot be bound (the message says why).
    """
    # Before any gRPC object exists: a port in use then costs nothing to report.
    check_listen(listen)
    detail = _Detail()
    interceptors: list[grpc.ServerInterceptor] = [
        server_interceptor(tracer_provider=tracer_provider, filter_=trace_filter()),
        VersionInterceptor(__version__, health_detail=detail),
    ]
    if internal_token is not None:
        interceptors.append(InternalTokenInterceptor(internal_token))
    interceptors.extend(extra_interceptors)
    interceptors.append(ErrorInterceptor())
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
        maximum_concurrent_rpcs=max_workers * 64,
    )
    for service in services:
        service.register(grpc_server)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    names = [s.name for s in services]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], grpc_server
    )
    port, host = bind(grpc_server, listen)
    log.debug("built server", extra={"listen": listen, "version": __version__})
    server = Server(grpc_server, port, host, names, health_servicer, shutdown_delay)
    detail.server = server
    return server


def metadata_text(text: str) -> str:
    """``text`` as one printable ASCII line: it travels as gRPC metadata, where
    anything else makes the health check itself fail (INTERNAL)."""
    line = " ".join(text.split())
    return "".join(c if " " <= c <= "~" else "?" for c in line)[:500]


class _Detail:
    """The health detail of a server built later (the interceptors come first)."""

    server: Server | None = None

    def __call__(self) -> str:
        return self.server.health_detail if self.server is not None else ""
