"""SIGTERM on a real server process: NOT_SERVING, drain, hooks, clean exit."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.net import free_port
from tests.support.processes import ServiceProcess


def test_sigterm_reports_not_serving_then_drains_and_exits_zero() -> None:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    proc = ServiceProcess(
        ["python", "-m", "tests.integration.runtime.demo_server", addr],
        health_addr=addr,
        name="demo",
    )
    with proc:
        proc.start(timeout=20)
        with grpc.insecure_channel(addr) as channel:
            # Watch streams every status change: SERVING now, NOT_SERVING on SIGTERM.
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            proc.terminate()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
        assert proc.wait(timeout=15) == 0
    assert "hook ran" in proc.log_text()


def test_a_sigterm_delivered_to_another_thread_still_stops_the_server(tmp_path: Path) -> None:
    # The kernel may hand a process's SIGTERM to any of its threads; Python
    # then only sets a flag for the main thread, which must wake to run the
    # handler (a manager once ignored SIGTERM for a minute in CI this way).
    port = free_port()
    addr = f"127.0.0.1:{port}"
    trigger = tmp_path / "sigterm-now"
    proc = ServiceProcess(
        [
            "python",
            "-m",
            "tests.integration.runtime.demo_server",
            addr,
            "--sigterm-a-thread-on",
            str(trigger),
        ],
        health_addr=addr,
        name="demo-thread-signal",
    )
    with proc:
        proc.start(timeout=20)
        trigger.touch()
        assert proc.wait(timeout=20) == 0, proc.log_tail()
        assert "signal received; draining" in proc.log_text()
        assert "hook ran" in proc.log_text()
