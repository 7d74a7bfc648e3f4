"""WatchEvents (backlog, live, resume) and WorkerService fencing through the real server."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import task_pb2 as S
from longshore.kanban.v1 import worker_service_pb2 as wpb

from tests.integration.kanban.conftest import Kanban


def stop(stream: object) -> None:
    """End a server stream (the instrumented channel wraps calls in generators)."""
    cancel = getattr(stream, "cancel", None) or stream.close  # type: ignore[attr-defined]
    cancel()


def code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined,no-any-return]


def test_watch_streams_backlog_then_live_and_resumes_without_loss(kanban: Kanban) -> None:
    first = [kanban.task(f"a{i}").task_id for i in range(3)]
    stream = kanban.stub.WatchEvents(pb.WatchEventsRequest(), timeout=30)
    got = [next(stream).event for _ in range(3)]
    assert [e.task_id for e in got] == first
    live = kanban.task("live").task_id
    event = next(stream).event
    assert (event.task_id, event.kind) == (live, "created")
    stop(stream)
    # Events written while disconnected arrive after a resume, once each, in order.
    missed = [kanban.task(f"m{i}").task_id for i in range(3)]
    resumed = kanban.stub.WatchEvents(
        pb.WatchEventsRequest(since_event_id=event.event_id), timeout=30
    )
    again = [next(resumed).event for _ in range(3)]
    assert [e.task_id for e in again] == missed
    assert [e.event_id for e in again] == sorted({e.event_id for e in again})
    assert again[0].event_id > event.event_id
    stop(resumed)


def test_watch_filters_and_errors(kanban: Kanban) -> None:
    a = kanban.task("a").task_id
    kanban.task("b")
    stream = kanban.stub.WatchEvents(pb.WatchEventsRequest(task_id=a), timeout=30)
    assert next(stream).event.task_id == a
    kanban.stub.AddComment(pb.AddCommentRequest(task_id=a, body="hi"), timeout=5)
    assert next(stream).event.kind == "commented"
    stop(stream)
    for req, status in [
        (pb.WatchEventsRequest(since_event_id=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.WatchEventsRequest(board_id="nope"), grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.RpcError) as exc:
            next(kanban.stub.WatchEvents(req, timeout=5))
        assert code(exc) == status


def test_watch_delivers_concurrent_writers_in_order_exactly_once(kanban: Kanban) -> None:
    stream = kanban.stub.WatchEvents(pb.WatchEventsRequest(), timeout=60)
    threads = [
        threading.Thread(target=lambda n=n: [kanban.task(f"w{n}-{i}") for i in range(10)])
        for n in range(4)
    ]
    for t in threads:
        t.start()
    ids = [next(stream).event.event_id for _ in range(40)]
    for t in threads:
        t.join()
    stop(stream)
    assert ids == sorted(set(ids))
    assert ids == [e.event_id for e in kanban.events()]


def test_claim_validation(kanban: Kanban) -> None:
    kanban.profile("human", "none")
    for req, status in [
        (wpb.ClaimTaskRequest(worker_id="w"), grpc.StatusCode.INVALID_ARGUMENT),
        (wpb.ClaimTaskRequest(profile="p"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            wpb.ClaimTaskRequest(
                profile="p", worker_id="w", wait=duration_pb2.Duration(seconds=-1)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (wpb.ClaimTaskRequest(profile="ghost", worker_id="w"), grpc.StatusCode.NOT_FOUND),
        (wpb.ClaimTaskRequest(profile="human", worker_id="w"), grpc.StatusCode.FAILED_PRECONDITION),
    ]:
        with pytest.raises(grpc.RpcError) as exc:
            kanban.worker.ClaimTask(req, timeout=5)
        assert code(exc) == status


def test_claim_heartbeat_output_complete_and_fencing(kanban: Kanban) -> None:
    kanban.profile("ext", cap=1)
    a = kanban.task("a", assignee="ext", priority=1)
    b = kanban.task("b", assignee="ext")
    claim = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w1"), timeout=5)
    assert claim.task.task_id == a.task_id  # priority first
    assert claim.profile.name == "ext"
    # At the cap of 1, nothing more is handed out.
    none = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w2"), timeout=5)
    assert not none.HasField("task")
    hb = kanban.worker.Heartbeat(wpb.HeartbeatRequest(run_id=claim.run_id), timeout=5)
    assert hb.lease_expire_time.ToDatetime() >= claim.lease_expire_time.ToDatetime()
    out = kanban.worker.AppendOutput(
        wpb.AppendOutputRequest(run_id=claim.run_id, data=b"hello "), timeout=5
    )
    out = kanban.worker.AppendOutput(
        wpb.AppendOutputRequest(run_id=claim.run_id, data=b"world"), timeout=5
    )
    assert (out.output_bytes, out.truncated) == (11, False)
    part = kanban.stub.GetRunOutput(
        pb.GetRunOutputRequest(task_id=a.task_id, offset=6, limit=3), timeout=5
    )
    assert (part.data, part.next_offset, part.eof) == (b"wor", 9, False)
    # A follower sees the rest and the end.
    follower = kanban.stub.StreamRunOutput(
        pb.StreamRunOutputRequest(run_id=claim.run_id, follow=True), timeout=30
    )
    assert next(follower).data == b"hello world"
    done = kanban.worker.CompleteTask(
        wpb.CompleteTaskRequest(run_id=claim.run_id, summary="ok"), timeout=5
    )
    assert done.task.status == S.TASK_STATUS_DONE
    last = next(follower)
    assert last.eof
    whole = kanban.stub.GetRunOutput(pb.GetRunOutputRequest(run_id=claim.run_id), timeout=5)
    assert (whole.data, whole.eof) == (b"hello world", True)
    # Every later call with the finished run changes nothing.
    for call, req in [
        (kanban.worker.Heartbeat, wpb.HeartbeatRequest(run_id=claim.run_id)),
        (kanban.worker.CompleteTask, wpb.CompleteTaskRequest(run_id=claim.run_id)),
        (kanban.worker.FailTask, wpb.FailTaskRequest(run_id=claim.run_id, error="x")),
        (kanban.worker.AppendOutput, wpb.AppendOutputRequest(run_id=claim.run_id, data=b"x")),
    ]:
        with pytest.raises(grpc.RpcError) as exc:
            call(req, timeout=5)
        assert code(exc) == grpc.StatusCode.FAILED_PRECONDITION
        assert claim.run_id in exc.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as exc:
        kanban.worker.Heartbeat(wpb.HeartbeatRequest(run_id="r-nope"), timeout=5)
    assert code(exc) == grpc.StatusCode.NOT_FOUND
    # The slot is free again: b is claimable now.
    nxt = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w2"), timeout=5)
    assert nxt.task.task_id == b.task_id
    assert kanban.get(a.task_id).status == S.TASK_STATUS_DONE
    runs = kanban.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=a.task_id), timeout=5).runs
    assert [(r.status, r.output_bytes) for r in runs] == [(2, 11)]


def test_output_is_bounded(kanban_factory: object) -> None:
    kanban = kanban_factory(run_output_max_bytes=10)  # type: ignore[operator]
    kanban.profile("ext")
    kanban.task("a", assignee="ext")
    claim = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5)
    out = kanban.worker.AppendOutput(
        wpb.AppendOutputRequest(run_id=claim.run_id, data=b"x" * 25), timeout=5
    )
    assert (out.output_bytes, out.truncated) == (10, True)
    got = kanban.stub.GetRunOutput(pb.GetRunOutputRequest(run_id=claim.run_id), timeout=5)
    assert (got.data, got.truncated) == (b"x" * 10, True)


def test_long_poll_wakes_when_a_task_becomes_ready(kanban: Kanban) -> None:
    kanban.profile("ext")
    result: list[wpb.ClaimTaskResponse] = []
    poller = threading.Thread(
        target=lambda: result.append(
            kanban.worker.ClaimTask(
                wpb.ClaimTaskRequest(
                    profile="ext", worker_id="w", wait=duration_pb2.Duration(seconds=20)
                ),
                timeout=30,
            )
        )
    )
    started = time.monotonic()
    poller.start()
    time.sleep(0.3)  # let the poll start waiting; the claim itself is event-driven
    task = kanban.task("late", assignee="ext")
    poller.join(25)
    assert result and result[0].task.task_id == task.task_id
    assert time.monotonic() - started < 10


def test_fail_counts_toward_breaker_and_blocks_with_gave_up(kanban: Kanban) -> None:
    kanban.profile("ext")
    task = kanban.task("flaky", assignee="ext")
    first = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5)
    failed = kanban.worker.FailTask(
        wpb.FailTaskRequest(run_id=first.run_id, error="exit 3", retryable=True, exit_code=3),
        timeout=5,
    )
    assert (failed.blocked, failed.task.status, failed.task.failure_count) == (
        False,
        S.TASK_STATUS_READY,
        1,
    )
    # Backing off: no worker gets it until the backoff (5 s by default) ends.
    assert failed.task.HasField("next_attempt_time")
    early = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5)
    assert not early.run_id
    kanban.clock.advance(6)
    second = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5)
    failed = kanban.worker.FailTask(
        wpb.FailTaskRequest(run_id=second.run_id, error="exit 3", retryable=True), timeout=5
    )
    assert failed.blocked
    assert failed.task.status == S.TASK_STATUS_BLOCKED
    assert failed.task.blocked_reason == "2 failures: exit 3"
    explain = kanban.stub.ExplainTask(pb.ExplainTaskRequest(task_id=task.task_id), timeout=5)
    assert explain.readiness.reason == S.READINESS_REASON_BREAKER_OPEN
    kinds = [e.kind for e in kanban.events(task.task_id)]
    assert kinds[-1] == "gave_up"
    with pytest.raises(grpc.RpcError) as exc:
        kanban.worker.FailTask(wpb.FailTaskRequest(run_id=second.run_id), timeout=5)
    assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    # Unblock resets the streak; a non-retryable failure blocks at once.
    kanban.stub.UnblockTask(pb.UnblockTaskRequest(task_id=task.task_id), timeout=5)
    assert kanban.get(task.task_id).failure_count == 0
    third = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5)
    failed = kanban.worker.FailTask(
        wpb.FailTaskRequest(run_id=third.run_id, error="bad input"), timeout=5
    )
    assert failed.blocked and failed.task.blocked_reason == "non-retryable failure: bad input"


def test_block_cancels_the_run_and_refuses_its_heartbeat(kanban: Kanban) -> None:
    kanban.profile("ext")
    task = kanban.task("t", assignee="ext")
    claim = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5)
    kanban.stub.BlockTask(pb.BlockTaskRequest(task_id=task.task_id, reason="stop"), timeout=5)
    assert claim.run_id in kanban.executor.cancelled
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as exc:
            kanban.worker.Heartbeat(wpb.HeartbeatRequest(run_id=claim.run_id), timeout=5)
        assert code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    runs = kanban.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=task.task_id), timeout=5).runs
    assert runs[0].status == 5  # RUN_STATUS_CANCELLED
    kinds = [e.kind for e in kanban.events(task.task_id)]
    assert kinds.count("heartbeat_refused") == 1  # logged once, not per heartbeat
    assert "cancelled" in kinds


def test_expired_lease_is_reclaimed_and_the_stale_worker_is_fenced(kanban: Kanban) -> None:
    kanban.profile("ext")
    task = kanban.task("t", assignee="ext")
    old = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="slow"), timeout=5)
    kanban.clock.advance(kanban.app.dispatcher._section.claim_ttl_seconds + 1)
    result = kanban.stub.Dispatch(pb.DispatchRequest(), timeout=5).result
    assert [(r.task_id, r.run_id, r.reason) for r in result.reclaimed] == [
        (task.task_id, old.run_id, "lease expired")
    ]
    # A worker's expired lease is its work's failure: counted, then a backoff.
    assert [t.task_id for t in result.backing_off] == [task.task_id]
    kanban.clock.advance(6)
    new = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="fast"), timeout=5)
    assert new.task.task_id == task.task_id and new.run_id != old.run_id
    with pytest.raises(grpc.RpcError) as exc:
        kanban.worker.CompleteTask(wpb.CompleteTaskRequest(run_id=old.run_id), timeout=5)
    assert code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    kanban.worker.CompleteTask(wpb.CompleteTaskRequest(run_id=new.run_id), timeout=5)
    runs = kanban.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=task.task_id), timeout=5).runs
    assert sorted(r.status for r in runs) == [2, 6]  # one SUCCEEDED, one LOST
    assert [r.counted_failure for r in runs if r.status == 6] == [True]


def test_claim_of_one_task_takes_exactly_it_or_nothing(kanban: Kanban) -> None:
    # A front door creates a task for its caller and claims exactly that one:
    # the profile's better-ranked task stays ready for others.
    kanban.profile("ext")
    first = kanban.task("first", assignee="ext", priority=5)
    mine = kanban.task("mine", assignee="ext")
    claim = kanban.worker.ClaimTask(
        wpb.ClaimTaskRequest(profile="ext", worker_id="door", task_id=mine.task_id), timeout=5
    )
    assert claim.task.task_id == mine.task_id
    assert kanban.get(first.task_id).status == S.TASK_STATUS_READY
    # Already claimed (or unknown): nothing, not another task.
    again = kanban.worker.ClaimTask(
        wpb.ClaimTaskRequest(profile="ext", worker_id="door", task_id=mine.task_id), timeout=5
    )
    assert not again.HasField("task")
    with pytest.raises(grpc.RpcError) as exc:
        kanban.worker.ClaimTask(
            wpb.ClaimTaskRequest(profile="ext", worker_id="door", task_id="x" * 65), timeout=5
        )
    assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT
