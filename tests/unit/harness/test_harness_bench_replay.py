"""The replica benchmark's checker finds each rule broken, and nothing in a clean log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.replay import replay, walk

RUNS = {
    "r1": ("t1", "p", "succeeded"),
    "r2": ("t2", "p", "succeeded"),
    "r3": ("t1", "p", "succeeded"),
}


def test_a_clean_log_passes_and_reports_the_peak() -> None:
    log = [
        (1, "t1", "r1", "claimed"),
        (2, "t2", "r2", "claimed"),
        (3, "t1", "r1", "completed"),
        (4, "t2", "r2", "completed"),
    ]
    out = walk(log, dict(list(RUNS.items())[:2]), {"p": 2})
    assert out.ok and out.as_dict()["max_running_any_profile"] == 2
    assert (out.overlapping, out.over_cap, out.completed_twice, out.unended) == (0, 0, 0, 0)


def test_two_open_runs_of_one_task_and_a_second_completion_are_found() -> None:
    log = [
        (1, "t1", "r1", "claimed"),
        (2, "t1", "r3", "claimed"),
        (3, "t1", "r1", "completed"),
        (4, "t1", "r3", "completed"),
    ]
    out = walk(log, RUNS, {"p": 0})
    assert not out.ok
    assert (out.overlapping, out.completed_twice, out.over_cap) == (1, 1, 0)
    assert "r3 opened while r1 open" in out.examples[0]


def test_a_run_past_the_cap_is_found_at_its_event() -> None:
    log = [(1, "t1", "r1", "spawned"), (2, "t2", "r2", "claimed"), (3, "t1", "r1", "failed")]
    out = walk(log, RUNS, {"p": 1})
    assert out.over_cap == 1 and not out.ok
    assert out.examples == ["event 2: p at 2 > cap 1"]


def test_a_finished_run_the_log_never_closed_is_counted_not_failed() -> None:
    out = walk([(1, "t1", "r1", "claimed")], {"r1": ("t1", "p", "succeeded")}, {})
    assert out.unended == 1 and out.ok


def test_replay_reads_the_tables_with_plain_sql(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE profiles (name TEXT, max_in_progress INTEGER);
            CREATE TABLE task_runs (run_id TEXT, task_id TEXT, profile TEXT, status TEXT);
            CREATE TABLE task_events (event_id INTEGER, task_id TEXT, run_id TEXT, kind TEXT);
            INSERT INTO profiles VALUES ('p', 1);
            INSERT INTO task_runs VALUES
                ('r1', 't1', 'p', 'succeeded'), ('r2', 't2', 'p', 'running');
            INSERT INTO task_events VALUES (1, 't1', '', 'created'), (2, 't1', 'r1', 'claimed'),
                (3, 't2', 'r2', 'claimed'), (4, 't1', 'r1', 'completed');
            """
        )
    out = replay(f"sqlite:///{path}")
    assert (out.events, out.runs, out.over_cap) == (3, 2, 1)
