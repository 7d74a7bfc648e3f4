"""The dashboard's only backend: the gateway, reached with the caller's key.

Every call carries ``authorization: Bearer <key>`` and an explicit deadline.
The key is the logged-in session's own (:meth:`GatewayClient.with_key`), the
single sign-on key, or the dashboard's configured key in loopback mode; the
channels are shared, only the per-call metadata differs, so a session never
borrows another's credential. Streams (events, run output) go over the same
traced channel: it returns real gRPC call objects, which a view can
``cancel()`` when the browser goes away.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from longshore.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longshore.kanban.v1 import (
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    task_pb2,
)
from longshore.sandbox.v1 import sandbox_service_pb2_grpc

from services.runtime.channels import open_channel

if TYPE_CHECKING:
    from services.dashboard.auth.gate import Identity

#: Most pages a list call follows before giving up (1000 items each).
MAX_PAGES = 20


class GatewayClient:
    """Typed access to the gateway's Kanban, Sandbox and Gateway services.

    Args:
        address: The gateway's ``host:port``.
        api_key: The key calls carry unless rebound with :meth:`with_key`
            (the dashboard's own; "" sends none).
        timeout: Deadline of each unary call, in seconds.
    """

    def __init__(self, address: str, *, api_key: str, timeout: float = 10.0) -> None:
        self._metadata: tuple[tuple[str, str], ...] = self._auth(api_key)
        self.address = address
        self.timeout = timeout
        # No channel-wide metadata: the key travels per call, so one channel
        # serves every session without ever mixing credentials.
        self._channel = open_channel(address)
        self.kanban = kanban_service_pb2_grpc.KanbanServiceStub(self._channel)
        self.sandbox = sandbox_service_pb2_grpc.SandboxServiceStub(self._channel)
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self._channel)

    @staticmethod
    def _auth(api_key: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def with_key(self, api_key: str) -> GatewayClient:
        """The same client (same channel) whose calls carry ``api_key`` instead."""
        bound = copy.copy(self)
        bound._metadata = self._auth(api_key)
        return bound

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def call(self, method: Any, request: Any) -> Any:
        """Call a unary stub method with the deadline and this client's key."""
        return method(request, timeout=self.timeout, metadata=self._metadata)

    def stream(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        """Start a server-streaming call; the returned call is cancellable from any thread."""
        return method(request, timeout=timeout, metadata=self._metadata)

    # Status -----------------------------------------------------------------

    def status(self) -> gateway_service_pb2.GetStatusResponse:
        """The gateway's version and its backends' health."""
        return self.call(self.gateway.GetStatus, gateway_service_pb2.GetStatusRequest())  # type: ignore[no-any-return]

    def check_api_key(self, api_key: str) -> gateway_service_pb2.GetStatusResponse:
        """Ask the gateway whether a user's API key is valid, and its scopes (login).

        Raises:
            grpc.RpcError: UNAUTHENTICATED or PERMISSION_DENIED for a bad key.
        """
        return self.with_key(api_key).status()

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
        return self.stream(self.kanban.WatchEvents, request)  # type: ignore[no-any-return]

    def stream_output(
        self, *, task_id: str, run_id: str, offset: int
    ) -> Iterator[kanban_service_pb2.StreamRunOutputResponse]:
        """Follow a run's output from ``offset`` until the run ends."""
        request = kanban_service_pb2.StreamRunOutputRequest(
            task_id=task_id, run_id=run_id, offset=offset, follow=True
        )
        return self.stream(self.kanban.StreamRunOutput, request)  # type: ignore[no-any-return]


#: How long the scopes of a configured key are remembered.
SCOPES_TTL_SECONDS = 30.0


class ScopeCache:
    """The scopes of configured keys (the dashboard's own, the single sign-on key).

    A session remembers its own key's scopes from login; a configured key is
    asked of the gateway (``GetStatus`` reports the calling key's scopes) and
    remembered briefly, so a page render costs no extra call.

    Args:
        client: The dashboard's gateway client.
        clock: Monotonic seconds (tests inject one).
    """

    def __init__(self, client: GatewayClient, *, clock: Callable[[], float]) -> None:
        self._client = client
        self._clock = clock
        # Page renders run on many threads; a stale read is harmless, a torn
        # dict update is not.
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    def scopes_of(self, identity: Identity | None) -> frozenset[str]:
        """The scopes an identity's key holds: a session's from login, else asked."""
        if identity is None:
            return frozenset()
        if identity.scopes is not None:
            return identity.scopes
        return self.scopes(identity.api_key)

    def scopes(self, api_key: str) -> frozenset[str]:
        """Scopes of ``api_key`` ("" = the dashboard's own); empty when unknown."""
        now = self._clock()
        with self._lock:
            hit = self._cache.get(api_key)
        if hit is not None and now - hit[0] < SCOPES_TTL_SECONDS:
            return hit[1]
        client = self._client.with_key(api_key) if api_key else self._client
        try:
            scopes = frozenset(client.status().scopes)
        except grpc.RpcError:
            # Unknown scopes render a read-only page; the gateway still
            # decides every call, so this can only ever show less.
            return frozenset()
        with self._lock:
            self._cache[api_key] = (now, scopes)
        return scopes


def can_write(scopes: frozenset[str]) -> bool:
    """Whether a key with ``scopes`` may change tasks (write, or admin)."""
    return bool(scopes & {"write", "admin"})


def can_admin(scopes: frozenset[str]) -> bool:
    """Whether a key with ``scopes`` may run operator actions (reap sandboxes)."""
    return "admin" in scopes
