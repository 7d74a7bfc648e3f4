"""The ``grpc.aio`` server factory through real in-process servers and generated stubs.

Typed errors keep their code, a downstream status passes through, anything
else is INTERNAL, malformed request bytes are INVALID_ARGUMENT, status messages are
capped, every response carries ``longshore-version``, health says why it is
not serving, the internal credential is required except for health and
reflection, and stopping drains in-flight calls before the shutdown hooks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from longshore.gateway.v1 import gateway_service_pb2 as gw_pb
from longshore.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from longshore.kanban.v1 import (
    event_pb2,
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

from services.runtime import errors
from services.runtime.aio_serving import AioService, build_aio_server
from services.runtime.interceptors import HEALTH_DETAIL_KEY, VERSION_KEY
from services.runtime.server_base import BindError
from services.runtime.testing import serve_aio_in_process
from services.runtime.version import __version__

GATEWAY = "longshore.gateway.v1.GatewayService"
Context = aio.ServicerContext[gw_pb.GetStatusRequest, gw_pb.GetStatusResponse]


class AsyncGateway(gw_grpc.GatewayServiceServicer):
    """GetStatus behaves according to ``mode``; ``release`` holds a ``hold`` call."""

    def __init__(self, mode: str, downstream: str = "") -> None:
        self.mode = mode
        self.downstream = downstream
        self.entered = threading.Event()
        self.release: asyncio.Event | None = None

    async def GetStatus(  # type: ignore[override]
        self, request: gw_pb.GetStatusRequest, context: Context
    ) -> gw_pb.GetStatusResponse:
        if self.mode == "not_found":
            raise errors.NotFound("backend 'kanban' not found")
        if self.mode == "huge":
            raise errors.InvalidArgument("scopes[0]: " + "x" * 5000)
        if self.mode == "crash":
            raise KeyError("surprise")
        if self.mode == "forward":
            async with aio.insecure_channel(self.downstream) as channel:
                reply = await gw_grpc.GatewayServiceStub(channel).GetStatus(request, timeout=5)
            return gw_pb.GetStatusResponse(version="front+" + reply.version)
        if self.mode == "hold":
            self.release = asyncio.Event()
            self.entered.set()
            await self.release.wait()
        return gw_pb.GetStatusResponse(version="ok", deployment=self.mode)


class AsyncKanban(kanban_service_pb2_grpc.KanbanServiceServicer):
    """WatchEvents yields one event, then fails with a typed error."""

    async def WatchEvents(  # type: ignore[override]
        self, request: kanban_service_pb2.WatchEventsRequest, context: object
    ) -> AsyncIterator[kanban_service_pb2.WatchEventsResponse]:
        yield kanban_service_pb2.WatchEventsResponse(
            event=event_pb2.TaskEvent(event_id=1, kind="created")
        )
        raise errors.NotFound(f"board {request.board_id!r} not found")


def gateway(servicer: AsyncGateway) -> AioService:
    return AioService(GATEWAY, lambda s: gw_grpc.add_GatewayServiceServicer_to_server(servicer, s))


def kanban(servicer: AsyncKanban) -> AioService:
    return AioService(
        "longshore.kanban.v1.KanbanService",
        lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(servicer, s),
    )


def status_error(mode: str) -> grpc.RpcError:
    with serve_aio_in_process([gateway(AsyncGateway(mode))]) as running:
        stub = gw_grpc.GatewayServiceStub(running.channel())
        with pytest.raises(grpc.RpcError) as info:
            stub.GetStatus(gw_pb.GetStatusRequest(), timeout=5)
    return info.value


def test_typed_errors_keep_their_code_and_messages_are_capped() -> None:
    err = status_error("not_found")
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "backend 'kanban' not found")
    err = status_error("huge")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("scopes[0]: xxx")
    assert len(err.details()) <= 1000


def test_unexpected_exception_is_internal_never_unknown() -> None:
    err = status_error("crash")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "KeyError" in err.details() and "GetStatus" in err.details()


def test_downstream_status_passes_through() -> None:
    with (
        serve_aio_in_process([gateway(AsyncGateway("not_found"))]) as back,
        serve_aio_in_process([gateway(AsyncGateway("forward", back.address))]) as front,
        pytest.raises(grpc.RpcError) as info,
    ):
        gw_grpc.GatewayServiceStub(front.channel()).GetStatus(gw_pb.GetStatusRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "backend 'kanban' not found"


def test_stream_errors_are_mapped_after_the_items_sent() -> None:
    with serve_aio_in_process([kanban(AsyncKanban())]) as running:
        stub = kanban_service_pb2_grpc.KanbanServiceStub(running.channel())
        stream = stub.WatchEvents(kanban_service_pb2.WatchEventsRequest(board_id="b1"), timeout=5)
        assert next(stream).event.event_id == 1
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'b1'" in info.value.details()


def test_malformed_request_bytes_are_invalid_argument_naming_the_message() -> None:
    with serve_aio_in_process([gateway(AsyncGateway("ok"))]) as running:
        raw = running.channel().unary_unary(f"/{GATEWAY}/GetStatus")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GetStatusRequest" in info.value.details()


def test_version_trailer_and_health_detail() -> None:
    with serve_aio_in_process([gateway(AsyncGateway("ok"))]) as running:
        channel = running.channel()
        _, call = gw_grpc.GatewayServiceStub(channel).GetStatus.with_call(
            gw_pb.GetStatusRequest(), timeout=5
        )
        assert dict(call.trailing_metadata())[VERSION_KEY] == __version__
        health = health_pb2_grpc.HealthStub(channel)
        running.server.set_serving(False, "database unreachable: connection refused")
        reply, call = health.Check.with_call(health_pb2.HealthCheckRequest(), timeout=5)
        # set_serving is applied on the server's loop: poll until it is.
        for _ in range(100):
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            threading.Event().wait(0.05)
            reply, call = health.Check.with_call(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        trailers = dict(call.trailing_metadata())
        assert trailers[HEALTH_DETAIL_KEY] == "database unreachable: connection refused"
        assert trailers[VERSION_KEY] == __version__
        # Not ASCII, several lines: still one printable metadata line, never INTERNAL.
        running.server.set_serving(False, "engine … gone\nreally")
        for _ in range(100):
            _, call = health.Check.with_call(health_pb2.HealthCheckRequest(), timeout=5)
            if dict(call.trailing_metadata())[HEALTH_DETAIL_KEY] == "engine ? gone really":
                break
            threading.Event().wait(0.05)
        assert dict(call.trailing_metadata())[HEALTH_DETAIL_KEY] == "engine ? gone really"


def test_internal_credential_is_required_except_for_health_and_reflection() -> None:
    servicer = AsyncGateway("ok")
    with serve_aio_in_process([gateway(servicer)], internal_token="s3cret") as running:
        with grpc.insecure_channel(running.address) as bare:
            with pytest.raises(grpc.RpcError) as info:
                gw_grpc.GatewayServiceStub(bare).GetStatus(gw_pb.GetStatusRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "longshore-internal-token" in info.value.details()
            health = health_pb2_grpc.HealthStub(bare).Check(
                health_pb2.HealthCheckRequest(service=GATEWAY), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            listed = next(
                reflection_pb2_grpc.ServerReflectionStub(bare).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
            )
            names = {s.name for s in listed.list_services_response.service}
            assert GATEWAY in names
        ok = gw_grpc.GatewayServiceStub(running.channel()).GetStatus(
            gw_pb.GetStatusRequest(), timeout=5
        )
        assert ok.version == "ok"


def test_two_servers_never_share_a_port() -> None:
    with (
        serve_aio_in_process([gateway(AsyncGateway("ok"))]) as running,
        pytest.raises(
            BindError, match=r"cannot listen on 127\.0\.0\.1:\d+: address already in use"
        ),
    ):
        build_aio_server([gateway(AsyncGateway("ok"))], listen=running.address)


def test_stop_drains_an_in_flight_call_then_runs_the_hooks() -> None:
    servicer = AsyncGateway("hold")
    server = build_aio_server([gateway(servicer)], listen="127.0.0.1:0")
    hooks: list[str] = []

    async def hook() -> None:
        hooks.append("ran")

    server.add_shutdown_hook(hook)
    server.start()
    channel = grpc.insecure_channel(server.address)
    held = gw_grpc.GatewayServiceStub(channel).GetStatus.future(
        gw_pb.GetStatusRequest(), timeout=30
    )
    assert servicer.entered.wait(30)
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 30})
    stopper.start()
    health = health_pb2_grpc.HealthStub(channel)
    # Draining: health says NOT_SERVING while the held call is still running.
    for _ in range(200):
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        except grpc.RpcError:
            break  # already refusing new calls: the drain has begun
        if status == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        threading.Event().wait(0.05)
    assert not held.done() and hooks == []
    release = servicer.release
    assert release is not None
    server.loop.call_soon_threadsafe(release.set)
    assert held.result(timeout=30).version == "ok"
    stopper.join(timeout=60)
    assert not stopper.is_alive()
    assert hooks == ["ran"]
    channel.close()


class HoldingWorker(worker_service_pb2_grpc.WorkerServiceServicer):
    """ClaimTask holds until cancelled; counts the calls it holds."""

    def __init__(self) -> None:
        self.held = 0

    async def ClaimTask(  # type: ignore[override]
        self, request: worker_service_pb2.ClaimTaskRequest, context: object
    ) -> worker_service_pb2.ClaimTaskResponse:
        self.held += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.held -= 1
        return worker_service_pb2.ClaimTaskResponse()


def test_a_burst_beyond_grpc_cores_default_pending_queue_is_accepted() -> None:
    """2,500 calls at once: gRPC core's default queue (1,000) would cancel some."""
    burst = 2500
    servicer = HoldingWorker()
    service = AioService(
        "longshore.kanban.v1.WorkerService",
        lambda s: worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, s),
    )
    with serve_aio_in_process([service]) as running, grpc.insecure_channel(running.address) as ch:
        stub = worker_service_pb2_grpc.WorkerServiceStub(ch)
        request = worker_service_pb2.ClaimTaskRequest(profile="p", worker_id="w")
        calls = [stub.ClaimTask.future(request, timeout=120) for _ in range(burst)]
        try:
            for _ in range(1200):
                if servicer.held >= burst or any(c.done() for c in calls):
                    break
                threading.Event().wait(0.1)
            failed = [c for c in calls if c.done()]
            assert failed == [], f"{len(failed)} failed, e.g. {failed[0].exception()}"
            assert servicer.held == burst
        finally:
            for call in calls:
                call.cancel()
