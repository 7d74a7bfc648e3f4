"""The in-memory planning benchmark, for ``bench/kanban.py`` and the speed test.

``bench_plan_in_memory()`` times ``plan()`` on the benchmark board (10,000
ready tasks over 50 sandbox profiles, cap 2) with no database: the floor a
real tick's latency is compared against.
"""

from __future__ import annotations

from bench.timing import Stats, measure
from services.kanban.planner import plan, planner_settings
from tests.unit.kanban_planner.snapshots import big_snapshot


def bench_plan_in_memory(
    *, repeat: int = 20, n_tasks: int = 10_000, n_profiles: int = 50, cap: int = 2
) -> Stats:
    """Median (etc.) milliseconds of one ``plan()`` over the benchmark board.

    Args:
        repeat: Timed runs (after two warm-up runs).
        n_tasks: Ready tasks on the board.
        n_profiles: Sandbox profiles the tasks are spread over.
        cap: ``kanban.max_in_progress_per_profile``.

    Returns:
        Timing statistics in milliseconds.
    """
    snapshot = big_snapshot(n_tasks, n_profiles)
    settings = planner_settings(max_in_progress_per_profile=cap)
    expected = n_profiles * cap
    result = plan(snapshot, settings=settings)
    if len(result.spawned) != expected:
        raise AssertionError(f"spawned {len(result.spawned)}, expected {expected}")
    return measure(lambda: plan(snapshot, settings=settings), repeat=repeat, warmup=2)
