"""The executor on a fake sandbox service: one precise outcome per run, never a raise."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from longshore.kanban.v1 import run_pb2
from longshore.sandbox.v1 import sandbox_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.kanban.executor import Executor, Outcome, OutcomeKind, RunJob, merge_spec
from services.kanban.planner import FailureClass
from services.kanban.sandbox_client import (
    FailureKind,
    ImageMissing,
    InvalidSpec,
    SandboxBusy,
    SandboxCallFailed,
    SandboxDeadline,
    SandboxNotRunning,
    SandboxServiceError,
    SandboxUnavailable,
    SpecRefused,
)
from tests.unit.kanban_executor.fakes import FakeSandboxes, RecordingSink, exit_with, out


def job(run_id: str = "run-1", **kw: object) -> RunJob:
    fields: dict[str, object] = {
        "run_id": run_id,
        "task_id": "task-1",
        "profile": "builder",
        "spec": sandbox_pb2.SandboxSpec(image="busybox:test"),
        "command": ("echo", "hi"),
        "timeout_seconds": 30.0,
    }
    fields.update(kw)
    return RunJob(**fields)  # type: ignore[arg-type]


@pytest.fixture
def sandboxes() -> FakeSandboxes:
    return FakeSandboxes()


@pytest.fixture
def executor(sandboxes: FakeSandboxes) -> Iterator[Executor]:
    ex = Executor(sandboxes, max_workers=4, max_output_bytes=64, heartbeats=False)
    yield ex
    ex.shutdown(wait=False)


def test_success_streams_output_then_finishes_once(
    executor: Executor, sandboxes: FakeSandboxes
) -> None:
    sink = RecordingSink()
    sandboxes.script = [out(b"hel"), out(b"lo\n"), exit_with(0, output_bytes=6)]
    executor.start(job(env={"K": "v"}), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert (outcome.exit_code, outcome.output_bytes, outcome.sandbox_id) == (0, 6, "sb-task-1")
    assert not outcome.counts_as_failure
    assert outcome.run_status == run_pb2.RUN_STATUS_SUCCEEDED
    assert [k for k, _ in sink.calls] == ["started", "output", "output", "finished"]
    assert sink.output_bytes == b"hello\n"
    assert sandboxes.execs == [("sb-task-1", ("echo", "hi"), {"K": "v"}, 30.0, 64)]
    assert sandboxes.acquired[0][:2] == ("task-1", "builder")
    assert sandboxes.acquired[0][3] is True
    assert executor.held_runs() == []


def test_non_zero_exit_is_a_counted_failure(executor: Executor, sandboxes: FakeSandboxes) -> None:
    sink = RecordingSink()
    sandboxes.script = [exit_with(3)]
    executor.start(job(), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.exit_code == 3
    assert outcome.error == "exit code 3"
    assert outcome.counts_as_failure


def test_timeout_reported_by_the_service(executor: Executor, sandboxes: FakeSandboxes) -> None:
    sink = RecordingSink()
    sandboxes.script = [out(b"slow"), exit_with(-1, timed_out=True)]
    executor.start(job(timeout_seconds=1.5), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.TIMED_OUT
    assert outcome.timed_out
    assert outcome.counts_as_failure
    assert "timed out after 1.5s" in outcome.error


@pytest.mark.parametrize(
    ("error", "kind", "failure_class"),
    [
        (
            ImageMissing("acquire: image busybox:nope not found"),
            FailureKind.IMAGE_MISSING,
            FailureClass.WORK,
        ),
        (InvalidSpec("acquire: spec.cpus: too many"), FailureKind.INVALID_SPEC, FailureClass.WORK),
        (
            SpecRefused("acquire: spec.cap_add[0]: not allowed"),
            FailureKind.PERMISSION_DENIED,
            FailureClass.WORK,
        ),
        (
            SandboxUnavailable("acquire: connection refused"),
            FailureKind.UNAVAILABLE,
            FailureClass.PLATFORM,
        ),
        (
            SandboxDeadline("acquire: too slow"),
            FailureKind.DEADLINE_EXCEEDED,
            FailureClass.PLATFORM,
        ),
        (
            SandboxServiceError("acquire: internal error in AcquireSandbox"),
            FailureKind.SERVICE_ERROR,
            FailureClass.PLATFORM,
        ),
        (
            SandboxBusy("acquire: 2048 calls in flight"),
            FailureKind.BUSY,
            FailureClass.PLATFORM,
        ),
        (SandboxCallFailed("acquire: boom"), FailureKind.OTHER, FailureClass.WORK),
    ],
)
def test_acquire_failure_is_a_precise_spawn_failure_of_one_class(
    executor: Executor,
    sandboxes: FakeSandboxes,
    error: Exception,
    kind: FailureKind,
    failure_class: FailureClass,
) -> None:
    sink = RecordingSink()
    sandboxes.acquire_error = error
    executor.start(job(), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.SPAWN_FAILED
    assert outcome.failure_kind is kind
    assert outcome.failure_class is failure_class
    assert outcome.counts_as_failure is (failure_class is FailureClass.WORK)
    assert outcome.backend_down is (failure_class is FailureClass.PLATFORM)
    assert outcome.error == str(error)
    assert [k for k, _ in sink.calls] == ["finished"]
    assert sandboxes.execs == []


def test_exec_refused_before_output_is_a_spawn_failure(
    executor: Executor, sandboxes: FakeSandboxes
) -> None:
    sink = RecordingSink()
    sandboxes.script = [SandboxNotRunning("exec: sandbox is not running")]
    executor.start(job(), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.SPAWN_FAILED
    assert outcome.failure_kind is FailureKind.NOT_RUNNING


def test_exec_broken_mid_run_is_a_failure(executor: Executor, sandboxes: FakeSandboxes) -> None:
    sink = RecordingSink()
    sandboxes.script = [out(b"part"), SandboxUnavailable("exec: socket closed")]
    executor.start(job(), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.failure_kind is FailureKind.UNAVAILABLE
    assert outcome.exit_code is None
    # The manager went away under the command: the platform's failure.
    assert outcome.failure_class is FailureClass.PLATFORM and outcome.backend_down


def test_an_exit_before_a_broken_stream_is_the_outcome(
    executor: Executor, sandboxes: FakeSandboxes
) -> None:
    sink = RecordingSink()
    sandboxes.script = [
        out(b"x"),
        exit_with(-1, timed_out=True),
        SandboxUnavailable("exec: socket closed"),
    ]
    executor.start(job(timeout_seconds=1.5), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.TIMED_OUT
    assert outcome.exit_code == -1
    assert outcome.failure_class is FailureClass.WORK


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (Outcome(OutcomeKind.SUCCEEDED, exit_code=0), None),
        (Outcome(OutcomeKind.ABANDONED), None),
        (Outcome(OutcomeKind.FAILED, exit_code=3), FailureClass.WORK),
        (Outcome(OutcomeKind.TIMED_OUT, exit_code=-1, timed_out=True), FailureClass.WORK),
        (
            Outcome(OutcomeKind.TIMED_OUT, failure_kind=FailureKind.DEADLINE_EXCEEDED),
            FailureClass.WORK,
        ),
        (Outcome(OutcomeKind.CANCELLED, error="cancelled"), FailureClass.PLATFORM),
        (
            Outcome(OutcomeKind.SPAWN_FAILED, failure_kind=FailureKind.NOT_RUNNING),
            FailureClass.PLATFORM,
        ),
        (Outcome(OutcomeKind.FAILED, failure_kind=FailureKind.OTHER), FailureClass.WORK),
    ],
)
def test_failure_class_per_outcome(outcome: Outcome, expected: FailureClass | None) -> None:
    assert outcome.failure_class is expected


def test_stream_without_exit_is_a_failure(executor: Executor, sandboxes: FakeSandboxes) -> None:
    sink = RecordingSink()
    sandboxes.script = [out(b"x")]
    executor.start(job(), sink)
    assert sink.outcome().error == "exec stream ended without an exit status"


def test_output_is_bounded_and_truncation_flagged(
    executor: Executor, sandboxes: FakeSandboxes
) -> None:
    sink = RecordingSink()
    sandboxes.script = [out(b"a" * 40), out(b"b" * 40), out(b"c" * 40), exit_with(0)]
    executor.start(job(), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.truncated
    assert sink.output_bytes == b"a" * 40 + b"b" * 24


def test_cancel_kills_the_exec_stream(executor: Executor, sandboxes: FakeSandboxes) -> None:
    sink = RecordingSink()
    sandboxes.block_after = 1
    sandboxes.script = [out(b"started\n"), exit_with(0)]
    executor.start(job(), sink)
    sandboxes_stream = sandboxes.parked_stream()
    assert executor.cancel("run-1", "task archived")
    outcome = sink.outcome()
    assert sandboxes_stream.cancelled.is_set()
    assert outcome.kind is OutcomeKind.CANCELLED
    assert outcome.error == "task archived"
    assert not outcome.counts_as_failure
    assert not executor.cancel("run-1")


def test_refused_heartbeat_cancels_the_run(executor: Executor, sandboxes: FakeSandboxes) -> None:
    sink = RecordingSink()
    sandboxes.block_after = 0
    sandboxes.script = [exit_with(0)]
    executor.start(job(), sink)
    stream = sandboxes.parked_stream()
    executor.heartbeat_once()
    assert not stream.cancelled.is_set()
    sink.alive = False
    executor.heartbeat_once()
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.CANCELLED
    assert "heartbeat refused" in outcome.error
    assert sink.calls.count(("heartbeat", "run-1")) == 2


def test_background_heartbeats_run_on_their_interval(sandboxes: FakeSandboxes) -> None:
    ex = Executor(sandboxes, heartbeat_interval=0.02)
    try:
        sink = RecordingSink(alive=False)
        sandboxes.block_after = 0
        sandboxes.script = [exit_with(0)]
        ex.start(job(), sink)
        assert sink.outcome().kind is OutcomeKind.CANCELLED
    finally:
        ex.shutdown(wait=True)


def test_stale_start_runs_nothing(executor: Executor, sandboxes: FakeSandboxes) -> None:
    sink = RecordingSink(accept_start=False)
    executor.start(job(), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.CANCELLED
    assert sandboxes.execs == []


def test_a_broken_sink_never_raises_and_finished_still_comes(
    executor: Executor, sandboxes: FakeSandboxes
) -> None:
    sink = RecordingSink(fail_output=True, fail_finished=True)
    executor.start(job(), sink)
    assert sink.outcome().kind is OutcomeKind.SUCCEEDED


def test_an_unexpected_client_error_still_finishes_the_run(
    executor: Executor, sandboxes: FakeSandboxes
) -> None:
    sink = RecordingSink()
    sandboxes.acquire_error = RuntimeError("bug")
    executor.start(job(), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error == "executor error: bug"


def test_shutdown_without_wait_abandons_held_runs_and_refuses_new_ones(
    sandboxes: FakeSandboxes,
) -> None:
    ex = Executor(sandboxes, heartbeats=False)
    sink = RecordingSink()
    sandboxes.block_after = 0
    sandboxes.script = [exit_with(0)]
    ex.start(job(), sink)
    sandboxes.parked_stream()
    ex.shutdown(wait=False)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.ABANDONED
    assert outcome.run_status == run_pb2.RUN_STATUS_LOST
    late = RecordingSink()
    ex.start(job("run-2"), late)
    assert late.outcome(timeout=0).kind is OutcomeKind.ABANDONED


def test_shutdown_with_timeout_waits_then_abandons(sandboxes: FakeSandboxes) -> None:
    ex = Executor(sandboxes, heartbeats=False)
    sink = RecordingSink()
    sandboxes.block_after = 0
    sandboxes.script = [exit_with(0)]
    ex.start(job(), sink)
    sandboxes.parked_stream()
    ex.shutdown(wait=True, timeout=0.05)
    assert sink.outcome(timeout=0).kind is OutcomeKind.ABANDONED


def test_duplicate_start_is_ignored(executor: Executor, sandboxes: FakeSandboxes) -> None:
    sink = RecordingSink()
    sandboxes.block_after = 0
    sandboxes.script = [exit_with(0)]
    executor.start(job(), sink)
    stream = sandboxes.parked_stream()
    other = RecordingSink()
    executor.start(job(), other)
    stream.resume.set()
    assert sink.outcome().kind is OutcomeKind.SUCCEEDED
    assert other.calls == []


def test_non_persistent_sandbox_is_released_after_the_run(sandboxes: FakeSandboxes) -> None:
    ex = Executor(sandboxes, heartbeats=False)
    sink = RecordingSink()
    ex.start(job(persist=False), sink)
    sink.outcome()
    ex.shutdown(wait=True)
    assert sandboxes.acquired[0][3] is False
    assert sandboxes.released == [("sb-task-1", False)]


def test_release_finds_the_sandboxes_and_swallows_errors(
    executor: Executor, sandboxes: FakeSandboxes
) -> None:
    assert executor.release("task-1", "builder").result(timeout=5) is True
    assert sandboxes.released == [("sb-found", True)]
    assert executor.release("task-1", "builder", "sb-x", force=False).result(timeout=5)
    sandboxes.release_error = SandboxUnavailable("release: down")
    assert executor.release("task-1", "builder", "sb-y").result(timeout=5) is False


def test_run_span_joins_the_task_trace(sandboxes: FakeSandboxes) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ex = Executor(sandboxes, heartbeats=False, tracer_provider=provider)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    sink = RecordingSink()
    ex.start(job(trace_parent=f"00-{trace_id}-{parent}-01"), sink)
    sink.outcome()
    ex.shutdown(wait=True)
    (span,) = exporter.get_finished_spans()
    assert span.name == "kanban.run"
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == parent
    assert span.attributes is not None
    assert span.attributes["longshore.run.outcome"] == "succeeded"


def test_merge_spec_layers_the_task_over_the_profile() -> None:
    profile = sandbox_pb2.SandboxSpec(image="base:1", env={"A": "1", "B": "2"}, cpus=0.5)
    spec = merge_spec(profile, image="task:2", env={"B": "3"})
    assert (spec.image, dict(spec.env), spec.cpus) == ("task:2", {"A": "1", "B": "3"}, 0.5)
    assert profile.image == "base:1"
    assert merge_spec(profile).image == "base:1"


def test_an_error_after_the_whole_timeout_is_a_timeout_not_a_spawn_failure(
    executor: Executor, sandboxes: FakeSandboxes
) -> None:
    # The manager answered INTERNAL once the command had run its whole timeout
    # (it could not start its killer at a pids limit): the command timed out.
    sandboxes.script = [SandboxCallFailed("exec: internal error: ValueError")]
    sink = RecordingSink()
    executor.start(job(timeout_seconds=0.0), sink)
    outcome = sink.outcome()
    assert outcome.kind is OutcomeKind.TIMED_OUT and outcome.timed_out
    assert outcome.failure_class is FailureClass.WORK
    assert "its exit was lost" in outcome.error
    # The same error before the timeout is what it says: the exec never started.
    sink = RecordingSink()
    executor.start(job("run-2", timeout_seconds=30.0), sink)
    assert sink.outcome().kind is OutcomeKind.SPAWN_FAILED
