"""``run_service`` exits: every service, started as a real process, refuses in one line.

A settings error and an address in use are an operator's problem, not a
crash: one line ``<service>: <reason>`` on stderr, no traceback, and exit
``EXIT_CANNOT_START`` so that a supervisor does not restart it in a loop.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime.server_base import EXIT_CANNOT_START
from tests.support.processes import service_env


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port this test listens on (nothing else may bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _run(service: str, env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        env=service_env({"LONGSHORE_HOME": str(home), "LONGSHORE_CONFIG": "", **env}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_one_line(done: subprocess.CompletedProcess[str], line: str) -> None:
    assert done.returncode == EXIT_CANNOT_START, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [line], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("service", "variable", "expected"),
    [
        ("sandbox", "LONGSHORE_SANDBOX_MAX_WORKERS", "expected an integer, got 'lots'"),
        ("gateway", "LONGSHORE_GATEWAY_MAX_DEADLINE_SECONDS", "got 'lots'"),
        ("dashboard", "LONGSHORE_DASHBOARD_KEEP_ALIVE_SECONDS", "expected an integer, got 'lots'"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    service: str, variable: str, expected: str, tmp_path: Path
) -> None:
    done = _run(service, {variable: "lots", "LONGSHORE_INTERNAL_TOKEN": "t" * 32}, tmp_path)
    assert done.returncode == EXIT_CANNOT_START == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"{service}: {variable}: ") and line.endswith(expected), line
    assert "Traceback" not in done.stdout + done.stderr


def test_a_gateway_without_the_internal_credential_refuses_in_one_line(tmp_path: Path) -> None:
    done = _run("gateway", {"LONGSHORE_INTERNAL_TOKEN": ""}, tmp_path)
    _assert_one_line(done, "gateway: LONGSHORE_INTERNAL_TOKEN must be set (backends require it)")


def test_a_malformed_api_key_refuses_in_one_line(tmp_path: Path) -> None:
    env = {"LONGSHORE_INTERNAL_TOKEN": "t" * 32, "LONGSHORE_GATEWAY_API_KEYS": "nohash"}
    done = _run("gateway", env, tmp_path)
    assert done.returncode == EXIT_CANNOT_START, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("gateway: gateway.api_keys[0]"), line


def test_a_dashboard_port_in_use_is_one_line_and_exit_cannot_start(
    taken_port: int, tmp_path: Path
) -> None:
    listen = f"127.0.0.1:{taken_port}"
    done = _run("dashboard", {"LONGSHORE_DASHBOARD_LISTEN": listen}, tmp_path)
    _assert_one_line(done, f"dashboard: cannot listen on {listen}: address already in use")
