"""The executor against the real sandbox service and Docker engine.

Each test runs a task's command through ``Executor`` → ``SandboxClient`` →
the real ``SandboxService`` (served in process with its internal token) → a
real container, and checks the one outcome the run sink hears.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import replace

import docker
import pytest
from longshore.sandbox.v1 import sandbox_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.kanban.executor import Executor, Outcome, OutcomeKind, RunJob
from services.kanban.planner import FailureClass
from services.kanban.sandbox_client import FailureKind, SandboxClient
from services.runtime.testing import RunningServer
from services.sandbox import labels
from tests.support.net import free_port
from tests.unit.kanban_executor.fakes import RecordingSink

_jobs = iter(range(1_000_000))


def make_job(
    image: str,
    command: Sequence[str],
    *,
    task_id: str = "",
    timeout: float = 30.0,
    **kw: object,
) -> RunJob:
    n = next(_jobs)
    return RunJob(
        run_id=f"run-{n}",
        task_id=task_id or f"task-{n}",
        profile="builder",
        spec=sandbox_pb2.SandboxSpec(image=image),
        command=tuple(command),
        timeout_seconds=timeout,
        **kw,  # type: ignore[arg-type]
    )


def run(executor: Executor, job: RunJob, sink: RecordingSink | None = None) -> Outcome:
    sink = sink or RecordingSink()
    executor.start(job, sink)
    return sink.outcome(timeout=60)


def in_sandbox(client: SandboxClient, sandbox_id: str, script: str) -> tuple[int, bytes]:
    """Runs ``sh -c script`` in a sandbox; returns (exit code, output)."""
    output = b""
    code = -99
    for event in client.exec(
        sandbox_id, ["sh", "-c", script], env={}, timeout_seconds=20, max_output_bytes=65536
    ):
        if hasattr(event, "data"):
            output += event.data
        else:
            code = event.exit_code
    return code, output


class _FirstOutput(RecordingSink):
    """A recording sink that also says when the first output arrived."""

    def __init__(self, *, refuse_after_output: bool = False) -> None:
        super().__init__()
        self.seen = threading.Event()
        self.refuse_after_output = refuse_after_output

    def heartbeat(self, run_id: str) -> bool:
        super().heartbeat(run_id)
        return not (self.refuse_after_output and self.seen.is_set())

    def output(self, run_id: str, data: bytes) -> None:
        super().output(run_id, data)
        self.seen.set()


def _started(sink: RecordingSink) -> str:
    return next(str(value) for kind, value in sink.calls if kind == "started")


# The poll runs inside the container, bounded, so the test itself never sleeps.
GONE = 'for i in $(seq 50); do ps | grep -q "[s]leep 1000" || exit 0; sleep 0.1; done; exit 1'


def test_echo_hi_is_captured_and_succeeds(
    executor: Executor, sandbox_image: str, docker_client: docker.DockerClient
) -> None:
    sink = RecordingSink()
    outcome = run(executor, make_job(sandbox_image, ["echo", "hi"], task_id="echo-1"), sink)
    assert outcome.kind is OutcomeKind.SUCCEEDED, outcome
    assert outcome.exit_code == 0
    assert sink.output_bytes == b"hi\n"
    progress = [call for call in sink.calls if call[0] != "heartbeat"]
    assert progress[0] == ("started", outcome.sandbox_id)
    assert progress[-1] == ("finished", OutcomeKind.SUCCEEDED)
    container = docker_client.containers.get(outcome.sandbox_id)
    assert container.labels[labels.TASK_ID] == "echo-1"
    assert container.labels[labels.PROFILE] == "builder"


def test_task_env_reaches_the_command_and_a_rerun_reuses_the_sandbox(
    executor: Executor, sandbox_image: str
) -> None:
    spec = sandbox_pb2.SandboxSpec(image=sandbox_image, env={"GREETING": "hello"})
    first_sink, second_sink = RecordingSink(), RecordingSink()
    job = make_job(sandbox_image, ["sh", "-c", 'echo "$GREETING $EXTRA"'], task_id="env-1")
    first = run(executor, replace(job, spec=spec, env={"EXTRA": "x"}), first_sink)
    second = run(executor, replace(job, run_id=f"{job.run_id}-again", spec=spec), second_sink)
    assert first_sink.output_bytes == b"hello x\n"
    assert second_sink.output_bytes == b"hello \n"
    assert first.sandbox_id == second.sandbox_id


def test_non_zero_exit_is_a_failure_with_its_output(executor: Executor, sandbox_image: str) -> None:
    sink = RecordingSink()
    outcome = run(executor, make_job(sandbox_image, ["sh", "-c", "echo oops >&2; exit 3"]), sink)
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.exit_code == 3
    assert outcome.counts_as_failure
    assert sink.output_bytes == b"oops\n"


def test_timeout_kills_the_process_tree(
    executor: Executor, client: SandboxClient, sandbox_image: str
) -> None:
    job = make_job(sandbox_image, ["sh", "-c", "sleep 1000 & sleep 1000"], timeout=1.0)
    outcome = run(executor, job)
    assert outcome.kind is OutcomeKind.TIMED_OUT, outcome
    assert outcome.timed_out
    assert outcome.counts_as_failure
    assert in_sandbox(client, outcome.sandbox_id, GONE)[0] == 0


def test_missing_image_is_a_spawn_failure_of_kind_image_missing(executor: Executor) -> None:
    job = make_job("longshore/no-such-image:nope", ["true"])
    outcome = run(executor, job)
    assert outcome.kind is OutcomeKind.SPAWN_FAILED
    assert outcome.failure_kind is FailureKind.IMAGE_MISSING
    assert "no-such-image" in outcome.error


def test_sandbox_service_down_is_a_spawn_failure_of_kind_unavailable(
    sandbox_image: str,
) -> None:
    client = SandboxClient(f"127.0.0.1:{free_port()}", acquire_timeout=5)
    executor = Executor(client, heartbeats=False)
    try:
        outcome = run(executor, make_job(sandbox_image, ["true"]))
    finally:
        executor.shutdown(wait=True)
        client.close()
    assert outcome.kind is OutcomeKind.SPAWN_FAILED
    assert outcome.failure_kind is FailureKind.UNAVAILABLE


def test_cancel_mid_run_stops_the_command_in_the_sandbox(
    executor: Executor, client: SandboxClient, sandbox_image: str
) -> None:
    sink = _FirstOutput()
    job = make_job(
        sandbox_image, ["sh", "-c", "sleep 1000 & while true; do echo tick; sleep 0.2; done"]
    )
    executor.start(job, sink)
    assert sink.seen.wait(30), "no output before cancel"
    assert in_sandbox(client, _started(sink), 'ps | grep -q "[s]leep 1000"')[0] == 0
    assert executor.cancel(job.run_id, "task archived")
    outcome = sink.outcome(timeout=30)
    assert outcome.kind is OutcomeKind.CANCELLED
    assert outcome.error == "task archived"
    assert in_sandbox(client, outcome.sandbox_id, GONE)[0] == 0


def test_refused_heartbeat_cancels_the_run(executor: Executor, sandbox_image: str) -> None:
    sink = _FirstOutput(refuse_after_output=True)
    job = make_job(sandbox_image, ["sh", "-c", "echo up; sleep 1000"], timeout=5)
    outcome = run(executor, job, sink)
    assert sink.output_bytes == b"up\n"
    assert outcome.kind is OutcomeKind.CANCELLED
    assert "heartbeat refused" in outcome.error


def test_cancel_of_a_silent_command_kills_it_in_the_sandbox(
    executor: Executor, client: SandboxClient, sandbox_image: str
) -> None:
    sink = _FirstOutput()
    job = make_job(sandbox_image, ["sh", "-c", "echo up; sleep 1000"], timeout=8)
    executor.start(job, sink)
    assert sink.seen.wait(30), "no output before cancel"
    assert executor.cancel(job.run_id)
    outcome = sink.outcome(timeout=30)
    assert outcome.kind is OutcomeKind.CANCELLED
    assert in_sandbox(client, outcome.sandbox_id, GONE)[0] == 0


def test_release_force_removes_the_sandbox(
    executor: Executor, sandbox_image: str, docker_client: docker.DockerClient
) -> None:
    outcome = run(executor, make_job(sandbox_image, ["true"], task_id="rel-1"))
    assert executor.release("rel-1", "builder", force=True).result(timeout=30)
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.api.wait(outcome.sandbox_id, timeout=30, condition="removed")
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(outcome.sandbox_id)


def test_run_and_sandbox_calls_join_the_task_trace(
    executor: Executor, sandbox_image: str, spans: InMemorySpanExporter
) -> None:
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    job = make_job(
        sandbox_image, ["echo", "traced"], trace_parent=f"00-{trace_id}-00f067aa0ba902b7-01"
    )
    assert run(executor, job).kind is OutcomeKind.SUCCEEDED
    finished = {s.name: s for s in spans.get_finished_spans()}
    run_span = finished["kanban.run"]
    assert format(run_span.context.trace_id, "032x") == trace_id
    for name in (
        "/longshore.sandbox.v1.SandboxService/AcquireSandbox",
        "/longshore.sandbox.v1.SandboxService/Exec",
    ):
        child = finished[name]
        assert format(child.context.trace_id, "032x") == trace_id
        assert child.parent is not None
        assert child.parent.span_id == run_span.context.span_id


def test_a_client_without_the_internal_token_is_refused(
    sandbox_service: RunningServer, sandbox_image: str
) -> None:
    client = SandboxClient(sandbox_service.address, acquire_timeout=10)
    executor = Executor(client, heartbeats=False)
    try:
        outcome = run(executor, make_job(sandbox_image, ["true"]))
    finally:
        executor.shutdown(wait=True)
        client.close()
    assert outcome.kind is OutcomeKind.SPAWN_FAILED
    # Our own credential refused: the platform's fault, never the task's.
    assert outcome.failure_kind is FailureKind.SERVICE_ERROR
    assert outcome.failure_class is FailureClass.PLATFORM
