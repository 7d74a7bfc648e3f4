"""In-process servers for tests: the real server factory on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from opentelemetry import trace

from services.runtime.aio_serving import AioServer, AioService, build_aio_server
from services.runtime.channels import open_channel
from services.runtime.serving import GrpcService, Server, build_server


@dataclass
class RunningServer:
    """A started server and how to reach it."""

    server: Server | AioServer
    address: str
    internal_token: str | None

    def channel(self, *, tracer_provider: trace.TracerProvider | None = None) -> grpc.Channel:
        """Opens a channel to the server carrying its internal credential."""
        return open_channel(
            self.address, internal_token=self.internal_token, tracer_provider=tracer_provider
        )


@contextmanager
def serve_in_process(
    services: Sequence[GrpcService] | Sequence[AioService],
    *,
    internal_token: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    max_workers: int = 16,
) -> Iterator[RunningServer]:
    """Serves ``services`` on ``127.0.0.1:<free port>`` for the duration of a ``with``.

    :class:`AioService` entries are served on ``grpc.aio`` (as their service
    serves them; ``max_workers`` then does not apply), :class:`GrpcService`
    entries on the thread-pool server of ``max_workers`` threads.

    Yields:
        The running server; it is stopped (grace 0) on exit.

    Raises:
        TypeError: The list mixes both kinds.
    """
    aio_services = [s for s in services if isinstance(s, AioService)]
    if aio_services:
        if len(aio_services) != len(services):
            raise TypeError("serve_in_process: AioService and GrpcService cannot share a server")
        with serve_aio_in_process(
            aio_services, internal_token=internal_token, tracer_provider=tracer_provider
        ) as running:
            yield running
        return
    server = build_server(
        [s for s in services if isinstance(s, GrpcService)],
        listen="127.0.0.1:0",
        max_workers=max_workers,
        internal_token=internal_token,
        tracer_provider=tracer_provider,
    )
    server.start()
    try:
        yield RunningServer(server, server.address, internal_token)
    finally:
        server.stop(grace=0)


@contextmanager
def serve_aio_in_process(
    services: Sequence[AioService],
    *,
    internal_token: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> Iterator[RunningServer]:
    """Serves async ``services`` on ``grpc.aio`` at ``127.0.0.1:<free port>`` for a ``with``.

    Yields:
        The running server (its own loop thread); it is stopped (grace 0) on exit.
    """
    server = build_aio_server(
        services,
        listen="127.0.0.1:0",
        internal_token=internal_token,
        tracer_provider=tracer_provider,
    )
    server.start()
    try:
        yield RunningServer(server, server.address, internal_token)
    finally:
        server.stop(grace=0)
