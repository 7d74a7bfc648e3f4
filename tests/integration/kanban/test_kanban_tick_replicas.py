"""Two dispatchers on one database ticking at the same moment keep every cap exact.

Each replica ticks its own board, so the two plans want different tasks (no
compare-and-set on a task row can save the caps) but the same free slots:
caps count every board. The cap-domain locks make the second re-count and
spend only what is left. Runs are ended between rounds so slots free up and
the race repeats.
"""

from __future__ import annotations

import threading
from typing import Any

from longshore.kanban.v1 import board_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from sqlalchemy import create_engine, text

from services.kanban.db import normalize_url
from services.kanban.executor import Outcome, OutcomeKind

PROFILES = ["pa", "pb", "pc"]
CAP = 2
GLOBAL_CAP = 5
BOARDS = ["x", "y"]


def _running(url: str) -> tuple[dict[str, int], int, list[str]]:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            per_profile = dict(
                conn.execute(
                    text(
                        "SELECT profile, count(*) FROM task_runs"
                        " WHERE status = 'running' GROUP BY profile"
                    )
                ).all()
            )
            twice = conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT task_id FROM task_runs"
                    " WHERE status = 'running' GROUP BY task_id HAVING count(*) > 1) AS d"
                )
            ).scalar_one()
            running = list(
                conn.execute(
                    text("SELECT run_id FROM task_runs WHERE status = 'running' ORDER BY run_id")
                ).scalars()
            )
    finally:
        engine.dispose()
    return {str(k): int(v) for k, v in per_profile.items()}, int(twice), running


def test_simultaneous_ticks_of_two_replicas_keep_caps_exact(kanban_factory: Any) -> None:
    a = kanban_factory(max_in_progress=str(GLOBAL_CAP))
    b = kanban_factory(max_in_progress=str(GLOBAL_CAP))
    for name in PROFILES:
        a.profile(name, "sandbox", cap=CAP)
    for board in BOARDS:
        a.stub.CreateBoard(pb.CreateBoardRequest(board=board_pb2.Board(board_id=board)), timeout=10)
    for i in range(48):
        a.task(f"t{i}", assignee=PROFILES[i % len(PROFILES)], board_id=BOARDS[i % 2])
    for _ in range(6):
        start = threading.Barrier(2)

        def tick(k: Any, board: str) -> None:
            start.wait()
            k.app.dispatcher.tick(board_id=board)

        threads = [
            threading.Thread(target=tick, args=(k, board)) for k, board in zip((a, b), BOARDS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        per_profile, twice, running = _running(a.url)
        assert twice == 0
        assert all(n <= CAP for n in per_profile.values()), per_profile
        assert sum(per_profile.values()) == GLOBAL_CAP, per_profile  # full, never over
        # End two runs so the next round races for the freed slots.
        for run_id in running[:2]:
            a.app.dispatcher.sink.finished(run_id, Outcome(OutcomeKind.SUCCEEDED))
    spawned = len(a.executor.jobs) + len(b.executor.jobs)
    assert spawned == GLOBAL_CAP + 2 * 5  # every freed slot was spent again, once
