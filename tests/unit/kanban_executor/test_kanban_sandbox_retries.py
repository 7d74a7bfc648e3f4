"""The sandbox client's retry policy and health probe, against a real in-process gRPC server.

The server is a scripted ``SandboxService`` (a fake of the manager's logic,
not of gRPC): it answers UNAVAILABLE a set number of times, so the test sees
what the client's channel really retries.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from grpc import aio
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2, sandbox_service_pb2_grpc

from services.kanban.sandbox_client import (
    RETRY_ATTEMPTS,
    RETRY_SERVICE_CONFIG,
    SandboxClient,
    SandboxUnavailable,
)
from services.runtime.aio_serving import AioService
from services.runtime.channels import open_channel
from services.runtime.errors import InvalidArgument, Unavailable
from services.runtime.testing import RunningServer, serve_in_process


@dataclass
class Scripted(sandbox_service_pb2_grpc.SandboxServiceServicer):
    """Fails each method with UNAVAILABLE ``failures[method]`` times, then answers."""

    failures: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _count(self, method: str) -> None:
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            left = self.failures.get(method, 0)
            if left:
                self.failures[method] = left - 1
                raise Unavailable("docker engine unreachable: connection refused")

    async def AcquireSandbox(  # type: ignore[override]
        self, request: sandbox_service_pb2.AcquireSandboxRequest, context: aio.ServicerContext
    ) -> sandbox_service_pb2.AcquireSandboxResponse:
        self._count("AcquireSandbox")
        if request.task_id == "bad":
            raise InvalidArgument("task_id: bad")
        return sandbox_service_pb2.AcquireSandboxResponse(
            sandbox=sandbox_pb2.Sandbox(sandbox_id="sb-1")
        )

    async def ReleaseSandbox(  # type: ignore[override]
        self, request: sandbox_service_pb2.ReleaseSandboxRequest, context: aio.ServicerContext
    ) -> sandbox_service_pb2.ReleaseSandboxResponse:
        self._count("ReleaseSandbox")
        return sandbox_service_pb2.ReleaseSandboxResponse(removal_scheduled=True)

    async def ListSandboxes(  # type: ignore[override]
        self, request: sandbox_service_pb2.ListSandboxesRequest, context: aio.ServicerContext
    ) -> sandbox_service_pb2.ListSandboxesResponse:
        self._count("ListSandboxes")
        return sandbox_service_pb2.ListSandboxesResponse(
            sandboxes=[sandbox_pb2.Sandbox(sandbox_id="sb-1")]
        )

    async def Exec(  # type: ignore[override]
        self, request: sandbox_service_pb2.ExecRequest, context: aio.ServicerContext
    ) -> AsyncIterator[sandbox_service_pb2.ExecResponse]:
        self._count("Exec")
        yield sandbox_service_pb2.ExecResponse(exit=sandbox_pb2.ExecExit(exit_code=0))


@pytest.fixture
def scripted() -> Iterator[tuple[Scripted, RunningServer]]:
    servicer = Scripted()
    service = AioService(
        "longshore.sandbox.v1.SandboxService",
        lambda s: sandbox_service_pb2_grpc.add_SandboxServiceServicer_to_server(servicer, s),
    )
    with serve_in_process([service], internal_token="t") as running:
        yield servicer, running


def _client(running: RunningServer) -> SandboxClient:
    return SandboxClient(running.address, internal_token="t", acquire_timeout=20, call_timeout=20)


def test_idempotent_calls_retry_unavailable_within_the_bounded_policy(
    scripted: tuple[Scripted, RunningServer],
) -> None:
    servicer, running = scripted
    client = _client(running)
    try:
        servicer.failures.update(
            {"AcquireSandbox": RETRY_ATTEMPTS - 1, "ReleaseSandbox": 2, "ListSandboxes": 1}
        )
        spec = sandbox_pb2.SandboxSpec(image="busybox:test")
        assert client.acquire("t1", "p", spec, persist=True).sandbox_id == "sb-1"
        assert client.release("sb-1", force=True) is True
        assert client.find("t1", "p") == ["sb-1"]
        assert servicer.calls == {"AcquireSandbox": 4, "ReleaseSandbox": 3, "ListSandboxes": 2}
        # Past the bound, UNAVAILABLE reaches the caller as the typed error.
        servicer.failures["AcquireSandbox"] = RETRY_ATTEMPTS
        with pytest.raises(SandboxUnavailable):
            client.acquire("t1", "p", spec, persist=True)
        assert servicer.calls["AcquireSandbox"] == 4 + RETRY_ATTEMPTS
        # Other codes are never retried.
        with pytest.raises(Exception, match="task_id: bad"):
            client.acquire("bad", "p", spec, persist=True)
        assert servicer.calls["AcquireSandbox"] == 5 + RETRY_ATTEMPTS
    finally:
        client.close()


def test_exec_is_never_retried(scripted: tuple[Scripted, RunningServer]) -> None:
    servicer, running = scripted
    client = _client(running)
    try:
        servicer.failures["Exec"] = 1
        stream = client.exec("sb-1", ["true"], env={}, timeout_seconds=5, max_output_bytes=64)
        with pytest.raises(SandboxUnavailable):
            list(stream)
        assert servicer.calls["Exec"] == 1
    finally:
        client.close()


def test_the_service_config_names_only_idempotent_methods() -> None:
    # The config parses as a channel option (gRPC rejects a malformed one).
    channel = open_channel("127.0.0.1:1", options=[("grpc.service_config", RETRY_SERVICE_CONFIG)])
    channel.close()
    assert '"Exec"' not in RETRY_SERVICE_CONFIG
    assert '"AcquireSandbox"' in RETRY_SERVICE_CONFIG


def test_health_says_why_the_manager_is_not_serving(
    scripted: tuple[Scripted, RunningServer],
) -> None:
    _servicer, running = scripted
    client = _client(running)
    try:
        assert client.health() is None
        running.server.set_serving(False, "docker engine unreachable: connection refused")
        assert client.health() == "docker engine unreachable: connection refused"
        running.server.set_serving(True)
        assert client.health() is None
    finally:
        client.close()
    gone = SandboxClient("127.0.0.1:1", internal_token="t")
    try:
        problem = gone.health()
        assert problem is not None and problem.startswith("sandbox manager unavailable")
    finally:
        gone.close()
