"""The dashboard's only backend: the gateway, reached with the dashboard's key.

Every call carries ``authorization: Bearer <dashboard api key>`` and an
explicit deadline. Streams (events, run output) go over a second, plain
channel so that they return real gRPC call objects a view can ``cancel()``
when the browser goes away (the instrumented channel wraps server streams in
generators, which cannot be cancelled from another thread); their trace
context is injected into the metadata by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from longshore.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longshore.kanban.v1 import (
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    task_pb2,
)
from longshore.sandbox.v1 import sandbox_service_pb2_grpc
from opentelemetry import propagate

from services.runtime.channels import open_channel

#: Most pages a list call follows before giving up (1000 items each).
MAX_PAGES = 20


class GatewayClient:
    """Typed access to the gateway's Kanban, Sandbox and Gateway services.

    Args:
        address: The gateway's ``host:port``.
        api_key: The dashboard's own gateway API key ("" sends none).
        timeout: Deadline of each unary call, in seconds.
    """

    def __init__(self, address: str, *, api_key: str, timeout: float = 10.0) -> None:
        self._metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.address = address
        self.timeout = timeout
        self._channel = open_channel(address, metadata=self._metadata)
        self._stream_channel = grpc.insecure_channel(address)
        self.kanban = kanban_service_pb2_grpc.KanbanServiceStub(self._channel)
        self.sandbox = sandbox_service_pb2_grpc.SandboxServiceStub(self._channel)
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self._channel)
        self._kanban_streams = kanban_service_pb2_grpc.KanbanServiceStub(self._stream_channel)

    def close(self) -> None:
        """Close the channels."""
        self._channel.close()
        self._stream_channel.close()

    def call(self, method: Any, request: Any) -> Any:
        """Call a unary stub method with the deadline (the channel adds the key)."""
        return method(request, timeout=self.timeout)

    def stream(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        """Start a server-streaming call on the plain channel; it is cancellable."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata = tuple(self._metadata) + tuple(carrier.items())
        return method(request, timeout=timeout, metadata=metadata)

    # Status -----------------------------------------------------------------

    def status(self) -> gateway_service_pb2.GetStatusResponse:
        """The gateway's version and its backends' health."""
        return self.call(self.gateway.GetStatus, gateway_service_pb2.GetStatusRequest())  # type: ignore[no-any-return]

    def check_api_key(self, api_key: str) -> gateway_service_pb2.GetStatusResponse:
        """Ask the gateway whether a user's API key is valid (login).

        Raises:
            grpc.RpcError: UNAUTHENTICATED or PERMISSION_DENIED for a bad key.
        """
        return self.gateway.GetStatus(
            gateway_service_pb2.GetStatusRequest(),
            timeout=self.timeout,
            metadata=(("authorization", f"Bearer {api_key}"),),
        )

    # Kanban -----------------------------------------------------------------

    def list_tasks(
        self, board_id: str, *, assignee: str = "", readiness: bool = True
    ) -> list[task_pb2.Task]:
        """Every task of a board (all pages), by priority then age."""
        tasks: list[task_pb2.Task] = []
        token = ""
        for _ in range(MAX_PAGES):
            response = self.call(
                self.kanban.ListTasks,
                kanban_service_pb2.ListTasksRequest(
                    board_id=board_id,
                    assignee=assignee,
                    include_readiness=readiness,
                    page_size=1000,
                    page_token=token,
                ),
            )
            tasks.extend(response.tasks)
            token = response.next_page_token
            if not token:
                break
        return tasks

    def paged(self, method: Any, request: Any, field: str) -> list[Any]:
        """Follow ``next_page_token`` of a list call and concatenate ``field``."""
        items: list[Any] = []
        for _ in range(MAX_PAGES):
            response = self.call(method, request)
            items.extend(getattr(response, field))
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        return items

    def watch_events(
        self, *, since: int, board_id: str = "", task_id: str = ""
    ) -> Iterator[kanban_service_pb2.WatchEventsResponse]:
        """Start ``WatchEvents``; the returned call can be ``cancel()``-ed."""
        request = kanban_service_pb2.WatchEventsRequest(
            since_event_id=since, board_id=board_id, task_id=task_id
        )
        return self.stream(self._kanban_streams.WatchEvents, request)  # type: ignore[no-any-return]

    def stream_output(
        self, *, task_id: str, run_id: str, offset: int
    ) -> Iterator[kanban_service_pb2.StreamRunOutputResponse]:
        """Follow a run's output from ``offset`` until the run ends."""
        request = kanban_service_pb2.StreamRunOutputRequest(
            task_id=task_id, run_id=run_id, offset=offset, follow=True
        )
        return self.stream(self._kanban_streams.StreamRunOutput, request)  # type: ignore[no-any-return]
