"""Tasks through the real server: create/dedupe, list, update, the transition
table, assign, block, links, comments, delete and the event log."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from longshore.kanban.v1 import board_pb2, task_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import worker_service_pb2 as wpb

from tests.integration.kanban.conftest import Kanban

S = task_pb2


def code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined,no-any-return]


def rpc_error(fn: object, request: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as exc:
        fn(request, timeout=5)  # type: ignore[operator]
    return code(exc)


def test_create_validates_and_request_id_deduplicates(kanban: Kanban) -> None:
    first = kanban.stub.CreateTask(
        pb.CreateTaskRequest(task=S.Task(title="build", command=["true"]), request_id="req-1"),
        timeout=5,
    )
    assert not first.deduplicated
    assert first.task.status == S.TASK_STATUS_READY
    assert first.task.board_id == "default"
    again = kanban.stub.CreateTask(
        pb.CreateTaskRequest(task=S.Task(title="other title"), request_id="req-1"), timeout=5
    )
    assert again.deduplicated
    assert again.task == first.task
    kanban.stub.CreateBoard(pb.CreateBoardRequest(board=board_pb2.Board(board_id="b2")), timeout=5)
    assert (
        rpc_error(
            kanban.stub.CreateTask,
            pb.CreateTaskRequest(task=S.Task(title="x", board_id="b2"), request_id="req-1"),
        )
        == grpc.StatusCode.ALREADY_EXISTS
    )
    invalid = [
        pb.CreateTaskRequest(task=S.Task(title="")),
        pb.CreateTaskRequest(task=S.Task(title="x" * 201)),
        pb.CreateTaskRequest(task=S.Task(title="x", status=S.TASK_STATUS_RUNNING)),
        pb.CreateTaskRequest(task=S.Task(title="x", max_runtime=duration_pb2.Duration(seconds=-1))),
    ]
    for req in invalid:
        assert rpc_error(kanban.stub.CreateTask, req) == grpc.StatusCode.INVALID_ARGUMENT
    for req in [
        pb.CreateTaskRequest(task=S.Task(title="x", board_id="nope")),
        pb.CreateTaskRequest(task=S.Task(title="x"), parent_ids=["t-missing"]),
    ]:
        assert rpc_error(kanban.stub.CreateTask, req) == grpc.StatusCode.NOT_FOUND
    assert (
        rpc_error(kanban.stub.GetTask, pb.GetTaskRequest(task_id="t-x"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert rpc_error(kanban.stub.GetTask, pb.GetTaskRequest()) == grpc.StatusCode.INVALID_ARGUMENT


def test_list_orders_by_priority_then_age_and_pages(kanban: Kanban) -> None:
    ids = [kanban.task(f"t{i}", priority=i % 3).task_id for i in range(7)]
    expected = sorted(range(7), key=lambda i: (-(i % 3), i))
    seen: list[str] = []
    token = ""
    while True:
        resp = kanban.stub.ListTasks(pb.ListTasksRequest(page_size=3, page_token=token), timeout=5)
        seen += [t.task_id for t in resp.tasks]
        token = resp.next_page_token
        if not token:
            break
    assert seen == [ids[i] for i in expected]
    # A token replayed with other filters is refused.
    token = kanban.stub.ListTasks(pb.ListTasksRequest(page_size=3), timeout=5).next_page_token
    assert (
        rpc_error(kanban.stub.ListTasks, pb.ListTasksRequest(page_token=token, assignee="x"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        rpc_error(kanban.stub.ListTasks, pb.ListTasksRequest(board_id="nope"))
        == grpc.StatusCode.NOT_FOUND
    )
    kanban.profile("ext")
    kanban.stub.AssignTask(pb.AssignTaskRequest(task_id=ids[1], assignee="ext"), timeout=5)
    only = kanban.stub.ListTasks(
        pb.ListTasksRequest(assignee="ext", include_readiness=True), timeout=5
    ).tasks
    assert [t.task_id for t in only] == [ids[1]]
    assert only[0].readiness.reason == S.READINESS_REASON_AWAITING_WORKER


def test_update_task_with_field_mask(kanban: Kanban) -> None:
    task = kanban.task("old", description="keep")
    updated = kanban.stub.UpdateTask(
        pb.UpdateTaskRequest(
            task=S.Task(
                task_id=task.task_id,
                title="new",
                description="dropped",
                env={"K": "v"},
                max_runtime=duration_pb2.Duration(seconds=30),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["title", "env", "max_runtime"]),
        ),
        timeout=5,
    ).task
    assert (updated.title, updated.description, dict(updated.env)) == (
        "new",
        "keep",
        {"K": "<redacted>"},  # env values are write-only
    )
    assert updated.max_runtime.seconds == 30
    for paths in (["status"], ["task_id"], [], ["bogus"]):
        assert (
            rpc_error(
                kanban.stub.UpdateTask,
                pb.UpdateTaskRequest(
                    task=S.Task(task_id=task.task_id),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                ),
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )


def test_transition_table_is_enforced(kanban: Kanban) -> None:
    task = kanban.task("t", status=S.TASK_STATUS_TRIAGE)

    def move(status: int) -> task_pb2.Task:
        return kanban.stub.MoveTask(
            pb.MoveTaskRequest(task_id=task.task_id, status=status, reason="r"), timeout=5
        ).task

    def refused(status: int) -> grpc.StatusCode:
        return rpc_error(
            kanban.stub.MoveTask, pb.MoveTaskRequest(task_id=task.task_id, status=status)
        )

    assert (
        refused(S.TASK_STATUS_BLOCKED) == grpc.StatusCode.FAILED_PRECONDITION
    )  # triage -> blocked
    assert refused(S.TASK_STATUS_DONE) == grpc.StatusCode.FAILED_PRECONDITION
    assert refused(S.TASK_STATUS_RUNNING) == grpc.StatusCode.FAILED_PRECONDITION
    assert refused(S.TASK_STATUS_UNSPECIFIED) == grpc.StatusCode.INVALID_ARGUMENT
    assert move(S.TASK_STATUS_TODO).status == S.TASK_STATUS_TODO
    assert move(S.TASK_STATUS_READY).status == S.TASK_STATUS_READY
    assert refused(S.TASK_STATUS_DONE) == grpc.StatusCode.FAILED_PRECONDITION  # ready -> done
    blocked = move(S.TASK_STATUS_BLOCKED)
    assert blocked.blocked_reason == "r"
    assert move(S.TASK_STATUS_ARCHIVED).status == S.TASK_STATUS_ARCHIVED
    assert refused(S.TASK_STATUS_READY) == grpc.StatusCode.FAILED_PRECONDITION  # archived is final
    kinds = [e.kind for e in kanban.events(task.task_id)]
    assert kinds == ["created", "moved", "moved", "moved", "moved"]


def test_assign_block_unblock(kanban: Kanban) -> None:
    kanban.profile("ext")
    task = kanban.task("t")
    assert (
        rpc_error(
            kanban.stub.AssignTask, pb.AssignTaskRequest(task_id=task.task_id, assignee="ghost")
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assigned = kanban.stub.AssignTask(
        pb.AssignTaskRequest(task_id=task.task_id, assignee="ext"), timeout=5
    ).task
    assert assigned.assignee == "ext"
    assert (
        rpc_error(kanban.stub.BlockTask, pb.BlockTaskRequest(task_id=task.task_id))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    blocked = kanban.stub.BlockTask(
        pb.BlockTaskRequest(task_id=task.task_id, reason="waiting for keys"), timeout=5
    ).task
    assert (blocked.status, blocked.blocked_reason) == (S.TASK_STATUS_BLOCKED, "waiting for keys")
    unblocked = kanban.stub.UnblockTask(pb.UnblockTaskRequest(task_id=task.task_id), timeout=5).task
    assert (unblocked.status, unblocked.blocked_reason) == (S.TASK_STATUS_READY, "")
    assert (
        rpc_error(kanban.stub.UnblockTask, pb.UnblockTaskRequest(task_id=task.task_id))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    kanban.stub.MoveTask(
        pb.MoveTaskRequest(task_id=task.task_id, status=S.TASK_STATUS_ARCHIVED), timeout=5
    )
    for call, req in [
        (kanban.stub.AssignTask, pb.AssignTaskRequest(task_id=task.task_id, assignee="ext")),
        (kanban.stub.BlockTask, pb.BlockTaskRequest(task_id=task.task_id, reason="x")),
    ]:
        assert rpc_error(call, req) == grpc.StatusCode.FAILED_PRECONDITION
    assigned_events = [e for e in kanban.events(task.task_id) if e.kind == "assigned"]
    assert assigned_events[0].source == "api"
    assert assigned_events[0].payload["to"] == "ext"


def test_links_wait_promote_and_refuse_cycles(kanban: Kanban) -> None:
    parent = kanban.task("parent")
    child = kanban.task("child", parent_ids=[parent.task_id])
    assert child.status == S.TASK_STATUS_TODO
    assert list(child.parent_ids) == [parent.task_id]
    explained = kanban.stub.ExplainTask(pb.ExplainTaskRequest(task_id=child.task_id), timeout=5)
    assert explained.readiness.reason == S.READINESS_REASON_WAITING_ON_PARENTS
    assert list(explained.readiness.waiting_on) == [parent.task_id]
    assert (
        rpc_error(
            kanban.stub.MoveTask,
            pb.MoveTaskRequest(task_id=child.task_id, status=S.TASK_STATUS_READY),
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    grandchild = kanban.task("grandchild")
    kanban.stub.LinkTasks(
        pb.LinkTasksRequest(parent_id=child.task_id, child_id=grandchild.task_id), timeout=5
    )
    assert kanban.get(grandchild.task_id).status == S.TASK_STATUS_TODO
    for parent_id, child_id, status in [
        (grandchild.task_id, parent.task_id, grpc.StatusCode.FAILED_PRECONDITION),
        (child.task_id, child.task_id, grpc.StatusCode.INVALID_ARGUMENT),
        ("t-nope", child.task_id, grpc.StatusCode.NOT_FOUND),
    ]:
        assert (
            rpc_error(
                kanban.stub.LinkTasks, pb.LinkTasksRequest(parent_id=parent_id, child_id=child_id)
            )
            == status
        )
    kanban.stub.UnlinkTasks(
        pb.UnlinkTasksRequest(parent_id=child.task_id, child_id=grandchild.task_id), timeout=5
    )
    assert (
        rpc_error(
            kanban.stub.UnlinkTasks,
            pb.UnlinkTasksRequest(parent_id=child.task_id, child_id=grandchild.task_id),
        )
        == grpc.StatusCode.NOT_FOUND
    )
    # Parent done -> the next tick promotes the child, with an event.
    kanban.profile("ext")
    kanban.stub.AssignTask(pb.AssignTaskRequest(task_id=parent.task_id, assignee="ext"), timeout=5)
    run = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=5)
    kanban.worker.CompleteTask(wpb.CompleteTaskRequest(run_id=run.run_id), timeout=5)
    result = kanban.stub.Dispatch(pb.DispatchRequest(), timeout=5).result
    assert child.task_id in result.promoted
    assert grandchild.task_id in result.promoted  # unlinked and in todo: promoted too
    assert kanban.get(child.task_id).status == S.TASK_STATUS_READY
    assert "promoted" in [e.kind for e in kanban.events(child.task_id)]


def test_comments_and_delete(kanban: Kanban) -> None:
    task = kanban.task("t")
    for i in range(3):
        kanban.stub.AddComment(
            pb.AddCommentRequest(task_id=task.task_id, author="ann", body=f"c{i}"), timeout=5
        )
    assert (
        rpc_error(kanban.stub.AddComment, pb.AddCommentRequest(task_id=task.task_id, body=" "))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        rpc_error(
            kanban.stub.AddComment, pb.AddCommentRequest(task_id=task.task_id, body="x" * 70000)
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    page = kanban.stub.ListComments(
        pb.ListCommentsRequest(task_id=task.task_id, page_size=2), timeout=5
    )
    rest = kanban.stub.ListComments(
        pb.ListCommentsRequest(task_id=task.task_id, page_size=2, page_token=page.next_page_token),
        timeout=5,
    )
    assert [c.body for c in [*page.comments, *rest.comments]] == ["c0", "c1", "c2"]
    assert not rest.next_page_token
    kanban.stub.DeleteTask(pb.DeleteTaskRequest(task_id=task.task_id), timeout=5)
    assert (
        rpc_error(kanban.stub.GetTask, pb.GetTaskRequest(task_id=task.task_id))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        rpc_error(kanban.stub.DeleteTask, pb.DeleteTaskRequest(task_id=task.task_id))
        == grpc.StatusCode.NOT_FOUND
    )
    # Events stay, and are monotonic.
    evs = kanban.events(task.task_id)
    assert [e.kind for e in evs] == ["created", "commented", "commented", "commented", "deleted"]
    assert [e.event_id for e in evs] == sorted(e.event_id for e in evs)


def test_list_task_events_pages_and_filters(kanban: Kanban) -> None:
    a = kanban.task("a")
    kanban.task("b")
    all_events = kanban.events()
    assert len(all_events) == 2
    first = kanban.stub.ListTaskEvents(pb.ListTaskEventsRequest(page_size=1), timeout=5)
    second = kanban.stub.ListTaskEvents(
        pb.ListTaskEventsRequest(page_size=1, page_token=first.next_page_token), timeout=5
    )
    assert [e.event_id for e in [*first.events, *second.events]] == [e.event_id for e in all_events]
    only_a = kanban.stub.ListTaskEvents(
        pb.ListTaskEventsRequest(task_id=a.task_id), timeout=5
    ).events
    assert [e.task_id for e in only_a] == [a.task_id]
    after = kanban.stub.ListTaskEvents(
        pb.ListTaskEventsRequest(after_event_id=all_events[0].event_id), timeout=5
    ).events
    assert [e.event_id for e in after] == [all_events[1].event_id]
    assert (
        rpc_error(kanban.stub.ListTaskEvents, pb.ListTaskEventsRequest(after_event_id=-1))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
