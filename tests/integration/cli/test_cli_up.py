"""`longshore up` as a real process: start, print a working key, supervise, stop cleanly.

Start-up tells the truth: the banner only once every child answers its own
health check; a port in use, or a child that dies first, is one line naming
the service and why, and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.cli.supervisor import ChildSpec, Supervisor, listeners
from services.runtime.testing import serve_in_process
from tests.integration.cli.test_cli_commands import cli_argv
from tests.support.net import free_port

BANNER = "Longshore is up"
LOOPBACK = "127.0.0.1"


class Up:
    """A running `longshore up` with its output in files."""

    def __init__(
        self,
        out_dir: Path,
        deployment: str,
        image: str,
        *extra: str,
        home: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = home or out_dir
        self.ports = {n: free_port() for n in ("gateway", "kanban", "sandbox", "dashboard")}
        self.env = {
            **os.environ,
            "LONGSHORE_HOME": str(self.home),
            "LONGSHORE_DEPLOYMENT": deployment,
            "LONGSHORE_SANDBOX_DEFAULT_IMAGE": image,
            "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
            **(env or {}),
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
        self.out_path, self.err_path = out_dir / "up.out", out_dir / "up.err"
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
        def __init__(
            self, *extra: str, home: Path | None = None, env: dict[str, str] | None = None
        ) -> None:
            super().__init__(tmp_path, test_deployment, sandbox_image, *extra, home=home, env=env)
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


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port this test listens on, so no child of `up` can bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_up_with_a_port_in_use_says_so_in_one_line_and_starts_nothing(
    up_factory: type[Up], taken_port: int
) -> None:
    up = up_factory("--no-supervise", "--no-dashboard", f"--gateway-port={taken_port}")
    assert up.proc.wait(60) != 0
    text = up.text()
    assert BANNER not in text
    line = f"gateway: cannot listen on 127.0.0.1:{taken_port}: address already in use"
    assert [t for t in text.splitlines() if t.strip()] == [f"error: up: {line}"], text
    assert "started" not in text  # checked before any child ran


def test_up_refuses_a_port_held_by_a_server_that_answers_serving(up_factory: type[Up]) -> None:
    """The case that printed the banner before: another Longshore server on the gateway port."""
    with serve_in_process([]) as other:
        port = int(other.address.rsplit(":", 1)[1])
        up = up_factory("--no-supervise", "--no-dashboard", f"--gateway-port={port}")
        assert up.proc.wait(60) != 0
    text = up.text()
    assert BANNER not in text, text
    assert f"error: up: gateway: cannot listen on 127.0.0.1:{port}: address already in use" in text


def test_up_names_the_child_that_died_before_it_was_healthy_and_why(
    up_factory: type[Up],
) -> None:
    # Nothing listens on this loopback port: kanban cannot reach its database.
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    up = up_factory("--no-supervise", "--no-dashboard", env={"LONGSHORE_DATABASE_URL": url})
    assert up.proc.wait(120) == 1
    text = up.text()
    assert BANNER not in text
    assert re.search(
        r"error: up: kanban exited with 1 before it was healthy: "
        r"sqlalchemy\.exc\.OperationalError: .*Connection refused",
        text,
    ), text
    assert "stopping sandbox" in text  # what had started is stopped


def test_up_creates_a_missing_home_readable_by_its_owner_only(
    up_factory: type[Up], tmp_path: Path
) -> None:
    home = tmp_path / "missing" / "longshore-home"
    up = up_factory("--no-supervise", "--no-dashboard", home=home)
    up.wait_for(BANNER)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert (home / "kanban.db").is_file()
    assert (home / "cli.yaml").is_file()
    assert up.cli("status").returncode == 0


def test_a_health_answer_from_another_process_is_not_the_childs(tmp_path: Path) -> None:
    """Another server on the child's port answers SERVING: that is not the child's health."""
    with serve_in_process([]) as other:
        spec = ChildSpec(
            "gateway",
            [sys.executable, "-c", "import time; time.sleep(120)"],
            dict(os.environ),
            grpc_health=other.address,
            listen=other.address,
        )
        # Start-up checks the address first: nothing is spawned.
        refused = Supervisor([spec], log_dir=tmp_path / "a", say=lambda _: None)
        with pytest.raises(RuntimeError, match=r"^gateway: cannot listen on .*address already"):
            refused.start()
        assert refused.children[0].proc is None
        # Had it been spawned (the port taken in between), its health is still not proven.
        supervisor = Supervisor([spec], log_dir=tmp_path / "b", say=lambda _: None, grace=5)
        child = supervisor.children[0]
        try:
            child.spawn()
            with pytest.raises(RuntimeError, match="SERVING, but from another process"):
                child.wait_healthy(3.0)
        finally:
            supervisor.stop()
        assert not child.running()


def test_every_listener_of_up_binds_loopback_by_default(up_factory: type[Up]) -> None:
    """Sandboxes reach the host on its bridge address: nothing of `up` may listen there."""
    up = up_factory("--no-supervise")
    up.wait_for(BANNER)
    for service, port in up.ports.items():
        pid = up.pid_of(service)
        held = listeners(pid)
        assert held is not None, "this test needs Linux's /proc"
        assert (LOOPBACK, port) in held, (service, held)
        assert {address for address, _ in held} == {LOOPBACK}, (service, held)
