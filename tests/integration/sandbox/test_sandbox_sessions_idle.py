"""Sessions and the idle rules, in-process on the real engine with a hand-moved clock.

A sandbox whose session runs a command is busy: the idle sweep never pauses
it under the command; once the command ended it may, and the next session
command resumes it. A session idle past its timeout is closed by the sweep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import docker
import pytest

from services.sandbox.manager import SandboxManager
from services.sandbox.model import ExecCommand, OutputChunk, Spec
from services.sandbox.reaper import Reaper, StartupGuard
from services.sandbox.sessions import SessionCommand, SessionExit, SessionState
from services.sandbox.settings import SandboxSection
from tests.integration.sandbox.conftest import remove_deployment
from tests.integration.sandbox.test_sandbox_pause_snapshot_lease import FakeClock, state_of

BOUND = 60.0


class Collector:
    """A sink that keeps everything and says when the exit came."""

    def __init__(self) -> None:
        self.output = b""
        self.exit: SessionExit | None = None
        self.ended = threading.Event()

    def put(self, event: OutputChunk, *, give_up: Callable[[], bool]) -> bool:
        self.output += event.data
        return True

    def end(self, event: SessionExit) -> None:
        self.exit = event
        self.ended.set()


@pytest.fixture
def clocked(
    engine: docker.DockerClient, section: SandboxSection, test_deployment: str
) -> Iterator[tuple[SandboxManager, FakeClock]]:
    clock = FakeClock()
    manager = SandboxManager(
        engine,
        replace(section, pause_idle_after_seconds=60, idle_stop_seconds=0),
        deployment=test_deployment,
        clock=clock,
        lease_timer=False,
    )
    try:
        yield manager, clock
    finally:
        manager.close(15)
        remove_deployment(engine, test_deployment)


def command(source: str) -> SessionCommand:
    return SessionCommand(source=source, timeout_seconds=BOUND, max_output_bytes=0)


def test_a_running_session_command_keeps_its_sandbox_from_the_idle_pause(
    clocked: tuple[SandboxManager, FakeClock], engine: docker.DockerClient
) -> None:
    manager, clock = clocked
    cid = manager.acquire("ses-idle", "coder", Spec()).sandbox.sandbox_id
    opened = manager.sessions.open(cid, shell="/bin/sh", env={}, workdir="", idle_timeout=3600)
    reaper = Reaper(manager, guard=StartupGuard())
    waiting = Collector()
    manager.sessions.run(
        cid,
        opened.session_id,
        command("while [ ! -e /tmp/gate ]; do sleep 0.05; done; echo through"),
        waiting,
    )
    assert manager.is_busy(cid)
    assert cid not in {c for c, _, _ in reaper.idle(clock.advance(120))}
    assert state_of(engine, cid) == "running"
    list(manager.exec(cid, ExecCommand(argv=("touch", "/tmp/gate"))))
    assert waiting.ended.wait(BOUND) and waiting.output == b"through\n"
    assert not manager.is_busy(cid)
    # Idle now: paused; the next command resumes it and the shell is still there.
    assert {c: a for c, a, _ in reaper.idle(clock.advance(120))} == {cid: "pause"}
    assert state_of(engine, cid) == "paused"
    again = Collector()
    manager.sessions.run(cid, opened.session_id, command("echo awake"), again)
    assert again.ended.wait(BOUND) and again.output == b"awake\n"
    assert state_of(engine, cid) == "running"


def test_the_sweep_closes_a_session_idle_past_its_timeout(
    clocked: tuple[SandboxManager, FakeClock],
) -> None:
    manager, clock = clocked
    cid = manager.acquire("ses-expire", "coder", Spec()).sandbox.sandbox_id
    short = manager.sessions.open(cid, shell="/bin/sh", env={}, workdir="", idle_timeout=100)
    long = manager.sessions.open(cid, shell="/bin/sh", env={}, workdir="", idle_timeout=1000)
    assert manager.sessions.expire_idle(clock.advance(99)) == 0
    assert manager.sessions.expire_idle(clock.advance(2)) == 1
    rows = {i.session_id: i for i in manager.sessions.list(cid)}
    assert rows[short.session_id].state is SessionState.CLOSED
    assert rows[short.session_id].end_reason == "idle for 1m40s"
    assert rows[long.session_id].state is SessionState.READY
