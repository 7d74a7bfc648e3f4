"""store.claims: ``claimable`` is a pure read that agrees with ``claim_next``; the cap lock."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from services.kanban.store import claims, events, profiles


def _claimable(k: Any, profile: str) -> bool:
    db = k.app.db
    settings = k.app.dispatcher.limits.planner
    with db.read() as s:
        if db.is_postgres:
            # Any write in here would fail: the answer is a pure read.
            s.execute(text("SET TRANSACTION READ ONLY"))
        row = profiles.get(s, profile)
        return claims.claimable(s, row, "", k.app.dispatcher.now(), settings=settings)


def _claim(k: Any, profile: str) -> bool:
    with k.app.db.write() as s:
        row = profiles.get(s, profile)
        won = claims.claim_next(
            s,
            row,
            worker_id="w",
            board_id="",
            holder="tester",
            settings=k.app.dispatcher.limits.planner,
            lease_seconds=60,
            now=k.app.dispatcher.now(),
        )
        return won is not None


def test_claimable_answers_what_claim_next_would_do(kanban: Any) -> None:
    kanban.profile("ext", "external", cap=2)
    kanban.profile("lane", "none")
    assert not _claimable(kanban, "ext")  # nothing ready
    for i in range(3):
        kanban.task(f"t{i}", assignee="ext")
    kanban.task("h", assignee="lane")
    assert not _claimable(kanban, "lane")  # not a worker's profile
    before = len(kanban.events())
    assert _claimable(kanban, "ext")
    assert len(kanban.events()) == before  # asking wrote nothing
    assert _claim(kanban, "ext")
    assert _claimable(kanban, "ext")
    assert _claim(kanban, "ext")
    # At its cap of 2 with one task still ready: neither answers yes.
    assert not _claimable(kanban, "ext")
    assert not _claim(kanban, "ext")


def test_the_cap_lock_enters_the_event_gate_in_the_same_round_trip(kanban: Any) -> None:
    """On PostgreSQL a claim's cap lock also takes the shared event gate, before its events."""
    db = kanban.app.db
    if not db.is_postgres:
        pytest.skip("SQLite: one writer, no locks to take")
    with db.write() as s:
        claims.lock_cap_domains(s, ["ext"], global_cap=False)
        assert s.info.get(events.ADDED_EVENTS) is True
        held = s.execute(
            text(
                "SELECT classid, mode FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid() AND granted"
            )
        ).all()
        assert (events.EVENT_GATE_CLASS, "ShareLock") in {(c, m) for c, m in held}
        assert (claims.PROFILE_LOCK_CLASS, "ExclusiveLock") in {(c, m) for c, m in held}
