"""Failure classes, retry backoff and the sandbox backend's breaker, through the real server.

Work failures count toward the profile's retry limit; platform failures never
do; both come back after a backoff that every reader (tick, dry run,
ExplainTask, ClaimTask) honours. A sandbox backend that is down pauses
sandbox profiles, visibly, until a probe succeeds.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.kanban.v1 import dispatch_pb2, profile_pb2, run_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import task_pb2 as S
from longshore.kanban.v1 import worker_service_pb2 as wpb

from services.kanban.backends import BackendBreaker
from services.kanban.executor import FailureKind, Outcome, OutcomeKind
from tests.integration.kanban.conftest import Kanban
from tests.integration.kanban.test_kanban_dispatch import comparable

UNAVAILABLE = Outcome(
    OutcomeKind.SPAWN_FAILED,
    failure_kind=FailureKind.UNAVAILABLE,
    error="unavailable: acquire: docker engine unreachable: connection refused",
)


def tick(kanban: Kanban, **kw: Any) -> dispatch_pb2.DispatchResult:
    return kanban.stub.Dispatch(pb.DispatchRequest(**kw), timeout=10).result


def runs(kanban: Kanban, task_id: str) -> list[run_pb2.TaskRun]:
    return list(kanban.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=task_id), timeout=5).runs)


def retry_at(task: S.Task) -> dt.datetime:
    assert task.HasField("next_attempt_time"), task
    return task.next_attempt_time.ToDatetime(tzinfo=dt.UTC)


class Answers:
    """What the breaker's probe reports next (None = healthy)."""

    def __init__(self) -> None:
        self.problem: str | None = None

    def __call__(self) -> str | None:
        return self.problem


def test_platform_failures_never_block_and_a_down_backend_pauses_dispatch(
    kanban_factory: Any,
) -> None:
    answers = Answers()
    clock_of: list[Kanban] = []
    breaker = BackendBreaker(
        answers,
        probe_interval=4,
        max_probe_interval=30,
        clock=lambda: clock_of[0].clock(),  # noqa: PLW0108 (the kanban is made below)
    )
    kanban = kanban_factory(backend=breaker, failure_limit="2")
    clock_of.append(kanban)
    kanban.profile("sb", "sandbox")
    kanban.profile("ext", "external")
    task = kanban.task("t", assignee="sb")
    sink = kanban.app.dispatcher.sink
    for attempt in (1, 2, 3):
        run_id = tick(kanban).spawned[0].run_id
        sink.finished(run_id, UNAVAILABLE)
        after = kanban.get(task.task_id)
        # Never counted, never blocked, however often the platform fails.
        assert (after.status, after.failure_count) == (S.TASK_STATUS_READY, 0)
        assert after.readiness.reason == S.READINESS_REASON_BACKING_OFF
        assert after.readiness.message.endswith(f"(attempt {attempt + 1})")
        # Backoff 5 s, 10 s, 20 s: platform failures in a row double it too.
        wait = (retry_at(after) - kanban.clock()).total_seconds()
        assert 5 * 2 ** (attempt - 1) - 1 < wait <= 5 * 2 ** (attempt - 1)
        assert [t.task_id for t in tick(kanban).backing_off] == [task.task_id]
        # The sink opened the breaker; the probe finds the backend back.
        assert not breaker.available
        kanban.clock.advance(wait + 0.1)
        paused = tick(kanban, dry_run=True)
        assert [t.task_id for t in paused.backend_paused] == [task.task_id]
        assert paused.backend_unavailable.startswith("sandbox backend unavailable since ")
        assert "(unavailable: acquire: docker engine unreachable" in paused.backend_unavailable
        assert breaker.probe_once()
    lost = runs(kanban, task.task_id)
    assert [(r.failure_class, r.counted_failure) for r in lost] == [
        (run_pb2.FAILURE_CLASS_PLATFORM, False)
    ] * 3
    failed = [e for e in kanban.events(task.task_id) if e.kind == "spawn_failed"]
    assert [(e.payload["failure_class"], e.payload["counted"]) for e in failed] == [
        ("platform", False)
    ] * 3
    assert all("next_attempt_time" in e.payload for e in failed)
    assert "gave_up" not in [e.kind for e in kanban.events(task.task_id)]

    # While the backend is down: sandbox tasks are paused, external ones are not.
    answers.problem = "docker engine unreachable: connection refused"
    assert not breaker.probe_once()
    ext = kanban.task("e", assignee="ext")
    before = tick(kanban, dry_run=True)
    real = tick(kanban)
    assert comparable(real) == comparable(before)
    assert [t.task_id for t in real.backend_paused] == [task.task_id]
    assert [t.task_id for t in real.awaiting_worker] == [ext.task_id]
    assert list(real.spawned) == []
    assert real.backend_unavailable.endswith("next probe in 4s")
    why = kanban.stub.ExplainTask(pb.ExplainTaskRequest(task_id=task.task_id), timeout=5)
    assert why.readiness.reason == S.READINESS_REASON_BACKEND_UNAVAILABLE
    assert why.readiness.message == real.backend_unavailable
    assert "(docker engine unreachable: connection refused)" in why.readiness.message
    listed = kanban.stub.ListTasks(pb.ListTasksRequest(include_readiness=True), timeout=5).tasks
    assert {t.task_id: t.readiness.reason for t in listed}[task.task_id] == (
        S.READINESS_REASON_BACKEND_UNAVAILABLE
    )
    # It comes back: the next tick spawns by itself.
    answers.problem = None
    assert breaker.probe_once()
    assert [t.task_id for t in tick(kanban).spawned] == [task.task_id]


def test_work_failures_follow_the_profile_retry_policy(kanban: Kanban) -> None:
    kanban.stub.CreateProfile(
        pb.CreateProfileRequest(
            profile=profile_pb2.Profile(
                name="sb",
                executor=profile_pb2.EXECUTOR_SANDBOX,
                retry_policy=profile_pb2.RetryPolicy(
                    max_attempts=3,
                    initial_backoff=duration_pb2.Duration(seconds=2),
                    max_backoff=duration_pb2.Duration(seconds=3),
                ),
            )
        ),
        timeout=10,
    )
    task = kanban.task("flaky", assignee="sb")
    sink = kanban.app.dispatcher.sink
    waits = []
    for _ in range(2):
        run_id = tick(kanban).spawned[0].run_id
        sink.finished(run_id, Outcome(OutcomeKind.FAILED, exit_code=3))
        after = kanban.get(task.task_id)
        assert after.status == S.TASK_STATUS_READY
        waits.append(round((retry_at(after) - kanban.clock()).total_seconds()))
        assert list(tick(kanban).spawned) == []  # not before the backoff ends
        kanban.clock.advance(waits[-1] + 0.1)
    assert waits == [2, 3]  # 2 s, then 4 s capped at 3 s
    run_id = tick(kanban).spawned[0].run_id
    sink.finished(run_id, Outcome(OutcomeKind.FAILED, exit_code=3))
    blocked = kanban.get(task.task_id)
    assert (blocked.status, blocked.failure_count) == (S.TASK_STATUS_BLOCKED, 3)
    assert blocked.blocked_reason == "3 failures: exit code 3"
    assert not blocked.HasField("next_attempt_time")
    assert [(r.failure_class, r.counted_failure) for r in runs(kanban, task.task_id)] == [
        (run_pb2.FAILURE_CLASS_WORK, True)
    ] * 3


def test_a_worker_platform_failure_never_counts_and_backs_off(kanban: Kanban) -> None:
    kanban.profile("ext")
    task = kanban.task("t", assignee="ext")
    for _ in range(3):
        claim = kanban.worker.ClaimTask(
            wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5
        )
        assert claim.task.task_id == task.task_id
        failed = kanban.worker.FailTask(
            wpb.FailTaskRequest(run_id=claim.run_id, error="sandbox manager down", platform=True),
            timeout=5,
        )
        assert (failed.blocked, failed.task.failure_count) == (False, 0)
        early = kanban.worker.ClaimTask(
            wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5
        )
        assert not early.run_id  # backing off
        kanban.clock.advance(60)
    assert [r.failure_class for r in runs(kanban, task.task_id)] == [
        run_pb2.FAILURE_CLASS_PLATFORM
    ] * 3


def test_a_cancelled_run_is_the_platforms(kanban: Kanban) -> None:
    kanban.profile("sb", "sandbox")
    task = kanban.task("t", assignee="sb")
    run_id = tick(kanban).spawned[0].run_id
    kanban.stub.MoveTask(
        pb.MoveTaskRequest(task_id=task.task_id, status=S.TASK_STATUS_BLOCKED), timeout=5
    )
    (run,) = runs(kanban, task.task_id)
    assert run.run_id == run_id and run.status == run_pb2.RUN_STATUS_CANCELLED
    assert (run.failure_class, run.counted_failure) == (run_pb2.FAILURE_CLASS_PLATFORM, False)
    with pytest.raises(grpc.RpcError):
        kanban.worker.Heartbeat(wpb.HeartbeatRequest(run_id=run_id), timeout=5)
