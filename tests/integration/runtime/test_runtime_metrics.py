"""RPC metrics through real in-process servers, scraped from their real /metrics endpoint.

The server factory is built with a meter from ``configure_metrics``; calls
ending OK, with a typed error, with a crash, a refused credential and a
stream are made through generated stubs, and the Prometheus text the
endpoint serves must count each by method and code.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from longshore.gateway.v1 import gateway_service_pb2 as gw_pb
from longshore.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from longshore.kanban.v1 import kanban_service_pb2, kanban_service_pb2_grpc

from services.runtime.aio_serving import build_aio_server
from services.runtime.metrics import ServiceMeterProvider, configure_metrics
from services.runtime.rpc_metrics import CallWindow
from services.runtime.server_base import BindError
from tests.integration.runtime.test_runtime_aio_server import (
    AsyncGateway,
    AsyncKanban,
    gateway,
    kanban,
)
from tests.support.prometheus import Samples
from tests.support.prometheus import scrape as scrape_address

GATEWAY = "longshore.gateway.v1.GatewayService"
OK, INVALID_ARGUMENT, NOT_FOUND, INTERNAL, UNAUTHENTICATED = 0, 3, 5, 13, 16


def scrape(provider: ServiceMeterProvider) -> Samples:
    """Every sample the provider's /metrics serves, by (name, labels)."""
    return scrape_address(provider.metrics_address)


def calls(samples: dict, service: str, method: str, code: int) -> float:
    """``rpc_server_duration_milliseconds_count`` for one method and code (0 when absent)."""
    key = (
        "rpc_server_duration_milliseconds_count",
        frozenset(
            {
                ("rpc_system", "grpc"),
                ("rpc_service", service),
                ("rpc_method", method),
                ("rpc_grpc_status_code", str(code)),
            }
        ),
    )
    return samples.get(key, 0.0)


def active(samples: dict, service: str, method: str) -> float:
    key = (
        "rpc_server_active_calls",
        frozenset({("rpc_system", "grpc"), ("rpc_service", service), ("rpc_method", method)}),
    )
    return samples.get(key, 0.0)


@pytest.fixture
def provider() -> Iterator[ServiceMeterProvider]:
    provider = configure_metrics("test", prometheus_listen="127.0.0.1:0", set_global=False)
    yield provider
    provider.shutdown()


def get_status(address: str, *, token: str | None = "s3cret") -> grpc.StatusCode:
    metadata = (("longshore-internal-token", token),) if token else ()
    with grpc.insecure_channel(address) as channel:
        try:
            gw_grpc.GatewayServiceStub(channel).GetStatus(
                gw_pb.GetStatusRequest(), timeout=5, metadata=metadata
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_aio_server_counts_calls_by_method_and_code(provider: ServiceMeterProvider) -> None:
    window = CallWindow()
    meter = provider.get_meter("test")
    servers = [
        build_aio_server(
            [gateway(AsyncGateway(mode)), kanban(AsyncKanban())],
            listen="127.0.0.1:0",
            internal_token="s3cret",
            meter=meter,
            call_window=window,
        )
        for mode in ("ok", "not_found", "crash")
    ]
    for server in servers:
        server.start()
    try:
        ok, not_found, crash = (s.address for s in servers)
        assert [get_status(ok) for _ in range(3)] == [grpc.StatusCode.OK] * 3
        assert [get_status(not_found) for _ in range(2)] == [grpc.StatusCode.NOT_FOUND] * 2
        assert get_status(crash) == grpc.StatusCode.INTERNAL
        assert get_status(ok, token=None) == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(ok) as channel:
            stream = kanban_service_pb2_grpc.KanbanServiceStub(channel).WatchEvents(
                kanban_service_pb2.WatchEventsRequest(board_id="b1"),
                timeout=5,
                metadata=(("longshore-internal-token", "s3cret"),),
            )
            assert next(stream).event.event_id == 1
            with pytest.raises(grpc.RpcError) as info:
                next(stream)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        samples = scrape(provider)
    finally:
        for server in servers:
            server.stop(0)
    assert calls(samples, GATEWAY, "GetStatus", OK) == 3
    assert calls(samples, GATEWAY, "GetStatus", NOT_FOUND) == 2
    assert calls(samples, GATEWAY, "GetStatus", INTERNAL) == 1
    assert calls(samples, GATEWAY, "GetStatus", UNAUTHENTICATED) == 1
    assert calls(samples, "longshore.kanban.v1.KanbanService", "WatchEvents", NOT_FOUND) == 1
    assert calls(samples, "grpc.health.v1.Health", "Check", OK) == 1
    assert active(samples, GATEWAY, "GetStatus") == 0
    # The window counts the same calls but the health check, errors by code.
    figures = window.figures()
    assert figures.calls == 8
    assert dict(figures.errors_by_code) == {
        "INTERNAL": 1,
        "NOT_FOUND": 3,
        "UNAUTHENTICATED": 1,
    }
    assert figures.errors == 5
    assert (figures.in_flight, figures.held_streams) == (0, 0)
    assert 0 < figures.p50_ms <= figures.p99_ms


def test_a_held_call_is_in_flight_until_it_ends(provider: ServiceMeterProvider) -> None:
    servicer = AsyncGateway("hold")
    window = CallWindow()
    server = build_aio_server(
        [gateway(servicer)],
        listen="127.0.0.1:0",
        meter=provider.get_meter("test"),
        call_window=window,
    )
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        held = gw_grpc.GatewayServiceStub(channel).GetStatus.future(
            gw_pb.GetStatusRequest(), timeout=30
        )
        assert servicer.entered.wait(30)
        assert active(scrape(provider), GATEWAY, "GetStatus") == 1
        assert window.figures().in_flight == 1
        release = servicer.release
        assert release is not None
        server.loop.call_soon_threadsafe(release.set)
        assert held.result(timeout=30).version == "ok"
        samples = scrape(provider)
    finally:
        channel.close()
        server.stop(0)
    assert active(samples, GATEWAY, "GetStatus") == 0
    assert calls(samples, GATEWAY, "GetStatus", OK) == 1
    assert window.figures().in_flight == 0


def test_a_metrics_port_in_use_is_one_line(provider: ServiceMeterProvider) -> None:
    with pytest.raises(BindError) as info:
        configure_metrics("test", prometheus_listen=provider.metrics_address, set_global=False)
    assert str(info.value) == (
        f"cannot listen on {provider.metrics_address}: address already in use"
    )
    assert "\n" not in str(info.value)


def test_the_endpoint_stops_with_the_provider() -> None:
    provider = configure_metrics("test", prometheus_listen="127.0.0.1:0", set_global=False)
    address = provider.metrics_address
    assert httpx.get(f"http://{address}/metrics", timeout=10).status_code == 200
    provider.shutdown()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{address}/metrics", timeout=2)
    # Another provider may take the port at once.
    again = configure_metrics("test", prometheus_listen=address, set_global=False)
    again.shutdown()


def test_a_provider_nobody_reads_injects_no_meter(provider: ServiceMeterProvider) -> None:
    unread = configure_metrics("test", set_global=False)
    assert unread.recording_meter("test") is None
    unread.shutdown()
    assert provider.recording_meter("test") is not None


def test_a_refused_call_is_counted_before_its_caller_sees_the_status(
    provider: ServiceMeterProvider,
) -> None:
    # Malformed request bytes and a missing credential are answered by the
    # serving layer itself; the scrape right after each failed call must
    # already count it (gRPC sends an abort's status at once).
    server = build_aio_server(
        [gateway(AsyncGateway("ok"))],
        listen="127.0.0.1:0",
        internal_token="s3cret",
        meter=provider.get_meter("test"),
    )
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            raw = channel.unary_unary(f"/{GATEWAY}/GetStatus")
            with pytest.raises(grpc.RpcError) as info:
                raw(b"\xff\xff\xff", timeout=5, metadata=(("longshore-internal-token", "s3cret"),))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert calls(scrape(provider), GATEWAY, "GetStatus", INVALID_ARGUMENT) == 1
            assert get_status(server.address, token=None) == grpc.StatusCode.UNAUTHENTICATED
            samples = scrape(provider)
            assert calls(samples, GATEWAY, "GetStatus", UNAUTHENTICATED) == 1
            assert active(samples, GATEWAY, "GetStatus") == 0
    finally:
        server.stop(0)
