"""In-process servers for tests: the real server factory on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from opentelemetry import trace

from services.runtime.aio_serving import AioServer, AioService, build_aio_server
from services.runtime.channels import open_channel


@dataclass
class RunningServer:
    """A started server and how to reach it."""

    server: AioServer
    address: str
    internal_token: str | None

    def channel(self, *, tracer_provider: trace.TracerProvider | None = None) -> grpc.Channel:
        """Opens a channel to the server carrying its internal credential."""
        return open_channel(
            self.address, internal_token=self.internal_token, tracer_provider=tracer_provider
        )


@contextmanager
def serve_in_process(
    services: Sequence[AioService],
    *,
    internal_token: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    max_workers: int = 16,
) -> Iterator[RunningServer]:
    """Serves ``services`` on ``grpc.aio`` at ``127.0.0.1:<free port>`` for a ``with``.

    The same factory the services serve through
    (:func:`services.runtime.aio_serving.build_aio_server`), so a test sees
    the interceptors, health and reflection a client of a service sees.
    ``max_workers`` sized the thread pool of the removed sync server; it is
    accepted and has no effect (a service that blocks, like the sandbox
    manager, sizes its own pool), so existing callers need not change.

    Yields:
        The running server (its own loop thread); it is stopped (grace 0) on exit.
    """
    del max_workers
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


#: The former name, from when a sync server factory existed beside it.
serve_aio_in_process = serve_in_process
