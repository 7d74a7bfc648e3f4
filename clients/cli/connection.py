"""A channel to the gateway whose every call carries the API key and a deadline."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from longshore.gateway.v1 import gateway_service_pb2_grpc
from longshore.kanban.v1 import kanban_service_pb2_grpc, worker_service_pb2_grpc
from longshore.sandbox.v1 import sandbox_service_pb2_grpc

from clients.cli.config import CliConfig
from clients.cli.errors import CliError


class _Call(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[Any], timeout: Any) -> None:
        self.method = base.method
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _Auth(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer`` and, to unary calls without one, a deadline."""

    def __init__(self, key: str, timeout: float) -> None:
        self._key = key
        self._timeout = timeout

    def _details(self, details: grpc.ClientCallDetails, unary: bool) -> _Call:
        metadata = list(details.metadata or ())
        metadata.append(("authorization", f"Bearer {self._key}"))
        timeout = details.timeout if details.timeout is not None or not unary else self._timeout
        return _Call(details, metadata, timeout)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, True), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, False), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        # An upload (WriteFiles) lasts as long as its bytes take: no default deadline.
        return continuation(self._details(details, False), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        # An interactive process (RunProcess) lasts as long as its user: no default deadline.
        return continuation(self._details(details, False), requests)


class Connection:
    """Stubs for every service the gateway serves."""

    def __init__(self, config: CliConfig) -> None:
        if not config.api_key:
            raise CliError(
                "no API key: pass --api-key, set LONGSHORE_API_KEY, or run `longshore up` "
                "(it writes $LONGSHORE_HOME/cli.yaml)"
            )
        self.config = config
        self._channel = grpc.intercept_channel(
            grpc.insecure_channel(config.addr), _Auth(config.api_key, config.timeout)
        )
        self.kanban = kanban_service_pb2_grpc.KanbanServiceStub(self._channel)
        self.worker = worker_service_pb2_grpc.WorkerServiceStub(self._channel)
        self.sandbox = sandbox_service_pb2_grpc.SandboxServiceStub(self._channel)
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


def paged(call: Any, request: Any, field: str) -> Iterator[Any]:
    """Yield every item of a paged List call (``field`` names the repeated field)."""
    while True:
        reply = call(request)
        yield from getattr(reply, field)
        if not reply.next_page_token:
            return
        request.page_token = reply.next_page_token
