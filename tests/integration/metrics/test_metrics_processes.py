"""The sandbox manager and the gateway as real processes, scraped on their /metrics.

Calls go through the gateway with generated stubs: an acquire, an exec, a
GetSandbox of a sandbox that does not exist, a call without an API key. Each
service's Prometheus text must count them by method and code (the gateway
also the refused one, which never reaches the sandbox manager), the sandbox
manager its acquires by outcome and exec durations, and the gateway's
GetStatus the same calls in its headline figures. A metrics port in use is a
one-line exit.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from longshore.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from longshore.sandbox.v1 import sandbox_service_pb2, sandbox_service_pb2_grpc

from services.gateway.auth import key_entry, new_key
from services.runtime.server_base import EXIT_CANNOT_START
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT, ServiceProcess, service_env
from tests.support.prometheus import Samples
from tests.support.prometheus import scrape as scrape_address

SANDBOX = "longshore.sandbox.v1.SandboxService"
OK, NOT_FOUND, UNAUTHENTICATED = "0", "5", "16"


@dataclass
class Stack:
    gateway_addr: str
    gateway_metrics: str
    sandbox_metrics: str
    key: str
    processes: dict[str, ServiceProcess]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("metrics")
    token, key = secrets.token_urlsafe(24), new_key()
    grpc_ports = {name: f"127.0.0.1:{free_port()}" for name in ("sandbox", "gateway")}
    metrics_ports = {name: f"127.0.0.1:{free_port()}" for name in ("sandbox", "gateway")}
    common = {
        "LONGSHORE_HOME": str(home),
        "LONGSHORE_DEPLOYMENT": f"t{run_id}-metrics",
        "LONGSHORE_INTERNAL_TOKEN": token,
        "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
    }
    envs = {
        "sandbox": {
            **common,
            "LONGSHORE_SANDBOX_LISTEN": grpc_ports["sandbox"],
            "LONGSHORE_SANDBOX_DEFAULT_IMAGE": sandbox_image,
            "LONGSHORE_METRICS_LISTEN": metrics_ports["sandbox"],
        },
        "gateway": {
            **common,
            "LONGSHORE_GATEWAY_LISTEN": grpc_ports["gateway"],
            "LONGSHORE_GATEWAY_API_KEYS": key_entry("ops", ["read", "write", "admin"], key),
            "LONGSHORE_SANDBOX_ADDR": grpc_ports["sandbox"],
            # No kanban in this test: the gateway reports it unreachable.
            "LONGSHORE_KANBAN_ADDR": f"127.0.0.1:{free_port()}",
            "LONGSHORE_METRICS_LISTEN": metrics_ports["gateway"],
        },
    }
    processes = {
        name: ServiceProcess(
            ["python", "-m", f"services.{name}"],
            env=envs[name],
            health_addr=grpc_ports[name],
            name=name,
            log_dir=home / "logs",
        )
        for name in ("sandbox", "gateway")
    }
    try:
        processes["sandbox"].start(60)
        processes["gateway"].start(60)
        yield Stack(
            grpc_ports["gateway"],
            metrics_ports["gateway"],
            metrics_ports["sandbox"],
            key,
            processes,
        )
    finally:
        for name in ("gateway", "sandbox"):
            processes[name].stop()


def calls(samples: Samples, method: str, code: str, service: str = SANDBOX) -> float:
    labels = {("rpc_service", service), ("rpc_method", method), ("rpc_grpc_status_code", code)}
    return samples.get(("rpc_server_duration_milliseconds_count", frozenset(labels)), 0.0)


def test_both_services_count_calls_by_method_and_code(stack: Stack) -> None:
    auth = (("authorization", f"Bearer {stack.key}"),)
    with grpc.insecure_channel(stack.gateway_addr) as channel:
        sandbox = sandbox_service_pb2_grpc.SandboxServiceStub(channel)
        box = sandbox.AcquireSandbox(
            sandbox_service_pb2.AcquireSandboxRequest(task_id="m1", profile="metrics"),
            timeout=60,
            metadata=auth,
        ).sandbox.sandbox_id
        try:
            output = b"".join(
                m.output.data
                for m in sandbox.Exec(
                    sandbox_service_pb2.ExecRequest(sandbox_id=box, argv=["echo", "counted"]),
                    timeout=30,
                    metadata=auth,
                )
                if m.HasField("output")
            )
            assert output == b"counted\n"
            with pytest.raises(grpc.RpcError) as info:
                sandbox.GetSandbox(
                    sandbox_service_pb2.GetSandboxRequest(sandbox_id="sb-nope"),
                    timeout=10,
                    metadata=auth,
                )
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as info:
                sandbox.ListSandboxes(sandbox_service_pb2.ListSandboxesRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            status = gateway_service_pb2_grpc.GatewayServiceStub(channel).GetStatus(
                gateway_service_pb2.GetStatusRequest(), timeout=10, metadata=auth
            )
        finally:
            sandbox.ReleaseSandbox(
                sandbox_service_pb2.ReleaseSandboxRequest(sandbox_id=box, force_remove=True),
                timeout=60,
                metadata=auth,
            )
    gateway = scrape(stack.gateway_metrics)
    manager = scrape(stack.sandbox_metrics)
    for samples in (gateway, manager):
        assert calls(samples, "AcquireSandbox", OK) == 1
        assert calls(samples, "Exec", OK) == 1
        assert calls(samples, "GetSandbox", NOT_FOUND) == 1
    # Refused at the gateway: the sandbox manager never saw it.
    assert calls(gateway, "ListSandboxes", UNAUTHENTICATED) == 1
    assert calls(manager, "ListSandboxes", UNAUTHENTICATED) == 0
    assert calls(gateway, "GetStatus", OK, "longshore.gateway.v1.GatewayService") == 1
    # The sandbox manager's own instruments.
    acquires = {
        dict(labels)["outcome"]: value
        for (name, labels), value in manager.items()
        if name == "longshore_sandbox_acquires_total"
    }
    assert acquires == {"created": 1}
    exec_count = [
        value
        for (name, _), value in manager.items()
        if name == "longshore_sandbox_exec_duration_milliseconds_count"
    ]
    assert exec_count == [1]
    # The headline figures: the four calls before GetStatus (which is in flight).
    traffic = status.traffic
    assert traffic.calls == 4
    assert dict(traffic.errors_by_code) == {"NOT_FOUND": 1, "UNAUTHENTICATED": 1}
    assert traffic.errors == 2
    assert traffic.in_flight_calls == 1
    assert traffic.held_streams == 0
    assert 0 < traffic.p50_latency_ms <= traffic.p99_latency_ms
    assert traffic.calls_per_second > 0


def test_a_metrics_port_in_use_is_one_line(stack: Stack, tmp_path: Path) -> None:
    env = service_env(
        {
            "LONGSHORE_HOME": str(tmp_path),
            "LONGSHORE_INTERNAL_TOKEN": "x",
            "LONGSHORE_GATEWAY_LISTEN": f"127.0.0.1:{free_port()}",
            "LONGSHORE_METRICS_LISTEN": stack.gateway_metrics,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_CANNOT_START
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"gateway: cannot listen on {stack.gateway_metrics}: address already in use"


def scrape(address: str) -> Samples:
    return scrape_address(address, drop=("rpc_system",))
