"""The planner's rules, one bucket at a time (DESIGN.md "Kanban-dispatch semantics")."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from services.kanban import caps, retry
from services.kanban.planner import (
    BackendView,
    BlockedRef,
    CappedRef,
    ExecutorKind,
    FailureClass,
    PlannerSettings,
    ProfileView,
    ReadinessReason,
    ReclaimKind,
    ReclaimRef,
    ReclaimView,
    RetryPolicy,
    Snapshot,
    TaskRef,
    TaskStatus,
    apply,
    backoff_seconds,
    explain,
    parse_cap,
    plan,
    planner_settings,
    retry_policy,
)
from tests.unit.kanban_planner.snapshots import profiles, task

SANDBOX = ExecutorKind.SANDBOX
PROFS = profiles(
    ("builder", SANDBOX, 0),
    ("solo", SANDBOX, 1),
    ("human", ExecutorKind.NONE, 0),
    ("remote", ExecutorKind.EXTERNAL, 0),
)
CAP2 = PlannerSettings(max_in_progress_per_profile=2)
NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def snap(*tasks: object, running: dict[str, int] | None = None, **kw: object) -> Snapshot:
    return Snapshot(tasks=tuple(tasks), profiles=PROFS, running=running or {}, **kw)  # type: ignore[arg-type]


def test_walks_by_priority_then_age_then_id() -> None:
    s = snap(
        task("old-low", "builder", age=0),
        task("new-high", "builder", priority=5, age=9),
        task("b-mid", "builder", priority=1, age=3),
        task("a-mid", "builder", priority=1, age=3),
    )
    result = plan(s, settings=PlannerSettings())
    assert [r.task_id for r in result.spawned] == ["new-high", "a-mid", "b-mid", "old-low"]


def test_order_of_the_snapshot_does_not_matter() -> None:
    tasks = [task(f"t{i}", "builder", priority=i % 2, age=i % 3) for i in range(8)]
    forward = plan(snap(*tasks), settings=CAP2)
    backward = plan(snap(*reversed(tasks)), settings=CAP2)
    assert forward == backward


def test_capped_task_reports_running_count_including_runs_before_the_tick() -> None:
    s = snap(
        task("t1", "builder", age=1),
        task("t2", "builder", age=2),
        running={"builder": 1},
    )
    result = plan(s, settings=CAP2)
    assert result.spawned == [TaskRef("t1", "builder")]
    assert result.skipped_per_profile_capped == [CappedRef("t2", "builder", 2, 2)]
    readiness = result.readiness["t2"]
    assert readiness.reason is ReadinessReason.AT_PROFILE_CAP
    assert readiness.message == "builder at per-profile cap (2 of 2 running)"
    assert (readiness.running, readiness.cap) == (2, 2)


def test_profile_cap_overrides_the_setting() -> None:
    s = snap(task("t1", "solo", age=1), task("t2", "solo", age=2))
    result = plan(s, settings=PlannerSettings(max_in_progress_per_profile=5))
    assert [r.task_id for r in result.spawned] == ["t1"]
    assert result.skipped_per_profile_capped == [CappedRef("t2", "solo", 1, 1)]


def test_unassigned_without_default_is_skipped() -> None:
    result = plan(snap(task("t1")), settings=PlannerSettings())
    assert result.skipped_unassigned == ["t1"]
    assert result.readiness["t1"].reason is ReadinessReason.NO_ASSIGNEE


@pytest.mark.parametrize("raw", ["", "   ", None])
def test_empty_or_whitespace_default_assignee_means_none(raw: str | None) -> None:
    result = plan(snap(task("t1")), settings=planner_settings(default_assignee=raw))
    assert result.skipped_unassigned == ["t1"]
    assert result.auto_assigned_default == []


def test_default_assignee_is_applied_then_the_walk_goes_on() -> None:
    s = snap(task("t1", age=1), task("t2", age=2), task("t3", age=3))
    result = plan(
        s, settings=planner_settings(default_assignee=" builder ", max_in_progress_per_profile=2)
    )
    assert result.auto_assigned_default == [TaskRef(f"t{i}", "builder") for i in (1, 2, 3)]
    assert [r.task_id for r in result.spawned] == ["t1", "t2"]
    assert result.skipped_per_profile_capped == [CappedRef("t3", "builder", 2, 2)]


def test_nonspawnable_assignees() -> None:
    result = plan(snap(task("t1", "human"), task("t2", "ghost", age=1)), settings=PlannerSettings())
    assert result.skipped_nonspawnable == [TaskRef("t1", "human"), TaskRef("t2", "ghost")]
    assert result.readiness["t1"].reason is ReadinessReason.ASSIGNEE_NOT_SPAWNABLE
    assert result.readiness["t2"].reason is ReadinessReason.ASSIGNEE_UNKNOWN
    assert result.readiness["t2"].message == "assignee ghost names no profile"


def test_external_tasks_await_a_worker_count_against_caps_and_not_max_spawn() -> None:
    s = snap(
        task("r1", "remote", age=1),
        task("r2", "remote", age=2),
        task("b1", "builder", age=3),
        running={"remote": 1},
    )
    result = plan(s, settings=CAP2, max_spawn=1)
    assert result.awaiting_worker == [TaskRef("r1", "remote"), TaskRef("r2", "remote")]
    assert result.spawned == [TaskRef("b1", "builder")]
    assert result.stopped_reason == ""
    capped = plan(s, settings=PlannerSettings(max_in_progress_per_profile=1))
    assert [c.task_id for c in capped.skipped_per_profile_capped] == ["r1", "r2"]
    assert capped.readiness["r1"].reason is ReadinessReason.AT_PROFILE_CAP


def test_global_cap_stops_the_walk_counting_runs_before_the_tick() -> None:
    s = snap(
        task("t1", "builder", age=1),
        task("t2", "builder", age=2),
        task("t3", age=3),
        running={"remote": 2},
    )
    result = plan(s, settings=PlannerSettings(max_in_progress=3))
    assert result.spawned == [TaskRef("t1", "builder")]
    assert result.stopped_reason == "max_in_progress reached (3)"
    assert result.not_considered == ["t2", "t3"]
    assert result.readiness["t2"].reason is ReadinessReason.AT_GLOBAL_CAP
    assert (result.readiness["t2"].running, result.readiness["t2"].cap) == (3, 3)


def test_max_spawn_stops_the_walk() -> None:
    s = snap(*(task(f"t{i}", "builder", age=i) for i in range(4)))
    result = plan(s, settings=PlannerSettings(), max_spawn=2)
    assert [r.task_id for r in result.spawned] == ["t0", "t1"]
    assert result.stopped_reason == "max_spawn reached (2)"
    assert result.not_considered == ["t2", "t3"]


def test_todo_with_parents_done_is_promoted_and_walked_in_the_same_tick() -> None:
    s = snap(
        task("child", "builder", status=TaskStatus.TODO, age=5),
        task("waiting", "builder", status=TaskStatus.TODO, waiting_on=("p1", "p2")),
        task("ready", "builder", age=9),
    )
    result = plan(s, settings=PlannerSettings())
    assert result.promoted == ["child"]
    assert [r.task_id for r in result.spawned] == ["child", "ready"]
    waiting = result.readiness["waiting"]
    assert waiting.reason is ReadinessReason.WAITING_ON_PARENTS
    assert waiting.waiting_on == ("p1", "p2")
    assert waiting.message == "waiting on parents: p1, p2"


def test_reclaim_frees_the_slot_counts_a_failure_and_rewalks_the_task() -> None:
    s = snap(
        task("t1", "solo", status=TaskStatus.RUNNING),
        task("t2", "solo", age=1),
        running={"solo": 1},
        reclaims=(ReclaimView("t1", "run-1", "solo", ReclaimKind.LEASE_EXPIRED),),
    )
    result = plan(s, settings=PlannerSettings(failure_limit=3))
    assert result.reclaimed == [ReclaimRef("t1", "run-1", "lease expired")]
    assert result.spawned == [TaskRef("t1", "solo")]
    assert result.skipped_per_profile_capped == [CappedRef("t2", "solo", 1, 1)]
    after = apply(s, result)
    assert {t.task_id: t.failure_count for t in after.tasks}["t1"] == 1


def test_an_expired_worker_lease_at_the_failure_limit_blocks_the_task() -> None:
    s = snap(
        task("t1", "remote", status=TaskStatus.RUNNING, failure_count=1),
        running={"remote": 1},
        reclaims=(ReclaimView("t1", "run-9", "remote", ReclaimKind.LEASE_EXPIRED),),
    )
    result = plan(s, settings=PlannerSettings(failure_limit=2))
    assert result.reclaimed == [ReclaimRef("t1", "run-9", "lease expired", blocked=True)]
    assert result.auto_blocked == [BlockedRef("t1", "2 failures: lease expired")]
    assert result.spawned == []
    assert result.readiness["t1"].reason is ReadinessReason.BREAKER_OPEN


def test_a_run_lost_to_our_own_restart_never_counts_and_backs_off() -> None:
    s = snap(
        task("t1", "builder", status=TaskStatus.RUNNING, failure_count=1, runs=3),
        running={"builder": 1},
        reclaims=(ReclaimView("t1", "run-9", "builder", ReclaimKind.EXECUTOR_GONE),),
        now=NOW,
    )
    result = plan(s, settings=PlannerSettings(failure_limit=2, retry_initial_backoff_seconds=4))
    retry_at = NOW + timedelta(seconds=4)
    assert result.crashed == [
        ReclaimRef(
            "t1",
            "run-9",
            "executor gone",
            failure_class=FailureClass.PLATFORM,
            next_attempt_time=retry_at,
        )
    ]
    assert result.auto_blocked == []
    assert result.backing_off == [TaskRef("t1", "builder")]
    why = result.readiness["t1"]
    assert why.reason is ReadinessReason.BACKING_OFF
    assert why.message == "retrying after backoff at 12:00:04Z (attempt 4)"
    after = {t.task_id: t for t in apply(s, result).tasks}["t1"]
    assert (after.failure_count, after.next_attempt_time) == (1, retry_at)


def test_ready_task_past_the_limit_is_auto_blocked() -> None:
    result = plan(snap(task("t1", "builder", failure_count=2)), settings=PlannerSettings())
    assert result.auto_blocked == [BlockedRef("t1", "2 failures")]
    assert result.spawned == []


def test_static_readiness_for_tasks_outside_the_walk() -> None:
    s = snap(
        task("run", "builder", status=TaskStatus.RUNNING),
        task("brk", "builder", status=TaskStatus.BLOCKED, breaker_open=True),
        task("held", "builder", status=TaskStatus.BLOCKED),
        task("tri", status=TaskStatus.TRIAGE),
    )
    settings = PlannerSettings()
    assert explain(s, "run", settings=settings).reason is ReadinessReason.RUNNING  # type: ignore[union-attr]
    assert explain(s, "brk", settings=settings).reason is ReadinessReason.BREAKER_OPEN  # type: ignore[union-attr]
    assert explain(s, "held", settings=settings).reason is ReadinessReason.NOT_DISPATCHABLE  # type: ignore[union-attr]
    assert explain(s, "tri", settings=settings).reason is ReadinessReason.NOT_DISPATCHABLE  # type: ignore[union-attr]
    assert explain(s, "nope", settings=settings) is None


def test_will_dispatch_and_proto_conversion() -> None:
    result = plan(snap(task("t1", "builder")), settings=PlannerSettings())
    readiness = result.readiness["t1"].to_proto()
    assert readiness.reason == ReadinessReason.WILL_DISPATCH
    proto = result.to_proto(dry_run=True)
    assert proto.dry_run
    assert [(s.task_id, s.assignee) for s in proto.spawned] == [("t1", "builder")]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(3, 3), ("4", 4), (" 5 ", 5), (None, None), ("", None)],
)
def test_parse_cap_valid_and_unset(raw: object, expected: int | None) -> None:
    assert parse_cap(raw) == expected


@pytest.mark.parametrize("raw", [0, -1, "0", "-3", "two", "1.5", 2.5, True])
def test_parse_cap_invalid_means_no_cap_with_one_warning(
    raw: object, caplog: pytest.LogCaptureFixture
) -> None:
    caps._warned.clear()
    with caplog.at_level(logging.WARNING, logger="services.kanban.caps"):
        assert parse_cap(raw, setting="kanban.max_in_progress") is None
        assert parse_cap(raw, setting="kanban.max_in_progress") is None
    warnings = [r for r in caplog.records if "no cap applies" in r.getMessage()]
    assert len(warnings) == 1
    assert "kanban.max_in_progress" in warnings[0].getMessage()


def test_invalid_caps_mean_no_cap_in_the_plan() -> None:
    s = snap(*(task(f"t{i}", "builder", age=i) for i in range(5)))
    settings = planner_settings(max_in_progress="0", max_in_progress_per_profile=-2)
    assert len(plan(s, settings=settings).spawned) == 5


def test_a_task_backing_off_waits_and_then_dispatches() -> None:
    later = NOW + timedelta(seconds=30)
    waiting = task("t1", "builder", failure_count=1, next_attempt_time=later, runs=1)
    result = plan(snap(waiting, task("t2", "builder", age=1), now=NOW), settings=CAP2)
    assert result.backing_off == [TaskRef("t1", "builder")]
    assert result.spawned == [TaskRef("t2", "builder")]
    why = result.readiness["t1"]
    assert (why.reason, why.attempt, why.next_attempt_time) == (
        ReadinessReason.BACKING_OFF,
        2,
        later,
    )
    assert why.message == "retrying after backoff at 12:00:30Z (attempt 2)"
    assert why.to_proto().reason == 12
    due = plan(snap(waiting, now=later + timedelta(microseconds=1)), settings=CAP2)
    assert due.spawned == [TaskRef("t1", "builder")] and due.backing_off == []
    # The proto carries the bucket.
    assert [r.task_id for r in result.to_proto(dry_run=True).backing_off] == ["t1"]


def test_the_breaker_comes_before_the_backoff() -> None:
    later = NOW + timedelta(seconds=30)
    worn = task("t1", "builder", failure_count=2, next_attempt_time=later)
    result = plan(snap(worn, now=NOW), settings=PlannerSettings(failure_limit=2))
    assert result.auto_blocked == [BlockedRef("t1", "2 failures")]
    assert result.backing_off == []


def test_a_profile_retry_policy_sets_its_own_limit() -> None:
    profs = dict(PROFS)
    profs["patient"] = ProfileView("patient", SANDBOX, retry=RetryPolicy(max_attempts=5))
    s = Snapshot(
        tasks=(task("t1", "patient", failure_count=4), task("t2", "builder", failure_count=4)),
        profiles=profs,
    )
    result = plan(s, settings=PlannerSettings(failure_limit=2))
    assert result.spawned == [TaskRef("t1", "patient")]
    assert result.auto_blocked == [BlockedRef("t2", "4 failures")]


def test_a_down_sandbox_backend_pauses_sandbox_profiles_only() -> None:
    backend = BackendView(
        "sandbox",
        since=NOW - timedelta(seconds=7),
        reason="connection refused",
        next_probe=NOW + timedelta(seconds=3.2),
    )
    s = snap(
        task("t1", "builder"),
        task("t2", "remote", age=1),
        task("t3", "human", age=2),
        now=NOW,
        sandbox_backend=backend,
    )
    result = plan(s, settings=CAP2)
    message = "sandbox backend unavailable since 11:59:53Z (connection refused), next probe in 4s"
    assert result.backend_unavailable == message
    assert result.backend_paused == [TaskRef("t1", "builder")]
    assert result.spawned == []
    assert result.awaiting_worker == [TaskRef("t2", "remote")]
    assert result.skipped_nonspawnable == [TaskRef("t3", "human")]
    why = result.readiness["t1"]
    assert (why.reason, why.message) == (ReadinessReason.BACKEND_UNAVAILABLE, message)
    proto = result.to_proto(dry_run=False)
    assert proto.backend_unavailable == message
    assert [r.task_id for r in proto.backend_paused] == ["t1"]
    # Available again: it spawns, and the result says nothing about the backend.
    back = plan(snap(task("t1", "builder"), now=NOW), settings=CAP2)
    assert back.spawned == [TaskRef("t1", "builder")] and back.backend_unavailable == ""


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 5.0), (1, 5.0), (2, 10.0), (3, 20.0), (6, 160.0), (7, 300.0), (64, 300.0)],
)
def test_backoff_doubles_from_the_initial_delay_up_to_the_maximum(
    failures: int, expected: float
) -> None:
    assert backoff_seconds(failures, RetryPolicy(2, 5.0, 300.0)) == expected


@pytest.mark.parametrize("failures", [1023, 1024, 1025, 10**6, 2**62, 2**200])
def test_backoff_is_overflow_safe(failures: int) -> None:
    policy = RetryPolicy(2, 1e300, 1e308)
    delay = backoff_seconds(failures, policy)
    assert delay == retry.MAX_BACKOFF_SECONDS
    assert NOW + timedelta(seconds=delay) > NOW


def test_zero_initial_backoff_means_retry_at_once() -> None:
    assert backoff_seconds(9, RetryPolicy(2, 0.0, 300.0)) == 0.0


def test_retry_policy_falls_back_to_the_settings() -> None:
    settings = PlannerSettings(
        failure_limit=3, retry_initial_backoff_seconds=2, retry_max_backoff_seconds=60
    )
    assert retry_policy(None, settings) == RetryPolicy(3, 2.0, 60.0)
    own = ProfileView("p", SANDBOX, retry=RetryPolicy(7, 0.5, 0.0))
    assert retry_policy(own, settings) == RetryPolicy(7, 0.5, 60.0)
    # A maximum below the initial delay is the initial delay.
    assert retry_policy(ProfileView("q", SANDBOX, retry=RetryPolicy(0, 90, 10)), settings) == (
        RetryPolicy(3, 90.0, 90.0)
    )
