"""The real dashboard as a process in front of the real stack, and the CLI.

Shared by the integration tests here and the browser tests in tests/e2e.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.gateway.stack import RealStack
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT, ServiceProcess, service_env

SESSION_SECRET = "e2e-session-secret-" + "z" * 32


@dataclass
class DashboardProcess:
    """A running dashboard process."""

    port: int
    process: ServiceProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, *, token: str = "", body: Any = None
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        headers = {"X-Longshore-Token": token} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw

    def page_token(self) -> str:
        status, html = self.request("GET", "/boards/default")
        assert status == 200, html
        match = re.search(rb'name="longshore-token" content="([^"]*)"', html)
        assert match is not None
        return match.group(1).decode()


def wait_http(port: int, process: ServiceProcess, timeout: float = 30.0) -> None:
    """Wait until ``/api/status`` answers, or fail with the process's log."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"dashboard exited {process.returncode}:\n{process.log_tail()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/status")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            pause.wait(0.1)
    raise RuntimeError(f"dashboard did not answer in {timeout}s:\n{process.log_tail()}")


@contextmanager
def dashboard_process(
    stack: RealStack, *, env: dict[str, str] | None = None, name: str = "dashboard"
) -> Iterator[DashboardProcess]:
    """Run ``python -m services.dashboard`` against the stack's gateway."""
    port = free_port()
    full_env = {
        "LONGSHORE_HOME": str(stack.home),
        "LONGSHORE_DASHBOARD_LISTEN": f"127.0.0.1:{port}",
        "LONGSHORE_DASHBOARD_API_KEY": stack.keys.admin,
        "LONGSHORE_GATEWAY_ADDR": stack.gateway_addr,
        **(env or {}),
    }
    with ServiceProcess(
        ["python", "-m", "services.dashboard"],
        env=full_env,
        health_addr=f"127.0.0.1:{port}",
        name=name,
        log_dir=stack.home / "logs",
    ) as process:
        process.spawn()
        wait_http(port, process)
        yield DashboardProcess(port, process)


def cli(stack: RealStack, *args: str) -> Any:
    """Run the ``longshore`` CLI against the stack's gateway and parse ``--json``."""
    env = service_env(
        {"LONGSHORE_GATEWAY_ADDR": stack.gateway_addr, "LONGSHORE_API_KEY": stack.keys.admin}
    )
    result = subprocess.run(
        [sys.executable, "-m", "clients.cli.main", "--json", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"longshore {' '.join(args)}: {result.stderr}"
    return json.loads(result.stdout) if result.stdout.strip() else None


def artifacts_dir() -> Path:
    """``test-artifacts/screenshots`` at the repo root (git-ignored)."""
    path = REPO_ROOT / "test-artifacts" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
