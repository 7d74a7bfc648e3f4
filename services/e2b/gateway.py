"""The front door's only backend: the gateway, reached with the caller's key.

Every call carries ``authorization: Bearer <key>`` of the E2B caller (its
``X-API-Key``, or the key inside its envd access token) and, for calls on a
sandbox, the run's sandbox token: the gateway checks the key's scopes, the
manager checks the token, so the front door can never do more than its
caller. The aio channel is opened lazily, on the event loop that serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from grpc import aio
from longshore.kanban.v1 import kanban_service_pb2_grpc, worker_service_pb2_grpc
from longshore.sandbox.v1 import sandbox_service_pb2_grpc

from services.runtime.channels import open_aio_channel
from services.runtime.sandbox_tokens import SANDBOX_TOKEN_KEY

if TYPE_CHECKING:
    from longshore.kanban.v1.kanban_service_pb2_grpc import KanbanServiceAsyncStub
    from longshore.kanban.v1.worker_service_pb2_grpc import WorkerServiceAsyncStub
    from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceAsyncStub

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Caller:
    """Who an E2B request acts as: an API key and, on a sandbox, its run's token."""

    api_key: str
    sandbox_token: str = ""

    def metadata(self) -> Metadata:
        """The call metadata presenting this caller."""
        auth = (("authorization", f"Bearer {self.api_key}"),)
        if self.sandbox_token:
            return (*auth, (SANDBOX_TOKEN_KEY, self.sandbox_token))
        return auth


class Gateway:
    """Stubs of the gateway's Kanban, Worker and Sandbox services on one channel.

    Args:
        address: The gateway's ``host:port``.
        timeout: Deadline of each unary call, in seconds.
    """

    def __init__(self, address: str, *, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._channel: aio.Channel | None = None
        self._kanban: KanbanServiceAsyncStub | None = None
        self._worker: WorkerServiceAsyncStub | None = None
        self._sandbox: SandboxServiceAsyncStub | None = None

    def _open(self) -> aio.Channel:
        if self._channel is None:
            # No channel-wide key: each call carries its caller's.
            self._channel = open_aio_channel(self.address, default_timeout=self.timeout)
            self._kanban = kanban_service_pb2_grpc.KanbanServiceStub(self._channel)
            self._worker = worker_service_pb2_grpc.WorkerServiceStub(self._channel)
            self._sandbox = sandbox_service_pb2_grpc.SandboxServiceStub(self._channel)
        return self._channel

    @property
    def kanban(self) -> KanbanServiceAsyncStub:
        """KanbanService (tasks)."""
        self._open()
        assert self._kanban is not None
        return self._kanban

    @property
    def worker(self) -> WorkerServiceAsyncStub:
        """WorkerService (claims, heartbeats, completion)."""
        self._open()
        assert self._worker is not None
        return self._worker

    @property
    def sandbox(self) -> SandboxServiceAsyncStub:
        """SandboxService (acquire, exec, files, leases)."""
        self._open()
        assert self._sandbox is not None
        return self._sandbox

    async def close(self) -> None:
        """Closes the channel (on the loop that opened it)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
