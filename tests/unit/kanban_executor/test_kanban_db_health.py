"""Kanban's database health: a real SQLite database, and a PostgreSQL nobody serves."""

from __future__ import annotations

import threading
from pathlib import Path

from services.kanban.db import Database, make_engine
from services.kanban.db_health import DatabaseHealth
from tests.support.net import free_port


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[bool, str]] = []
        self.changed = threading.Event()

    def __call__(self, serving: bool, detail: str) -> None:
        self.calls.append((serving, detail))
        self.changed.set()


def test_a_reachable_database_serves_and_an_unreachable_one_says_why(tmp_path: Path) -> None:
    recorder = Recorder()
    good = Database(make_engine(f"sqlite:///{tmp_path / 'k.db'}", instrument=False))
    health = DatabaseHealth(good, recorder, interval=60, timeout=5)
    assert health.probe_once() is None
    assert recorder.calls == [(True, "")]
    assert health.probe_once() is None
    assert recorder.calls == [(True, "")]  # only changes are reported
    good.dispose()

    # A PostgreSQL nobody listens for: connection refused.
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/kanban"
    bad = Database(make_engine(url, instrument=False))
    broken = DatabaseHealth(bad, recorder, interval=60, timeout=5)
    problem = broken.probe_once()
    assert problem is not None
    serving, detail = recorder.calls[-1]
    assert not serving and detail.startswith("database unreachable: ")
    # It travels as health metadata: one ASCII line, bounded.
    assert detail.isascii() and "\n" not in detail and len(detail) < 200
    broken.stop()
    bad.dispose()


def test_a_probe_that_hangs_is_bounded(tmp_path: Path) -> None:
    recorder = Recorder()
    db = Database(make_engine(f"sqlite:///{tmp_path / 'k.db'}", instrument=False))
    release = threading.Event()
    health = DatabaseHealth(db, recorder, interval=60, timeout=0.2)
    health._select_one = lambda: release.wait(30) and None  # type: ignore[method-assign]
    try:
        assert health.probe_once() == "SELECT 1 took longer than 0.2s"
        assert health.probe_once() == "a probe has not returned for over 0.2s"
        assert recorder.calls[-1][0] is False
    finally:
        release.set()
        health.stop()
        db.dispose()
