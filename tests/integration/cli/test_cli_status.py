"""`longshore status` shows why a backend is not serving, relayed by a real gateway.

The gateway runs as a real process; its two backends are real Longshore servers
(the runtime's server factory, in process), one of which reports NOT_SERVING
with a reason, as the sandbox manager does while its engine is unreachable.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.gateway.auth import key_entry, new_key
from services.runtime.testing import RunningServer, serve_in_process
from tests.integration.cli.test_cli_commands import cli_argv
from tests.support.net import free_port
from tests.support.processes import ServiceProcess

TOKEN = "status-test-internal-token"
REASON = "docker engine unreachable: connection refused (since 12:00:00)"


@pytest.fixture
def backends() -> Iterator[tuple[RunningServer, RunningServer]]:
    with (
        serve_in_process([], internal_token=TOKEN) as kanban,
        serve_in_process([], internal_token=TOKEN) as sandbox,
    ):
        yield kanban, sandbox


def test_status_names_the_backend_that_is_down_and_why(
    backends: tuple[RunningServer, RunningServer], tmp_path: Path
) -> None:
    kanban, sandbox = backends
    key = new_key()
    addr = f"127.0.0.1:{free_port()}"
    env = {
        "LONGSHORE_HOME": str(tmp_path / "gateway-home"),
        "LONGSHORE_INTERNAL_TOKEN": TOKEN,
        "LONGSHORE_GATEWAY_LISTEN": addr,
        "LONGSHORE_GATEWAY_API_KEYS": key_entry("reader", ["read"], key),
        "LONGSHORE_KANBAN_ADDR": kanban.address,
        "LONGSHORE_SANDBOX_ADDR": sandbox.address,
        "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
    }
    with ServiceProcess(
        ["python", "-m", "services.gateway"],
        env=env,
        health_addr=addr,
        name="gateway",
        log_dir=tmp_path,
    ) as gateway:
        gateway.start(timeout=60)

        def status(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*cli_argv(), "--addr", addr, "--api-key", key, *extra, "status"],
                env={**os.environ, "LONGSHORE_HOME": str(tmp_path / "cli-home")},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        healthy = status()
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stderr == ""

        sandbox.server.set_serving(False, REASON)
        down = status()
        assert down.returncode == 1, down.stderr
        (row,) = [line for line in down.stdout.splitlines() if line.startswith("sandbox ")]
        assert "not_serving" in row and row.endswith(REASON), down.stdout
        (row,) = [line for line in down.stdout.splitlines() if line.startswith("kanban ")]
        assert " serving " in row, down.stdout
        assert down.stderr.strip().splitlines() == [f"sandbox is not_serving: {REASON}"]

        as_json = status("--json")
        assert as_json.returncode == 1
        reported = {b["name"]: b for b in json.loads(as_json.stdout)["backends"]}
        assert reported["sandbox"]["health"] == "BACKEND_HEALTH_NOT_SERVING"
        assert reported["sandbox"]["detail"] == REASON

        sandbox.server.set_serving(True)
        assert status().returncode == 0
