"""Each service, started as a real process, says in one line why it cannot start.

A port in use is the common case (a second `longshore up`, a compose stack on
the same ports): the service must exit non-zero with
``<service>: cannot listen on <addr>: address already in use`` and no
traceback. A missing ``LONGSHORE_HOME`` is not a reason to fail: kanban
creates it (0700) with its SQLite database inside.
"""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime.server_base import EXIT_CANNOT_START, BindError, check_listen
from tests.support.net import free_port
from tests.support.processes import ServiceProcess, service_env


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port this test listens on (nothing else may bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _run_service(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"services.{name}"],
        env=service_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("service", ["sandbox", "kanban", "gateway"])
def test_a_port_in_use_is_one_line_and_a_non_zero_exit(
    service: str, taken_port: int, tmp_path: Path, test_deployment: str
) -> None:
    listen = f"127.0.0.1:{taken_port}"
    env = {
        "LONGSHORE_HOME": str(tmp_path / "home"),
        "LONGSHORE_DEPLOYMENT": test_deployment,
        "LONGSHORE_INTERNAL_TOKEN": "t" * 32,
        "LONGSHORE_GATEWAY_API_KEYS": "",
        f"LONGSHORE_{service.upper()}_LISTEN": listen,
    }
    done = _run_service(service, env)
    assert done.returncode == EXIT_CANNOT_START, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [
        f"{service}: cannot listen on {listen}: address already in use"
    ], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_check_listen_names_the_reason() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BindError, match=r"address already in use$"):
            check_listen(f"127.0.0.1:{port}")
    check_listen(f"127.0.0.1:{port}")  # released: free again
    check_listen("127.0.0.1:0")
    with pytest.raises(BindError, match="the port is not a number"):
        check_listen("127.0.0.1:http")
    with pytest.raises(BindError, match="out of range"):
        check_listen("127.0.0.1:70000")
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine (nothing is sent).
    with pytest.raises(BindError, match="cannot assign requested address"):
        check_listen("192.0.2.1:50051")


def test_kanban_creates_a_missing_home_with_private_permissions(
    tmp_path: Path, test_deployment: str
) -> None:
    home = tmp_path / "not" / "yet" / "home"
    addr = f"127.0.0.1:{free_port()}"
    env = {
        "LONGSHORE_HOME": str(home),
        "LONGSHORE_DEPLOYMENT": test_deployment,
        "LONGSHORE_KANBAN_LISTEN": addr,
        "LONGSHORE_KANBAN_DISPATCHER_ENABLED": "false",
        "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
    }
    with ServiceProcess(
        ["python", "-m", "services.kanban"],
        env=env,
        health_addr=addr,
        name="kanban",
        log_dir=tmp_path,
    ) as kanban:
        kanban.start()
    assert (home / "kanban.db").is_file()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
