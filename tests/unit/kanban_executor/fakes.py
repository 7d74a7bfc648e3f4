"""A fake sandbox service and a recording run sink for the executor tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from longshore.sandbox.v1 import sandbox_pb2

from services.kanban.executor import Outcome
from services.kanban.sandbox_client import (
    AcquiredSandbox,
    ExecCancelled,
    ExecOutput,
    ExecResult,
    SandboxError,
)

Event = ExecOutput | ExecResult | SandboxError


def exit_with(code: int = 0, *, timed_out: bool = False, output_bytes: int = 0) -> ExecResult:
    return ExecResult(
        exit_code=code,
        signal=9 if timed_out else 0,
        timed_out=timed_out,
        truncated=False,
        duration_seconds=0.01,
        output_bytes=output_bytes,
    )


def out(data: bytes) -> ExecOutput:
    return ExecOutput(1, data)


class FakeStream:
    """Yields its script; at index ``block_after`` it parks until ``resume`` or cancel."""

    def __init__(self, script: Sequence[Event], block_after: int | None) -> None:
        self.script = list(script)
        self.block_after = block_after
        self.cancelled = threading.Event()
        self.resume = threading.Event()
        self.parked = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        self.resume.set()

    def __iter__(self) -> Iterator[ExecOutput | ExecResult]:
        for index, event in enumerate(self.script):
            if index == self.block_after:
                self.parked.set()
                self.resume.wait(10)
            if self.cancelled.is_set():
                raise ExecCancelled("exec: cancelled")
            if isinstance(event, SandboxError):
                raise event
            yield event


@dataclass
class FakeSandboxes:
    """Scripted SandboxApi."""

    acquire_error: Exception | None = None
    script: list[Event] = field(default_factory=lambda: [out(b"hi\n"), exit_with(0)])
    block_after: int | None = None
    found: list[str] = field(default_factory=lambda: ["sb-found"])
    release_error: SandboxError | None = None
    acquired: list[tuple[str, str, sandbox_pb2.SandboxSpec, bool]] = field(default_factory=list)
    execs: list[tuple[str, tuple[str, ...], dict[str, str], float, int]] = field(
        default_factory=list
    )
    released: list[tuple[str, bool]] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)
    exec_called: threading.Event = field(default_factory=threading.Event)

    def acquire(
        self, task_id: str, profile: str, spec: sandbox_pb2.SandboxSpec, *, persist: bool
    ) -> AcquiredSandbox:
        self.acquired.append((task_id, profile, spec, persist))
        if self.acquire_error is not None:
            raise self.acquire_error
        return AcquiredSandbox(f"sb-{task_id}", False, "REUSE_OUTCOME_CREATED", "")

    def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        timeout_seconds: float,
        max_output_bytes: int,
    ) -> FakeStream:
        self.execs.append((sandbox_id, tuple(argv), dict(env), timeout_seconds, max_output_bytes))
        stream = FakeStream(self.script, self.block_after)
        self.streams.append(stream)
        self.exec_called.set()
        return stream

    def parked_stream(self, timeout: float = 10.0) -> FakeStream:
        """The latest exec stream, once it has parked mid-run."""
        assert self.exec_called.wait(timeout), "exec was never called"
        stream = self.streams[-1]
        assert stream.parked.wait(timeout), "the stream never parked"
        return stream

    def release(self, sandbox_id: str, *, force: bool) -> bool:
        self.released.append((sandbox_id, force))
        if self.release_error is not None:
            raise self.release_error
        return True

    def find(self, task_id: str, profile: str) -> list[str]:
        return list(self.found)


@dataclass
class RecordingSink:
    """A RunSink that records every call; ``done`` is set by ``finished``."""

    accept_start: bool = True
    alive: bool = True
    fail_output: bool = False
    fail_finished: bool = False
    calls: list[tuple[str, object]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, run_id: str, sandbox_id: str) -> bool:
        with self.lock:
            self.calls.append(("started", sandbox_id))
        return self.accept_start

    def output(self, run_id: str, data: bytes) -> None:
        with self.lock:
            self.calls.append(("output", data))
        if self.fail_output:
            raise RuntimeError("database is locked")

    def heartbeat(self, run_id: str) -> bool:
        with self.lock:
            self.calls.append(("heartbeat", run_id))
        return self.alive

    def finished(self, run_id: str, outcome: Outcome) -> None:
        with self.lock:
            self.calls.append(("finished", outcome.kind))
            self.outcomes.append(outcome)
        self.done.set()
        if self.fail_finished:
            raise RuntimeError("database is gone")

    @property
    def output_bytes(self) -> bytes:
        return b"".join(v for k, v in self.calls if k == "output")  # type: ignore[misc]

    def outcome(self, timeout: float = 10.0) -> Outcome:
        assert self.done.wait(timeout), "the run never finished"
        assert len(self.outcomes) == 1, self.outcomes
        return self.outcomes[0]
