"""The server factory through real in-process servers: what ``test_runtime_aio_server``
does not cover (a chain through the instrumented channels, buf's reflection
client, the container health probe, the health detail a backend probe reads)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from longshore.gateway.v1 import gateway_service_pb2 as gw_pb
from longshore.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

from services.runtime import healthcheck
from services.runtime.testing import serve_in_process
from tests.integration.runtime.demo_services import (
    FailingGateway,
    gateway_service,
)
from tests.support.health import probe_address

REPO = Path(__file__).resolve().parents[3]


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


def test_healthcheck_probe_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with serve_in_process([gateway_service(FailingGateway("ok"))]) as running:
        assert healthcheck.main([running.address]) == 0
        running.server.run(running.server.health.enter_graceful_shutdown())
        assert healthcheck.main([running.address]) == 1
    assert healthcheck.main([running.address, "--timeout", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "SERVING" in out and "NOT_SERVING" in out


def test_a_server_reports_not_serving_with_its_reason_and_recovers() -> None:
    from longshore.gateway.v1.gateway_service_pb2 import BackendHealth

    with serve_in_process([gateway_service(FailingGateway("not_found"))]) as running:
        channel = running.channel()
        # set_serving publishes on the server's loop: Watch streams each change
        # as it lands, so the test waits for it instead of polling Check.
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        running.server.set_serving(False, "docker engine unreachable: connection refused")
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        seen = probe_address(running.address)
        assert seen.health == BackendHealth.BACKEND_HEALTH_NOT_SERVING
        assert seen.detail == "docker engine unreachable: connection refused"
        # Not ASCII, several lines: still one printable metadata line, never INTERNAL.
        running.server.set_serving(False, "engine … gone\nreally")
        assert probe_address(running.address).detail == "engine ? gone really"
        running.server.set_serving(True)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        assert probe_address(running.address).detail == ""
        watch.cancel()
        channel.close()
