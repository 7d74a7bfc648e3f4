"""The planner is fast enough that the database, not planning, bounds a tick."""

from __future__ import annotations

from tests.unit.kanban_planner.bench_planner import bench_plan_in_memory


def test_plans_10000_ready_tasks_over_50_profiles_well_under_50_ms() -> None:
    stats = bench_plan_in_memory(repeat=15)
    # Seen here: ~11 ms median on a quiet machine. The machine running the
    # suite is shared (load averages above 10 on 2 cores were seen), so the
    # fastest run, which measures the code rather than the neighbours, is
    # held to the bound; the median gets a loose one.
    assert stats.min < 50.0, stats
    assert stats.median < 200.0, stats
