"""Dispatcher ticks through the real server: every bucket, defaults, caps, the
breaker, cancellation, and dry runs that write nothing and predict exactly."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import duration_pb2
from longshore.kanban.v1 import dispatch_pb2, run_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import task_pb2 as S
from longshore.kanban.v1 import worker_service_pb2 as wpb
from sqlalchemy import func, select, text

from services.kanban import models
from services.kanban.executor import FailureKind, Outcome, OutcomeKind
from tests.integration.kanban.conftest import Kanban

RETRY_WAIT = 400.0  # seconds past any default retry backoff (at most 300 s)


def tick(kanban: Kanban, **kw: Any) -> dispatch_pb2.DispatchResult:
    return kanban.stub.Dispatch(pb.DispatchRequest(**kw), timeout=10).result


def comparable(result: dispatch_pb2.DispatchResult) -> dispatch_pb2.DispatchResult:
    """The result without what only a real tick can know (run ids, time, dry flag)."""
    copy = dispatch_pb2.DispatchResult()
    copy.CopyFrom(result)
    copy.dry_run = False
    copy.ClearField("tick_time")
    for spawned in copy.spawned:
        spawned.run_id = ""
        spawned.sandbox_id = ""
    return copy


def db_state(kanban: Kanban) -> dict[str, Any]:
    with kanban.app.db.read() as s:
        state: dict[str, Any] = {}
        for table in ("tasks", "task_runs", "task_events", "task_links", "run_output"):
            rows = s.execute(text(f"SELECT * FROM {table}")).all()
            state[table] = sorted(map(repr, rows))
        return state


def test_tick_fills_every_bucket_and_caps_include_earlier_runs(kanban: Kanban) -> None:
    kanban.profile("sb", "sandbox", cap=1, keep_sandbox=False)
    kanban.profile("ext", "external")
    kanban.profile("human", "none")
    t1 = kanban.task("t1", assignee="sb", priority=2, command=["true"], env={"SECRET": "v"})
    t2 = kanban.task("t2", assignee="sb", priority=1)
    t3 = kanban.task("t3")
    t4 = kanban.task("t4", assignee="human")
    t5 = kanban.task("t5", assignee="ghost")
    t6 = kanban.task("t6", assignee="ext")
    result = tick(kanban)
    assert [(s.task_id, s.assignee) for s in result.spawned] == [(t1.task_id, "sb")]
    assert result.spawned[0].run_id
    assert [
        (c.task_id, c.assignee, c.running, c.cap) for c in result.skipped_per_profile_capped
    ] == [(t2.task_id, "sb", 1, 1)]
    assert list(result.skipped_unassigned) == [t3.task_id]
    assert sorted(r.task_id for r in result.skipped_nonspawnable) == sorted(
        [t4.task_id, t5.task_id]
    )
    assert [r.task_id for r in result.awaiting_worker] == [t6.task_id]
    job = kanban.executor.jobs[0]
    assert (job.task_id, job.command, dict(job.env)) == (t1.task_id, ("true",), {"SECRET": "v"})
    assert kanban.get(t1.task_id).status == S.TASK_STATUS_RUNNING
    # Every ready task that is not running says why.
    reasons = {
        t.task_id: t.readiness
        for t in kanban.stub.ListTasks(pb.ListTasksRequest(include_readiness=True), timeout=5).tasks
    }
    assert reasons[t2.task_id].reason == S.READINESS_REASON_AT_PROFILE_CAP
    assert reasons[t2.task_id].message == "sb at per-profile cap (1 of 1 running)"
    assert reasons[t3.task_id].reason == S.READINESS_REASON_NO_ASSIGNEE
    assert reasons[t4.task_id].reason == S.READINESS_REASON_ASSIGNEE_NOT_SPAWNABLE
    assert reasons[t5.task_id].reason == S.READINESS_REASON_ASSIGNEE_UNKNOWN
    assert reasons[t6.task_id].reason == S.READINESS_REASON_AWAITING_WORKER
    assert reasons[t1.task_id].reason == S.READINESS_REASON_RUNNING
    # The running task predates the next tick and still counts.
    again = tick(kanban)
    assert not again.spawned
    assert [c.task_id for c in again.skipped_per_profile_capped] == [t2.task_id]
    # It finishes: the sandbox is released, and the capped task runs on the next tick.
    sink = kanban.app.dispatcher.sink
    assert sink.started(job.run_id, "sbx-1")
    sink.output(job.run_id, b"ok\n")
    sink.finished(job.run_id, Outcome(OutcomeKind.SUCCEEDED, exit_code=0, sandbox_id="sbx-1"))
    done = kanban.get(t1.task_id)
    assert (done.status, done.sandbox_id) == (S.TASK_STATUS_DONE, "sbx-1")
    assert kanban.executor.released == [(t1.task_id, "sb", "sbx-1")]
    out = kanban.stub.GetRunOutput(pb.GetRunOutputRequest(task_id=t1.task_id), timeout=5)
    assert (out.data, out.eof) == (b"ok\n", True)
    assert [s.task_id for s in tick(kanban).spawned] == [t2.task_id]


def test_default_assignee_is_applied_with_its_event(kanban_factory: Any) -> None:
    kanban = kanban_factory(default_assignee="  ext  ")
    kanban.profile("ext", "external")
    task = kanban.task("t")
    result = tick(kanban)
    assert [(r.task_id, r.assignee) for r in result.auto_assigned_default] == [
        (task.task_id, "ext")
    ]
    assert kanban.get(task.task_id).assignee == "ext"
    assigned = [e for e in kanban.events(task.task_id) if e.kind == "assigned"]
    assert [(e.source, e.payload["to"]) for e in assigned] == [("kanban.default_assignee", "ext")]


def test_blank_default_assignee_means_none(kanban_factory: Any) -> None:
    kanban = kanban_factory(default_assignee="   ")
    task = kanban.task("t")
    assert list(tick(kanban).skipped_unassigned) == [task.task_id]


@pytest.mark.parametrize("raw", ["0", "-3", "two", "1.5"])
def test_invalid_caps_mean_no_cap(kanban_factory: Any, raw: str) -> None:
    kanban = kanban_factory(max_in_progress_per_profile=raw, max_in_progress=raw, max_spawn=raw)
    kanban.profile("sb", "sandbox")
    for i in range(4):
        kanban.task(f"t{i}", assignee="sb")
    result = tick(kanban)
    assert len(result.spawned) == 4
    assert not result.stopped_reason


def test_global_cap_and_max_spawn_stop_the_walk(kanban_factory: Any) -> None:
    kanban = kanban_factory(max_in_progress="3", max_in_progress_per_profile="2")
    kanban.profile("a", "sandbox")
    kanban.profile("b", "sandbox")
    ids = [kanban.task(f"t{i}", assignee="ab"[i % 2], priority=10 - i).task_id for i in range(6)]
    first = tick(kanban, max_spawn=1)
    assert [s.task_id for s in first.spawned] == [ids[0]]
    assert first.stopped_reason == "max_spawn reached (1)"
    result = tick(kanban)
    assert [s.task_id for s in result.spawned] == ids[1:3]
    assert result.stopped_reason.startswith("max_in_progress reached")
    assert list(result.not_considered) == ids[3:]
    why = kanban.stub.ExplainTask(pb.ExplainTaskRequest(task_id=ids[4]), timeout=5).readiness
    assert why.reason == S.READINESS_REASON_AT_GLOBAL_CAP


def test_spawn_failures_trip_the_breaker_once_and_go_quiet(kanban: Kanban) -> None:
    kanban.profile("sb", "sandbox", allowed_images=["busybox:nope"])
    task = kanban.task("t", assignee="sb", image="busybox:nope")
    sink = kanban.app.dispatcher.sink
    for expected in (S.TASK_STATUS_READY, S.TASK_STATUS_BLOCKED):
        run_id = tick(kanban).spawned[0].run_id
        sink.finished(
            run_id,
            Outcome(
                OutcomeKind.SPAWN_FAILED,
                failure_kind=FailureKind.IMAGE_MISSING,
                error="image busybox:nope not found",
            ),
        )
        assert kanban.get(task.task_id).status == expected
        kanban.clock.advance(RETRY_WAIT)  # past the retry backoff
    blocked = kanban.get(task.task_id)
    assert blocked.blocked_reason == "2 failures: image busybox:nope not found"
    assert blocked.readiness.reason == S.READINESS_REASON_BREAKER_OPEN
    events = kanban.events(task.task_id)
    assert [e.kind for e in events].count("gave_up") == 1
    for _ in range(3):
        tick(kanban)
    assert len(kanban.events(task.task_id)) == len(events)  # no event per tick forever


def test_timeouts_and_exit_codes_count_too(kanban: Kanban) -> None:
    kanban.profile("sb", "sandbox")
    task = kanban.task("t", assignee="sb", max_runtime=duration_pb2.Duration(seconds=7))
    sink = kanban.app.dispatcher.sink
    run_id = tick(kanban).spawned[0].run_id
    assert kanban.executor.jobs[-1].timeout_seconds == 7
    sink.finished(
        run_id,
        Outcome(OutcomeKind.TIMED_OUT, exit_code=-1, timed_out=True, error="timed out after 7s"),
    )
    kanban.clock.advance(RETRY_WAIT)
    run_id = tick(kanban).spawned[0].run_id
    sink.finished(run_id, Outcome(OutcomeKind.FAILED, exit_code=2))
    after = kanban.get(task.task_id)
    assert (after.status, after.failure_count) == (S.TASK_STATUS_BLOCKED, 2)
    kinds = [e.kind for e in kanban.events(task.task_id)]
    assert "timed_out" in kinds and "failed" in kinds and kinds[-1] == "gave_up"
    runs = kanban.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=task.task_id), timeout=5).runs
    assert [(r.status, r.exit_code) for r in runs] == [(3, 2), (4, -1)]


def test_archiving_a_running_task_cancels_and_releases(kanban: Kanban) -> None:
    kanban.profile("sb", "sandbox")
    task = kanban.task("t", assignee="sb")
    run_id = tick(kanban).spawned[0].run_id
    kanban.stub.MoveTask(
        pb.MoveTaskRequest(task_id=task.task_id, status=S.TASK_STATUS_ARCHIVED), timeout=5
    )
    assert kanban.executor.cancelled == [run_id]
    assert [r[0] for r in kanban.executor.released] == [task.task_id]
    assert not kanban.app.dispatcher.sink.heartbeat(run_id)
    # The exec's late ending changes nothing.
    kanban.app.dispatcher.sink.finished(run_id, Outcome(OutcomeKind.CANCELLED))
    assert kanban.get(task.task_id).status == S.TASK_STATUS_ARCHIVED


def test_crashed_executor_run_is_reclaimed_and_rerun(kanban: Kanban) -> None:
    kanban.profile("sb", "sandbox")
    task = kanban.task("t", assignee="sb")
    first = tick(kanban).spawned[0].run_id
    kanban.clock.advance(kanban.app.dispatcher._section.claim_ttl_seconds + 1)
    result = tick(kanban)
    assert [(r.run_id, r.reason) for r in result.crashed] == [(first, "executor gone")]
    # Lost to our own restart: the platform's failure. It never counts, and
    # the task is retried after a backoff, not in the same tick.
    assert [t.task_id for t in result.backing_off] == [task.task_id]
    assert list(result.spawned) == []
    after = kanban.get(task.task_id)
    assert after.failure_count == 0
    assert after.readiness.reason == S.READINESS_REASON_BACKING_OFF
    assert after.readiness.message.endswith("(attempt 2)")
    lost = kanban.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=task.task_id), timeout=5).runs
    assert [(r.counted_failure, r.failure_class) for r in lost] == [
        (False, run_pb2.FAILURE_CLASS_PLATFORM)
    ]
    kanban.clock.advance(RETRY_WAIT)
    assert [s.task_id for s in tick(kanban).spawned] == [task.task_id]


def test_dry_run_writes_nothing_and_predicts_the_real_tick(kanban_factory: Any) -> None:
    kanban = kanban_factory(default_assignee="sb", max_in_progress_per_profile="2")
    kanban.profile("sb", "sandbox")
    kanban.profile("ext", "external")
    parent = kanban.task("parent", assignee="ext")
    kanban.task("child", parent_ids=[parent.task_id])
    for i in range(4):
        kanban.task(f"u{i}", priority=i)
    claim = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5)
    kanban.worker.CompleteTask(wpb.CompleteTaskRequest(run_id=claim.run_id), timeout=5)
    kanban.task("stale", assignee="ext")
    kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5)
    kanban.clock.advance(kanban.app.dispatcher._section.claim_ttl_seconds + 1)
    before = db_state(kanban)
    dry = tick(kanban, dry_run=True)
    assert dry.dry_run
    assert db_state(kanban) == before
    assert dry.promoted and dry.reclaimed and dry.auto_assigned_default and dry.spawned
    real = tick(kanban)
    assert comparable(real) == comparable(dry)


def test_dispatch_validates(kanban: Kanban) -> None:
    import grpc

    for req, status in [
        (pb.DispatchRequest(max_spawn=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.DispatchRequest(board_id="nope"), grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.RpcError) as exc:
            kanban.stub.Dispatch(req, timeout=5)
        assert exc.value.code() == status  # type: ignore[attr-defined]


def test_the_loop_wakes_at_once_when_a_task_becomes_ready(kanban_factory: Any) -> None:
    kanban = kanban_factory(dispatch_interval_seconds=300.0)
    kanban.profile("sb", "sandbox")
    kanban.app.dispatcher.start()
    kanban.task("t", assignee="sb")
    assert kanban.executor.started.wait(10)
    with kanban.app.db.read() as s:
        assert s.scalar(select(func.count()).select_from(models.TaskRun)) == 1
