"""ServiceProcess against a tiny real gRPC server with the library health service."""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.processes import ServiceProcess, ServiceStartError

_SERVER = textwrap.dedent(
    """
    import os, signal, sys, threading
    from concurrent import futures
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         options=[("grpc.so_reuseport", 0)])
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(os.environ["ADDR"])
    server.start()
    print("started", os.environ.get("GREETING", ""), "importable:",
          any(p.endswith("gen/python") for p in sys.path), flush=True)
    serving = health_pb2.HealthCheckResponse.SERVING
    delay = float(os.environ.get("SERVING_AFTER", "0"))
    threading.Timer(delay, servicer.set, ("", serving)).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    print("terminating", flush=True)
    server.stop(1).wait()
    sys.exit(0)
    """
)


@pytest.fixture
def server_script(tmp_path: Path) -> Path:
    path = tmp_path / "health_server.py"
    path.write_text(_SERVER)
    return path


def _service(script: Path, tmp_path: Path, **env: str) -> tuple[ServiceProcess, str]:
    addr = f"127.0.0.1:{free_port()}"
    svc = ServiceProcess(
        ["python", str(script)],
        env={"ADDR": addr, **env},
        health_addr=addr,
        name="probe",
        log_dir=tmp_path,
    )
    return svc, addr


def test_start_waits_for_serving_and_terminate_exits_cleanly(
    server_script: Path, tmp_path: Path
) -> None:
    svc, _ = _service(server_script, tmp_path, GREETING="hello", SERVING_AFTER="0.3")
    with svc:
        svc.start(timeout=20)
        assert svc.returncode is None
        svc.terminate()
        assert svc.wait(timeout=10) == 0
    log = svc.log_text()
    assert "started hello importable: True" in log
    assert "terminating" in log
    assert svc.log_path == tmp_path / "probe.log"


def test_kill_sends_sigkill_to_own_pid(server_script: Path, tmp_path: Path) -> None:
    svc, _ = _service(server_script, tmp_path)
    with svc.start(timeout=20):
        svc.kill()
        assert svc.wait(timeout=10) == -signal.SIGKILL
        assert svc.returncode == -signal.SIGKILL


def test_context_manager_stops_a_running_process(server_script: Path, tmp_path: Path) -> None:
    svc, _ = _service(server_script, tmp_path)
    with svc:
        svc.start(timeout=20)
    assert svc.returncode == 0


def test_early_exit_raises_with_log_tail(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text("import sys\nprint('boom: bad setting LONGSHORE_X')\nsys.exit(3)\n")
    svc, _ = _service(script, tmp_path)
    with pytest.raises(ServiceStartError, match=r"exited with 3[\s\S]*boom: bad setting"):
        svc.start(timeout=20)


def test_never_serving_times_out_and_kills(tmp_path: Path) -> None:
    script = tmp_path / "idle.py"
    script.write_text("import time\nprint('idle', flush=True)\ntime.sleep(60)\n")
    svc, addr = _service(script, tmp_path)
    with pytest.raises(ServiceStartError, match=f"not SERVING on {addr}"):
        svc.start(timeout=1.5)
    assert svc.wait(timeout=10) == -signal.SIGKILL


def test_wait_times_out_while_running(server_script: Path, tmp_path: Path) -> None:
    svc, _ = _service(server_script, tmp_path)
    with svc.start(timeout=20), pytest.raises(subprocess.TimeoutExpired):
        svc.wait(timeout=0.1)
