"""The server factory through real in-process servers and generated stubs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from longshore.gateway.v1 import gateway_service_pb2 as gw_pb
from longshore.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from longshore.kanban.v1 import kanban_service_pb2, kanban_service_pb2_grpc

from services.runtime import healthcheck
from services.runtime.serving import BindError, build_server
from services.runtime.testing import serve_in_process
from tests.integration.runtime.demo_services import (
    FailingGateway,
    StreamingKanban,
    gateway_service,
    kanban_service,
)
from tests.support.health import probe_address

REPO = Path(__file__).resolve().parents[3]


def _status(mode: str) -> grpc.RpcError:
    with serve_in_process([gateway_service(FailingGateway(mode))]) as running:
        stub = gw_grpc.GatewayServiceStub(running.channel())
        with pytest.raises(grpc.RpcError) as info:
            stub.GetStatus(gw_pb.GetStatusRequest(), timeout=5)
    return info.value


def test_typed_errors_reach_the_client_with_code_and_message() -> None:
    err = _status("not_found")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "backend 'kanban' not found"
    err = _status("invalid")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "scopes[0]" in err.details()


def test_unexpected_exception_is_internal_never_unknown() -> None:
    err = _status("crash")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "KeyError" in err.details()
    assert "GetStatus" in err.details()


def test_downstream_status_passes_through_a_chain() -> None:
    with (
        serve_in_process([gateway_service(FailingGateway("not_found"))]) as back,
        serve_in_process([gateway_service(FailingGateway("forward", back.address))]) as front,
    ):
        stub = gw_grpc.GatewayServiceStub(front.channel())
        with pytest.raises(grpc.RpcError) as info:
            stub.GetStatus(gw_pb.GetStatusRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "backend 'kanban' not found"


def test_streaming_handler_errors_are_mapped_after_the_items_sent() -> None:
    with serve_in_process([kanban_service(StreamingKanban())]) as running:
        stub = kanban_service_pb2_grpc.KanbanServiceStub(running.channel())
        stream = stub.WatchEvents(kanban_service_pb2.WatchEventsRequest(board_id="b1"), timeout=5)
        first = next(stream)
        assert first.event.event_id == 1
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'b1'" in info.value.details()


def test_internal_credential_is_required_except_for_health_and_reflection() -> None:
    with serve_in_process([gateway_service(FailingGateway("ok"))], internal_token="s3cret") as rs:
        bare = grpc.insecure_channel(rs.address)
        with pytest.raises(grpc.RpcError) as info:
            gw_grpc.GatewayServiceStub(bare).GetStatus(gw_pb.GetStatusRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "longshore-internal-token" in info.value.details()
        health = health_pb2_grpc.HealthStub(bare).Check(
            health_pb2.HealthCheckRequest(service="longshore.gateway.v1.GatewayService"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        ok = gw_grpc.GatewayServiceStub(rs.channel()).GetStatus(gw_pb.GetStatusRequest(), timeout=5)
        assert ok.version == "ok"
        bare.close()


def test_reflection_lists_services_to_buf_curl() -> None:
    buf = REPO / "tools/node_modules/.bin/buf"
    assert buf.exists(), "buf is installed by `make bootstrap` (tools/package.json)"
    with serve_in_process([gateway_service(FailingGateway("ok"))]) as running:
        out = subprocess.run(
            [
                str(buf),
                "curl",
                "--protocol",
                "grpc",
                "--http2-prior-knowledge",
                "--list-services",
                f"http://{running.address}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    listed = set(out.stdout.split())
    assert "longshore.gateway.v1.GatewayService" in listed
    assert "grpc.health.v1.Health" in listed


def test_two_servers_never_share_a_port() -> None:
    with (
        serve_in_process([gateway_service(FailingGateway("ok"))]) as running,
        pytest.raises(
            BindError, match=r"cannot listen on 127\.0\.0\.1:\d+: address already in use"
        ),
    ):
        build_server([gateway_service(FailingGateway("ok"))], listen=running.address)


def test_healthcheck_probe_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with serve_in_process([gateway_service(FailingGateway("ok"))]) as running:
        assert healthcheck.main([running.address]) == 0
        running.server.health.enter_graceful_shutdown()
        assert healthcheck.main([running.address]) == 1
    assert healthcheck.main([running.address, "--timeout", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "SERVING" in out and "NOT_SERVING" in out


def test_a_server_reports_not_serving_with_its_reason_and_recovers() -> None:
    from longshore.gateway.v1.gateway_service_pb2 import BackendHealth

    with serve_in_process([gateway_service(FailingGateway("not_found"))]) as running:
        channel = running.channel()
        health_stub = health_pb2_grpc.HealthStub(channel)
        running.server.set_serving(False, "docker engine unreachable: connection refused")
        reply = health_stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        seen = probe_address(running.address)
        assert seen.health == BackendHealth.BACKEND_HEALTH_NOT_SERVING
        assert seen.detail == "docker engine unreachable: connection refused"
        # Not ASCII, several lines: still one printable metadata line, never INTERNAL.
        running.server.set_serving(False, "engine … gone\nreally")
        assert probe_address(running.address).detail == "engine ? gone really"
        running.server.set_serving(True)
        reply = health_stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert probe_address(running.address).detail == ""
