"""Readiness reads answer from the latest plan: built once per state, never stale.

GetTask, ExplainTask and ListTasks(include_readiness) on a real in-process
server (SQLite and PostgreSQL): many reads of one state build one plan; an
event, a profile change, or time passing a backoff's end makes the next read
plan again; every answer equals a plan built fresh for that read.
"""

from __future__ import annotations

from google.protobuf import field_mask_pb2
from google.protobuf.duration_pb2 import Duration
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import profile_pb2
from longshore.kanban.v1 import task_pb2 as S
from longshore.kanban.v1 import worker_service_pb2 as wpb

from services.kanban.commits import Commit
from services.kanban.store import tasks
from tests.integration.kanban.conftest import Kanban


def explain(kanban: Kanban, task_id: str) -> S.Readiness:
    return kanban.stub.ExplainTask(pb.ExplainTaskRequest(task_id=task_id), timeout=10).readiness


def fresh(kanban: Kanban, task_id: str) -> S.Readiness:
    """What a plan built just for this read says (the dispatcher's own readiness)."""
    with kanban.app.db.read() as s:
        row = tasks.get(s, task_id)
        return kanban.app.dispatcher.readiness(s, [row])[task_id].to_proto()


def test_reads_of_one_state_share_one_plan_and_equal_a_fresh_one(kanban: Kanban) -> None:
    plans = kanban.app.kanban._plans
    kanban.profile("ext", cap=1)
    first = kanban.task("first", assignee="ext")
    second = kanban.task("second", assignee="ext")
    running = kanban.worker.ClaimTask(
        wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=10
    )
    assert running.task.task_id == first.task_id
    before = plans.builds
    for _ in range(20):
        assert explain(kanban, second.task_id) == fresh(kanban, second.task_id)
        assert kanban.get(second.task_id).readiness == fresh(kanban, second.task_id)
        listed = kanban.stub.ListTasks(pb.ListTasksRequest(include_readiness=True), timeout=10)
        assert {t.task_id: t.readiness for t in listed.tasks} == {
            t: fresh(kanban, t) for t in (first.task_id, second.task_id)
        }
    assert explain(kanban, second.task_id).reason == S.READINESS_REASON_AT_PROFILE_CAP
    # The running task is outside the walk: added once, then kept.
    assert plans.builds - before <= 2

    # A profile change appends no event, yet changes the plan: cap 1 -> 2.
    kanban.stub.UpdateProfile(
        pb.UpdateProfileRequest(
            profile=profile_pb2.Profile(name="ext", max_in_progress=2),
            update_mask=field_mask_pb2.FieldMask(paths=["max_in_progress"]),
        ),
        timeout=10,
    )
    assert explain(kanban, second.task_id).reason == S.READINESS_REASON_AWAITING_WORKER
    assert explain(kanban, second.task_id) == fresh(kanban, second.task_id)

    # An event (the run completes) makes the next read plan again.
    built = plans.builds
    kanban.worker.CompleteTask(wpb.CompleteTaskRequest(run_id=running.run_id), timeout=10)
    assert kanban.get(first.task_id).readiness == fresh(kanban, first.task_id)
    assert plans.builds == built + 1


def test_a_kept_plan_expires_when_a_backoff_ends(kanban: Kanban) -> None:
    kanban.profile(
        "ext", retry_policy=profile_pb2.RetryPolicy(initial_backoff=Duration(seconds=30))
    )
    task = kanban.task("flaky", assignee="ext")
    claimed = kanban.worker.ClaimTask(
        wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=10
    )
    kanban.worker.FailTask(
        wpb.FailTaskRequest(run_id=claimed.run_id, error="boom", retryable=True), timeout=10
    )
    assert explain(kanban, task.task_id).reason == S.READINESS_REASON_BACKING_OFF
    # No write at all: only time passes the backoff's end.
    kanban.clock.advance(31)
    assert explain(kanban, task.task_id).reason == S.READINESS_REASON_AWAITING_WORKER
    assert explain(kanban, task.task_id) == fresh(kanban, task.task_id)


def test_a_ring_below_the_newest_event_id_invalidates_the_kept_plan(kanban: Kanban) -> None:
    """On PostgreSQL a smaller event id can commit after a larger one: the newest id
    stays, but the commit still rings the bus, and that alone makes the next read plan."""
    plans = kanban.app.kanban._plans
    kanban.profile("ext", cap=1)
    task = kanban.task("waits", assignee="ext")
    explain(kanban, task.task_id)
    built = plans.builds
    explain(kanban, task.task_id)
    assert plans.builds == built
    kanban.app.bus.ring(Commit(added_events=True, profiles=frozenset({"ext"})))
    explain(kanban, task.task_id)
    assert plans.builds == built + 1
