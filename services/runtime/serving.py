"""The thread-pool gRPC server, kept for kanban until it serves on ``grpc.aio``.

Services use :func:`services.runtime.aio_serving.build_aio_server`; what both
servers share lives in :mod:`services.runtime.server_base` (re-exported here
for the callers of this module). ``build_server`` returns a :class:`Server`
with the library health service, reflection, tracing, the internal-credential
check and the error mapping installed. ``Server.serve_until_signal``
implements the shutdown order: SIGTERM → health NOT_SERVING → stop accepting
→ drain in-flight calls within the grace period → run shutdown hooks (e.g.
drain cleanup threads) → return.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import server_interceptor

from services.runtime.interceptors import (
    ErrorInterceptor,
    InternalTokenInterceptor,
    VersionInterceptor,
)
from services.runtime.server_base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EXIT_CANNOT_START,
    BindError,
    ServerLifecycle,
    bind,
    check_listen,
    metadata_text,
    server_options,
    stop_on_signal,
    trace_filter,
)
from services.runtime.version import __version__

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "EXIT_CANNOT_START",
    "BindError",
    "GrpcService",
    "Server",
    "ServerLifecycle",
    "bind",
    "build_server",
    "check_listen",
    "metadata_text",
    "stop_on_signal",
    "trace_filter",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrpcService:
    """A service to mount: its full proto name and how to register its servicer."""

    name: str
    register: Callable[[grpc.Server], None]


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
        self._record_serving(serving, detail)
        if not self._started:
            return
        self._publish()

    def _publish(self) -> None:
        status = self._health_status()
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
        self._publish()
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
        options=server_options(max_message_bytes),
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


class _Detail:
    """The health detail of a server built later (the interceptors come first)."""

    server: Server | None = None

    def __call__(self) -> str:
        return self.server.health_detail if self.server is not None else ""
