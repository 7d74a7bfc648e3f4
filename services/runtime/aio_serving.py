"""The gRPC server factory every service uses: ``grpc.aio``, where a held stream
or long poll costs a coroutine.

``build_aio_server`` installs the library health service (its aio
servicer), reflection, OpenTelemetry server spans, the internal-credential
check, the version and health-detail trailers and the one error mapping,
bound with ``grpc.so_reuseport`` off and bounded message sizes (what every
server shares is in :mod:`services.runtime.server_base`). Handlers are
coroutines; a service whose work blocks (the Docker SDK) runs it in a
bounded thread pool of its own. It is the only server factory: the gateway,
kanban and the sandbox manager all serve through it (via
:func:`services.runtime.service_main.run_service`), and so do the tests
(:func:`services.runtime.testing.serve_in_process`).

The server runs on its own event loop in one thread, so callers keep a
synchronous surface (``start``, ``stop``, ``serve``,
``serve_until_signal``, ``set_serving``) whether they are a service's
``__main__`` or a test. Every handler, channel and health update lives on
that loop; other threads reach it only through :meth:`AioServer.run` and
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.metrics import Meter

from services.runtime.aio_interceptors import AioServingInterceptor
from services.runtime.rpc_metrics import CallWindow, RpcMetrics
from services.runtime.server_base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ServerLifecycle,
    bind,
    check_listen,
    server_options,
)
from services.runtime.version import __version__

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Longest a call from another thread waits for the loop to build or start the server.
_LOOP_CALL_TIMEOUT = 60.0
#: New calls gRPC core may queue before the loop accepts them.
_MAX_PENDING_CALLS = 20000


@dataclass(frozen=True)
class AioService:
    """A service to mount: its full proto name and how to register its servicer.

    ``register`` runs on the server's loop, so it may open ``grpc.aio`` channels.
    """

    name: str
    register: Callable[[aio.Server], None]


class AioServer(ServerLifecycle):
    """A ``grpc.aio`` server on its own loop thread, with health and orderly shutdown."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, shutdown_delay: float
    ) -> None:
        self.loop = loop
        self._thread = thread
        self.grpc_server: aio.Server
        self.health: health.aio.HealthServicer
        self.port = 0
        self.address = ""
        self._service_names: list[str] = []
        self._hooks: list[Callable[[], Awaitable[None] | None]] = []
        self._shutdown_delay = shutdown_delay
        self._stop_requested = threading.Event()
        self._started = False
        self._stopping = False
        self._stopped = threading.Event()
        self._unhealthy_detail = ""

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = _LOOP_CALL_TIMEOUT) -> T:
        """Runs ``coro`` on the server's loop from another thread and returns its result.

        Raises:
            RuntimeError: Called on the loop's own thread (it would deadlock).
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("AioServer.run called on its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def set_serving(self, serving: bool, detail: str = "") -> None:
        """Report every service SERVING or NOT_SERVING (with why); safe from any thread.

        Ignored once shutdown began: draining stays NOT_SERVING. Before
        :meth:`start`, the state is applied at start.
        """
        if self._stopping:
            return
        self._record_serving(serving, detail)
        if self._started:
            # Scheduled, not awaited: a probe on the loop thread must not block it.
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._publish()))

    async def _publish(self) -> None:
        status = self._health_status()
        for name in ["", *self._service_names]:
            await self.health.set(name, status)

    def add_shutdown_hook(self, hook: Callable[[], Awaitable[None] | None]) -> None:
        """Runs ``hook`` on the loop after the server drained (a coroutine is awaited)."""
        self._hooks.append(hook)

    def start(self) -> None:
        """Starts serving and marks every service SERVING; a second call does nothing."""
        if self._started:
            return
        self._started = True
        self.run(self._start())
        log.info("serving", extra={"address": self.address, "services": self._service_names})

    async def _start(self) -> None:
        await self.grpc_server.start()
        await self._publish()

    def stop(self, grace: float = 10.0) -> None:
        """Drains and stops: NOT_SERVING, stop accepting, drain ``grace``, hooks, end the loop."""
        if self._stopped.is_set() or self._stopping:
            return
        self._stopping = True
        try:
            self.run(self._stop(grace), timeout=None)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=_LOOP_CALL_TIMEOUT)
            if not self._thread.is_alive():
                self.loop.close()
            self._stopped.set()
        log.info("stopped", extra={"address": self.address})

    async def _stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        if self._shutdown_delay > 0:
            # Let probes and load balancers see NOT_SERVING before calls are refused.
            await asyncio.sleep(self._shutdown_delay)
        # Refuses new calls at once; in-flight ones (held long polls included)
        # get ``grace`` seconds, then are cancelled.
        await self.grpc_server.stop(grace)
        for hook in self._hooks:
            try:
                result = hook()
                if result is not None:
                    await result
            except Exception:
                log.exception("shutdown hook failed", extra={"hook": repr(hook)})


def build_aio_server(
    services: Sequence[AioService],
    *,
    listen: str,
    internal_token: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_concurrent_rpcs: int | None = None,
    shutdown_delay: float = 0.0,
    extra_interceptors: Sequence[aio.ServerInterceptor] = (),
    meter: Meter | None = None,
    call_window: CallWindow | None = None,
) -> AioServer:
    """Creates an aio server for ``services`` bound to ``listen`` (``host:port``; port 0 = any).

    Args:
        services: The servicers to mount (registered on the server's loop).
        listen: Address to bind.
        internal_token: When set, every RPC except health and reflection must
            carry it as ``longshore-internal-token`` metadata.
        tracer_provider: Provider for server spans; the global one by default.
        max_message_bytes: Largest request or response accepted.
        max_concurrent_rpcs: Calls in flight beyond which new ones are
            RESOURCE_EXHAUSTED; None = unbounded (each costs a coroutine).
        shutdown_delay: Seconds health stays NOT_SERVING before calls are refused.
        extra_interceptors: Run after auth and before error mapping.
        meter: Records RPC durations by method and code and the calls in
            flight (:mod:`services.runtime.rpc_metrics`); None = not recorded.
        call_window: Also keeps the last minute of calls (headline figures).

    Returns:
        The server, bound and not yet started; its loop thread is running.

    Raises:
        BindError: The address cannot be bound (the message says why).
    """
    # Before any gRPC object exists: a port in use then costs nothing to report.
    check_listen(listen)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-aio", daemon=True)
    thread.start()
    server = AioServer(loop, thread, shutdown_delay)
    try:
        server.run(
            _build(
                server,
                services,
                listen=listen,
                internal_token=internal_token,
                tracer_provider=tracer_provider,
                max_message_bytes=max_message_bytes,
                max_concurrent_rpcs=max_concurrent_rpcs,
                extra_interceptors=extra_interceptors,
                rpc_metrics=RpcMetrics(meter, call_window)
                if meter is not None or call_window is not None
                else None,
            )
        )
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_LOOP_CALL_TIMEOUT)
        raise
    return server


async def _build(
    server: AioServer,
    services: Sequence[AioService],
    *,
    listen: str,
    internal_token: str | None,
    tracer_provider: trace.TracerProvider | None,
    max_message_bytes: int,
    max_concurrent_rpcs: int | None,
    extra_interceptors: Sequence[aio.ServerInterceptor],
    rpc_metrics: RpcMetrics | None = None,
) -> None:
    """Creates, registers and binds the server on the loop (gRPC objects belong to it)."""
    # Spans, trailers, the credential, error mapping and metrics in one layer
    # (each aio interceptor costs every call); the extras run inside it, after
    # the credential.
    interceptors: list[aio.ServerInterceptor] = [
        AioServingInterceptor(
            __version__,
            health_detail=lambda: server.health_detail,
            internal_token=internal_token,
            tracer_provider=tracer_provider,
            metrics=rpc_metrics,
        ),
        *extra_interceptors,
    ]
    grpc_server = aio.server(
        interceptors=interceptors,
        options=[
            *server_options(max_message_bytes),
            # The aio server accepts calls one at a time from the loop; a burst
            # of new calls (thousands of workers reconnecting at once) waits in
            # gRPC core's pending queue, which cancels what is beyond its
            # default 1,000. Held calls are bounded by max_concurrent_rpcs.
            ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", 3 * _MAX_PENDING_CALLS),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    for service in services:
        service.register(grpc_server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    names = [s.name for s in services]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], grpc_server
    )
    port, host = bind(grpc_server, listen)
    server.grpc_server = grpc_server
    server.health = health_servicer
    server.port = port
    server.address = f"{host}:{port}"
    server._service_names = names
    # Until start, everything NOT_SERVING except what start publishes.
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    log.debug("built aio server", extra={"listen": listen, "version": __version__})
