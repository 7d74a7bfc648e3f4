"""The process table: the cap, unique tags among running processes, lookups, retention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from services.runtime.errors import AlreadyExists, NotFound, ResourceExhausted
from services.sandbox.processes.table import MAX_EXITED_PER_SANDBOX, ProcessTable


@dataclass
class FakeProcess:
    """What the table reads of a process."""

    process_id: str
    sandbox_id: str = "box"
    tag: str = ""
    pid: int = 0
    running: bool = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def table(clock: Clock, max_running: int = 2) -> ProcessTable:
    return ProcessTable(max_running=max_running, retention_seconds=60, clock=clock)


def add(t: ProcessTable, process: FakeProcess) -> FakeProcess:
    t.admit(process)  # type: ignore[arg-type]
    return process


def end(t: ProcessTable, process: FakeProcess) -> None:
    process.running = False
    t.exited(process)  # type: ignore[arg-type]


def test_the_cap_counts_running_processes_per_sandbox() -> None:
    t = table(Clock())
    first = add(t, FakeProcess("p1"))
    add(t, FakeProcess("p2"))
    with pytest.raises(ResourceExhausted, match="max_processes_per_sandbox"):
        add(t, FakeProcess("p3"))
    add(t, FakeProcess("q1", sandbox_id="other"))  # another sandbox has its own cap
    end(t, first)
    add(t, FakeProcess("p3"))
    assert t.running_in("box") == 2 and t.running_in("other") == 1


def test_a_tag_is_unique_among_running_processes_and_finds_the_live_one() -> None:
    t = table(Clock(), max_running=5)
    old = add(t, FakeProcess("p1", tag="web", pid=10))
    with pytest.raises(AlreadyExists, match="'web'"):
        add(t, FakeProcess("p2", tag="web"))
    end(t, old)
    new = add(t, FakeProcess("p3", tag="web", pid=10))
    assert t.find("box", ("tag", "web")) is new
    assert t.find("box", ("pid", 10)) is new  # a reused pid names the live process
    assert t.find("box", ("process_id", "p1")) is old
    with pytest.raises(NotFound, match="'nope'"):
        t.find("box", ("tag", "nope"))
    listed: list[Any] = t.in_sandbox("box", include_exited=True)
    assert [p.process_id for p in listed] == ["p3", "p1"]  # newest first
    assert [p.process_id for p in t.in_sandbox("box", include_exited=False)] == ["p3"]


def test_exited_processes_go_after_the_retention_and_beyond_the_count() -> None:
    clock = Clock()
    t = table(clock, max_running=1000)
    gone = add(t, FakeProcess("p0"))
    end(t, gone)
    clock.now = 61
    with pytest.raises(NotFound):
        t.find("box", ("process_id", "p0"))
    for i in range(MAX_EXITED_PER_SANDBOX + 5):
        end(t, add(t, FakeProcess(f"e{i}")))
    kept = t.in_sandbox("box", include_exited=True)
    assert len(kept) == MAX_EXITED_PER_SANDBOX
    assert kept[-1].process_id == "e5"  # the oldest went first


def test_a_process_that_never_started_leaves_no_trace() -> None:
    t = table(Clock(), max_running=1)
    failed = add(t, FakeProcess("p1", tag="x"))
    t.discard(failed)  # type: ignore[arg-type]
    add(t, FakeProcess("p2", tag="x"))
    assert [p.process_id for p in t.in_sandbox("box", include_exited=True)] == ["p2"]
