"""Properties of the planner over random boards (Hypothesis).

The dry run is ``plan()`` with nothing applied and a real tick is ``plan()``
applied, so these properties are what make a dry run a faithful prediction:
the plan is a deterministic function of the state (not of the row order), every
task gets exactly one verdict, applying a plan never takes a profile past its
cap, and a board the plan was applied to has nothing left to spawn.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.kanban.planner import (
    BackendView,
    ExecutorKind,
    Plan,
    PlannerSettings,
    ProfileView,
    ReclaimKind,
    ReclaimView,
    RetryPolicy,
    Snapshot,
    TaskStatus,
    apply,
    plan,
)
from tests.unit.kanban_planner.snapshots import task

STATUSES = [
    TaskStatus.READY,
    TaskStatus.READY,
    TaskStatus.READY,
    TaskStatus.TODO,
    TaskStatus.RUNNING,
    TaskStatus.BLOCKED,
    TaskStatus.TRIAGE,
]
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
# A retry already due, one not due yet, or none.
RETRY_AT = [None, None, NOW - timedelta(seconds=10), NOW + timedelta(seconds=30)]
DOWN = BackendView("sandbox", NOW - timedelta(seconds=5), "connection refused", NOW)


@st.composite
def boards(draw: st.DrawFn) -> tuple[Snapshot, PlannerSettings, int | None]:
    """A random snapshot, settings and max_spawn."""
    n_profiles = draw(st.integers(1, 4))
    profs = {
        f"p{i}": ProfileView(
            f"p{i}",
            draw(st.sampled_from(list(ExecutorKind))),
            draw(st.integers(-1, 3)),
            RetryPolicy(max_attempts=draw(st.integers(0, 3))),
        )
        for i in range(n_profiles)
    }
    names = sorted(profs)
    tasks = []
    running: Counter[str] = Counter()
    reclaims = []
    for i in range(draw(st.integers(0, 25))):
        status = draw(st.sampled_from(STATUSES))
        if status is TaskStatus.RUNNING:
            assignee = draw(st.sampled_from(names))
            running[assignee] += 1
            if draw(st.booleans()):
                kind = draw(st.sampled_from(list(ReclaimKind)))
                reclaims.append(ReclaimView(f"t{i}", f"run-{i}", assignee, kind))
        else:
            assignee = draw(st.sampled_from([*names, "", "", "ghost"]))
        waiting = (
            tuple(draw(st.lists(st.sampled_from(["x1", "x2"]), max_size=2, unique=True)))
            if status is TaskStatus.TODO
            else ()
        )
        tasks.append(
            task(
                f"t{i}",
                assignee,
                status=status,
                priority=draw(st.integers(0, 2)),
                age=draw(st.integers(0, 5)),
                waiting_on=waiting,
                failure_count=draw(st.integers(0, 3)),
                breaker_open=status is TaskStatus.BLOCKED and draw(st.booleans()),
                next_attempt_time=draw(st.sampled_from(RETRY_AT))
                if status is TaskStatus.READY
                else None,
            )
        )
    for name in names:
        running[name] += draw(st.integers(0, 2))  # runs of external workers, or older
    planner = PlannerSettings(
        default_assignee=draw(st.sampled_from([None, *names, "ghost"])),
        max_in_progress=draw(st.sampled_from([None, 1, 2, 4, 8])),
        max_in_progress_per_profile=draw(st.sampled_from([None, 1, 2, 3])),
        failure_limit=draw(st.integers(1, 3)),
    )
    max_spawn = draw(st.sampled_from([None, 1, 2, 3]))
    snapshot = Snapshot(
        tasks=tuple(tasks),
        profiles=profs,
        running=dict(running),
        reclaims=tuple(reclaims),
        now=draw(st.sampled_from([None, NOW])),
        sandbox_backend=draw(st.sampled_from([None, None, DOWN])),
    )
    return snapshot, planner, max_spawn


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cap(profile: ProfileView, planner: PlannerSettings) -> int | None:
    return (
        profile.max_in_progress
        if profile.max_in_progress > 0
        else (planner.max_in_progress_per_profile)
    )


def _verdicts(result: Plan) -> Counter[str]:
    ids: Counter[str] = Counter()
    ids.update(r.task_id for r in result.spawned)
    ids.update(result.skipped_unassigned)
    ids.update(r.task_id for r in result.skipped_nonspawnable)
    ids.update(r.task_id for r in result.skipped_per_profile_capped)
    ids.update(r.task_id for r in result.awaiting_worker)
    ids.update(r.task_id for r in result.auto_blocked)
    ids.update(r.task_id for r in result.backing_off)
    ids.update(r.task_id for r in result.backend_paused)
    ids.update(result.not_considered)
    return ids


@FAST
@given(boards(), st.randoms(use_true_random=False))
def test_plan_is_deterministic_and_ignores_row_order(
    board: tuple[Snapshot, PlannerSettings, int | None], rnd: random.Random
) -> None:
    snapshot, planner, max_spawn = board
    first = plan(snapshot, settings=planner, max_spawn=max_spawn)
    assert plan(snapshot, settings=planner, max_spawn=max_spawn) == first
    shuffled = list(snapshot.tasks)
    rnd.shuffle(shuffled)
    reclaims = list(snapshot.reclaims)
    rnd.shuffle(reclaims)
    other = replace(snapshot, tasks=tuple(shuffled), reclaims=tuple(reclaims))
    assert plan(other, settings=planner, max_spawn=max_spawn) == first


@FAST
@given(boards())
def test_every_task_gets_one_verdict_and_a_readiness(
    board: tuple[Snapshot, PlannerSettings, int | None],
) -> None:
    snapshot, planner, max_spawn = board
    result = plan(snapshot, settings=planner, max_spawn=max_spawn)
    assert set(result.readiness) == {t.task_id for t in snapshot.tasks}
    reclaimed = {r.task_id for r in snapshot.reclaims}
    walked = {
        t.task_id
        for t in snapshot.tasks
        if t.status is TaskStatus.READY
        or (t.status is TaskStatus.TODO and not t.waiting_on)
        or t.task_id in reclaimed
    }
    verdicts = _verdicts(result)
    assert set(verdicts) == walked
    assert all(count == 1 for count in verdicts.values())
    for spawned in result.spawned:
        assert snapshot.profiles[spawned.assignee].executor is ExecutorKind.SANDBOX
    if snapshot.sandbox_backend is not None:
        assert result.spawned == [] and result.backend_unavailable
    for ref in result.backend_paused:
        assert snapshot.profiles[ref.assignee].executor is ExecutorKind.SANDBOX
    if max_spawn is not None:
        assert len(result.spawned) <= max_spawn


@FAST
@given(boards())
def test_applying_a_plan_never_takes_a_profile_past_its_cap(
    board: tuple[Snapshot, PlannerSettings, int | None],
) -> None:
    snapshot, planner, max_spawn = board
    result = plan(snapshot, settings=planner, max_spawn=max_spawn)
    before = Counter(snapshot.running)
    before.subtract(Counter(r.profile for r in snapshot.reclaims))
    after = apply(snapshot, result)
    for name, profile in snapshot.profiles.items():
        cap = _cap(profile, planner)
        if cap is not None:
            assert after.running.get(name, 0) <= max(cap, before[name])
    if planner.max_in_progress is not None:
        assert after.running_total <= max(planner.max_in_progress, sum(before.values()))


@FAST
@given(boards())
def test_a_board_the_plan_was_applied_to_has_nothing_left_to_do(
    board: tuple[Snapshot, PlannerSettings, int | None],
) -> None:
    snapshot, planner, _ = board
    result = plan(snapshot, settings=planner, max_spawn=None)
    again = plan(apply(snapshot, result), settings=planner, max_spawn=None)
    assert again.spawned == []
    assert again.promoted == []
    assert again.auto_assigned_default == []
    assert again.auto_blocked == []
    assert again.reclaimed == again.crashed == []


@FAST
@given(boards())
def test_ticks_limited_by_max_spawn_add_up_to_one_unlimited_tick(
    board: tuple[Snapshot, PlannerSettings, int | None],
) -> None:
    snapshot, planner, max_spawn = board
    unlimited = plan(snapshot, settings=planner, max_spawn=None)
    spawned: list[str] = []
    state = snapshot
    for _ in range(30):
        step = plan(state, settings=planner, max_spawn=max_spawn or 1)
        if not step.spawned and not step.promoted and not step.auto_blocked:
            break
        spawned.extend(r.task_id for r in step.spawned)
        state = apply(state, step)
    assert spawned == [r.task_id for r in unlimited.spawned]
