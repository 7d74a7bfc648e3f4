"""`longshore up` as a real process: start, print a working key, supervise, stop cleanly."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cli.test_cli_commands import cli_argv
from tests.support.net import free_port


class Up:
    """A running `longshore up` with its output in files."""

    def __init__(self, home: Path, deployment: str, image: str, *extra: str) -> None:
        self.home = home
        self.ports = {n: free_port() for n in ("gateway", "kanban", "sandbox", "dashboard")}
        self.env = {
            **os.environ,
            "LONGSHORE_HOME": str(home),
            "LONGSHORE_DEPLOYMENT": deployment,
            "LONGSHORE_SANDBOX_DEFAULT_IMAGE": image,
            "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
        }
        for name in ("LONGSHORE_API_KEY", "LONGSHORE_GATEWAY_ADDR"):
            self.env.pop(name, None)
        argv = [
            *cli_argv(),
            "up",
            "--quiet",
            *(f"--{n}-port={p}" for n, p in self.ports.items()),
            *extra,
        ]
        self.out_path, self.err_path = home / "up.out", home / "up.err"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=err)

    def text(self) -> str:
        return self.out_path.read_text() + self.err_path.read_text()

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.text())
            if match:
                return match
            assert self.proc.poll() is None or re.search(pattern, self.text()), (
                f"`up` exited with {self.proc.returncode} before {pattern!r}:\n{self.text()}"
            )
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.text()}"
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.2)

    def pid_of(self, service: str, after: int = 0) -> int:
        pids = re.findall(rf"(?:started|restarted) {service} \(pid (\d+)\)", self.text())
        return int(pids[-1]) if pids and int(pids[-1]) != after else 0

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli_argv(), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


@pytest.fixture
def up_factory(tmp_path: Path, test_deployment: str, sandbox_image: str) -> Iterator[type[Up]]:
    started: list[Up] = []

    class _Up(Up):
        def __init__(self, *extra: str) -> None:
            super().__init__(tmp_path, test_deployment, sandbox_image, *extra)
            started.append(self)

    yield _Up
    for up in started:
        up.stop()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_up_prints_a_working_key_and_a_child_crash_ends_it(up_factory: type[Up]) -> None:
    up = up_factory("--no-supervise", "--no-dashboard")
    key = up.wait_for(r"api key\s+(lsk_\S+)").group(1)
    gateway = up.wait_for(r"gateway\s+(127\.0\.0\.1:\d+)").group(1)
    status = up.cli("status", "--addr", gateway, "--api-key", key)
    assert status.returncode == 0, status.stderr
    assert "serving" in status.stdout
    # cli.yaml under LONGSHORE_HOME makes flags unnecessary.
    assert up.cli("status").returncode == 0
    assert (up.home / "logs" / "gateway" / "gateway.log").stat().st_size > 0
    kanban = up.pid_of("kanban")
    pids = [up.pid_of(n) for n in ("sandbox", "kanban", "gateway")]
    os.kill(kanban, signal.SIGKILL)  # a child of the `up` this test started
    assert up.proc.wait(60) == 128 + signal.SIGKILL
    assert "kanban exited with 137; stopping (--no-supervise)" in up.text()
    assert all(_gone(pid) for pid in pids)


def test_up_restarts_a_crashed_child_then_stops_in_reverse_order(up_factory: type[Up]) -> None:
    up = up_factory("--backoff-base=0.1", "--no-dashboard")
    up.wait_for("Longshore is up")
    first = up.pid_of("kanban")
    os.kill(first, signal.SIGKILL)  # a child of the `up` this test started
    up.wait_for(r"kanban exited with 137; restarting in 0\.1s")
    up.wait_for(r"restarted kanban \(pid \d+\)")
    assert up.pid_of("kanban", after=first)
    deadline = time.monotonic() + 60
    while (status := up.cli("status")).returncode != 0:
        assert time.monotonic() < deadline, status.stderr
        time.sleep(0.3)
    assert up.stop() == 0
    text = up.text()
    order = [text.index(f"stopping {n}") for n in ("gateway", "kanban", "sandbox")]
    assert order == sorted(order), text
