"""Property: the walk views a replica keeps equal a whole read of the walk, after any writes.

The views are refreshed only from the event log (services/kanban/walk_views.py):
a write that changed a walked column without appending an event would leave
them wrong. Random sequences of every kind of task write go through the API,
on both databases, and after each one the kept views must equal a whole read,
refreshed incrementally (not read whole again, which would prove nothing).
"""

from __future__ import annotations

import itertools
from typing import Any

import grpc
from google.protobuf import duration_pb2, field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from longshore.kanban.v1 import board_pb2, profile_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import task_pb2 as S
from longshore.kanban.v1 import worker_service_pb2 as wpb
from sqlalchemy import text

from services.kanban.walk_views import (
    REBUILD_SECONDS,
    WalkViews,
    view_of,
    walk_views_of,
    walked_rows,
)

CREATED = [S.TASK_STATUS_READY, S.TASK_STATUS_TODO, S.TASK_STATUS_TRIAGE]
MOVES = [S.TASK_STATUS_READY, S.TASK_STATUS_TODO, S.TASK_STATUS_DONE, S.TASK_STATUS_TRIAGE]
ASSIGNEES = ["", "ext", "sb"]
#: RPC refusals a random operation may meet (a task deleted, a move not allowed).
EXPECTED = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
}

index = st.integers(0, 30)
operation = st.one_of(
    st.tuples(
        st.just("create"),
        st.sampled_from(CREATED),
        st.sampled_from(ASSIGNEES),
        st.integers(0, 3),
        st.one_of(st.none(), index),
    ),
    st.tuples(st.just("priority"), index, st.integers(0, 5)),
    st.tuples(st.just("assign"), index, st.sampled_from(ASSIGNEES)),
    st.tuples(st.just("move"), index, st.sampled_from(MOVES)),
    st.tuples(st.just("block"), index),
    st.tuples(st.just("unblock"), index),
    st.tuples(st.just("delete"), index),
    st.tuples(st.just("link"), index, index),
    st.tuples(st.just("unlink"), index, index),
    st.tuples(st.just("work"), st.sampled_from(["complete", "fail", "platform", "give_up"])),
    st.tuples(st.just("tick")),
)
_boards = itertools.count()


def _pick(ids: list[str], i: int) -> str:
    return ids[i % len(ids)] if ids else "t-missing"


def _apply(kanban: Any, board: str, ids: list[str], op: tuple[Any, ...]) -> None:
    stub, kind = kanban.stub, op[0]
    if kind == "create":
        _, status, assignee, priority, parent = op
        parents = [_pick(ids, parent)] if parent is not None and ids else []
        ids.append(
            kanban.task(
                f"t{len(ids)}",
                board_id=board,
                status=status,
                assignee=assignee,
                priority=priority,
                parent_ids=parents,
            ).task_id
        )
    elif kind == "priority":
        stub.UpdateTask(
            pb.UpdateTaskRequest(
                task=S.Task(task_id=_pick(ids, op[1]), priority=op[2]),
                update_mask=field_mask_pb2.FieldMask(paths=["priority"]),
            ),
            timeout=10,
        )
    elif kind == "assign":
        stub.AssignTask(pb.AssignTaskRequest(task_id=_pick(ids, op[1]), assignee=op[2]), timeout=10)
    elif kind == "move":
        stub.MoveTask(pb.MoveTaskRequest(task_id=_pick(ids, op[1]), status=op[2]), timeout=10)
    elif kind == "block":
        stub.BlockTask(pb.BlockTaskRequest(task_id=_pick(ids, op[1]), reason="held"), timeout=10)
    elif kind == "unblock":
        stub.UnblockTask(pb.UnblockTaskRequest(task_id=_pick(ids, op[1])), timeout=10)
    elif kind == "delete":
        stub.DeleteTask(pb.DeleteTaskRequest(task_id=_pick(ids, op[1])), timeout=10)
    elif kind in ("link", "unlink"):
        request = (pb.LinkTasksRequest if kind == "link" else pb.UnlinkTasksRequest)(
            parent_id=_pick(ids, op[1]), child_id=_pick(ids, op[2])
        )
        (stub.LinkTasks if kind == "link" else stub.UnlinkTasks)(request, timeout=10)
    elif kind == "work":
        claim = kanban.worker.ClaimTask(
            wpb.ClaimTaskRequest(profile="ext", worker_id="w", board_id=board), timeout=10
        )
        if not claim.run_id:
            return
        if op[1] == "complete":
            kanban.worker.CompleteTask(wpb.CompleteTaskRequest(run_id=claim.run_id), timeout=10)
        else:
            kanban.worker.FailTask(
                wpb.FailTaskRequest(
                    run_id=claim.run_id,
                    error="boom",
                    retryable=op[1] != "give_up",
                    platform=op[1] == "platform",
                ),
                timeout=10,
            )
    else:
        stub.Dispatch(pb.DispatchRequest(board_id=board), timeout=10)


def _kept_and_whole(kanban: Any) -> tuple[WalkViews, dict[str, Any], dict[str, Any]]:
    with kanban.app.db.read() as s:
        walk = walk_views_of(s)
        kept = walk.current(s)
    with kanban.app.db.read() as s:
        whole = {row[0]: view_of(row) for row in walked_rows(s.connection())}
    return walk, kept, whole


def test_kept_views_equal_a_whole_read_after_any_writes(kanban_factory: Any) -> None:
    kanban = kanban_factory(default_assignee="sb", max_in_progress_per_profile="2")
    kanban.profile("sb", "sandbox")
    kanban.profile(
        "ext",
        "external",
        retry_policy=profile_pb2.RetryPolicy(
            max_attempts=2, initial_backoff=duration_pb2.Duration(seconds=5)
        ),
    )
    walk, kept, whole = _kept_and_whole(kanban)
    assert kept == whole
    reads = walk.whole_reads

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(operation, min_size=1, max_size=25))
    def check(ops: list[tuple[Any, ...]]) -> None:
        board = f"w{next(_boards)}"
        kanban.stub.CreateBoard(
            pb.CreateBoardRequest(board=board_pb2.Board(board_id=board)), timeout=5
        )
        ids: list[str] = []
        for op in ops:
            try:
                _apply(kanban, board, ids, op)
            except grpc.RpcError as exc:
                assert exc.code() in EXPECTED, (op, exc.code(), exc.details())
            kanban.clock.advance(7)  # backoffs end, leases run out
            _, kept, whole = _kept_and_whole(kanban)
            assert kept == whole, op

    check()
    # Kept, not re-read: every check above was answered by a refresh.
    assert walk.whole_reads == reads
    assert walk.refreshes > 0


def test_a_write_without_its_event_is_repaired_by_the_next_whole_read(
    kanban_factory: Any,
) -> None:
    # The bound on a write that forgot its event: REBUILD_SECONDS.
    kanban = kanban_factory()
    task = kanban.task("quiet", status=S.TASK_STATUS_READY)
    now = [0.0]
    walk = WalkViews(clock=lambda: now[0])
    with kanban.app.db.read() as s:
        assert task.task_id in walk.current(s)
    with kanban.app.db.write() as s:
        s.execute(text("UPDATE tasks SET status = 'done' WHERE task_id = :t"), {"t": task.task_id})
    with kanban.app.db.read() as s:
        assert task.task_id in walk.current(s)  # no event: not seen yet
    now[0] += REBUILD_SECONDS + 1
    with kanban.app.db.read() as s:
        assert task.task_id not in walk.current(s)
    assert walk.whole_reads == 2
