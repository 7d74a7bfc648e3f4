"""WatchEvents' delivery rule: every committed event exactly once, in id order.

Writers of several replicas (several ``Database`` objects on one database)
append events concurrently through the store, holding their ids for a while
and sometimes rolling back; watchers follow the log with
``events.deliverable_events``. Without a global write lock a smaller id can
commit after a larger one; the watermark must never let a watcher move past
an id that is still to commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.kanban.commits import Commit
from services.kanban.db import Database, make_engine
from services.kanban.migrations import upgrade
from services.kanban.store import events

# One transaction: (events it appends, ms it holds its ids before the end, roll back?).
transaction = st.tuples(st.integers(1, 3), st.integers(0, 4), st.booleans())
writer = st.lists(transaction, min_size=1, max_size=5)
scenario = st.lists(writer, min_size=2, max_size=5)


class _Rollback(Exception):
    """Raised inside a write to roll it back."""


@pytest.fixture
def replicas(database_url: str) -> Iterator[list[Database]]:
    """Database handles on one migrated database: three on PostgreSQL, two on SQLite."""
    upgrade(database_url)
    count = 2 if database_url.startswith("sqlite") else 3
    dbs = [Database(make_engine(database_url, instrument=False)) for _ in range(count)]
    yield dbs
    for db in dbs:
        db.dispose()


def _append(db: Database, n: int) -> list[int]:
    with db.write() as s:
        rows = [
            events.append(s, task_id="t-watch", board_id="b", kind="noted", source="test")
            for _ in range(n)
        ]
        return [r.event_id for r in rows]


def test_every_event_is_delivered_once_and_in_order(replicas: list[Database]) -> None:
    changed = threading.Condition()

    def ring(_commit: Commit) -> None:
        with changed:
            changed.notify_all()

    for db in replicas:
        db.on_commit(ring)

    @settings(
        max_examples=6,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario)
    def check(plans: list[list[tuple[int, int, bool]]]) -> None:
        with replicas[0].read() as s:
            start = events.last_event_id(s)
        committed: list[int] = []
        lock = threading.Lock()
        done = threading.Event()
        failures: list[BaseException] = []

        def write(i: int, plan: list[tuple[int, int, bool]]) -> None:
            db = replicas[i % len(replicas)]
            try:
                for n, hold_ms, rollback in plan:
                    try:
                        with db.write() as s:
                            rows = [
                                events.append(
                                    s, task_id=f"t{i}", board_id="b", kind="noted", source="test"
                                )
                                for _ in range(n)
                            ]
                            ids = [r.event_id for r in rows]
                            # Hold the ids while other writers commit larger ones.
                            time.sleep(hold_ms / 1000)
                            if rollback:
                                raise _Rollback
                    except _Rollback:
                        continue
                    with lock:
                        committed.extend(ids)
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        seen: dict[int, list[int]] = {k: [] for k in range(len(replicas))}

        def watch(k: int) -> None:
            db = replicas[k]
            cursor = start
            try:
                while True:
                    finished = done.is_set()  # read before the log: then nothing is missed
                    with db.read() as s:
                        batch = [
                            e.event_id
                            for e in events.deliverable_events(s, after_event_id=cursor, limit=50)
                        ]
                    seen[k].extend(batch)
                    if batch:
                        cursor = batch[-1]
                        continue
                    with lock:
                        target = max(committed, default=start)
                    if finished and cursor >= target:
                        return
                    with changed:
                        # A rollback rings nothing, and a writer of another
                        # replica may end the wait for a held id: look again soon.
                        changed.wait(0.02)
            except BaseException as exc:
                failures.append(exc)

        writers = [threading.Thread(target=write, args=(i, p)) for i, p in enumerate(plans)]
        watchers = [threading.Thread(target=watch, args=(k,)) for k in seen]
        for t in (*watchers, *writers):
            t.start()
        for t in writers:
            t.join()
        done.set()
        for t in watchers:
            t.join(60)
        assert not failures, failures
        assert not any(t.is_alive() for t in watchers), "a watcher never caught up"
        for ids in seen.values():
            assert ids == sorted(set(ids)), "delivered out of order or twice"
            assert ids == sorted(committed), "an event was lost or a rolled-back id appeared"

    check()


def test_a_held_smaller_id_holds_back_larger_committed_ids(database_url: str) -> None:
    """PostgreSQL: id 1 still open, id 2 committed: nothing is deliverable until 1 ends."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer: ids commit in order")
    upgrade(database_url)
    a = Database(make_engine(database_url, instrument=False))
    b = Database(make_engine(database_url, instrument=False))
    watcher = Database(make_engine(database_url, instrument=False))
    try:
        with a.write() as held:
            first = events.append(held, task_id="t1", board_id="b", kind="noted", source="a")
            second = _append(b, 1)[0]
            assert second > first.event_id
            with watcher.read() as s:
                assert events.deliverable_events(s, after_event_id=0, limit=10) == []
                # Not even after a second look: the holder of the smaller id is still open.
                assert events.deliverable_events(s, after_event_id=0, limit=10) == []
        with watcher.read() as s:
            ids = [e.event_id for e in events.deliverable_events(s, after_event_id=0, limit=10)]
        assert ids == [first.event_id, second]
    finally:
        for db in (a, b, watcher):
            db.dispose()
