"""Reaper decisions with an injected clock, sweeps over a fake engine, the startup guard."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from services.sandbox.reaper import (
    Candidate,
    ReaperLoop,
    StartupGuard,
    default_max_age,
    idle_action,
    judge,
    parse_docker_time,
    sweep,
)

NOW = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-01-02T11:00:00Z", datetime(2026, 1, 2, 11, 0, tzinfo=UTC)),
        ("2026-01-02T11:00:00.123456789Z", datetime(2026, 1, 2, 11, 0, 0, 123456, tzinfo=UTC)),
        ("2026-01-02T11:00:00.5Z", datetime(2026, 1, 2, 11, 0, 0, 500000, tzinfo=UTC)),
        ("2026-01-02T13:00:00.000000001+02:00", datetime(2026, 1, 2, 11, 0, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        ("yesterday", None),
        ("2026-13-40T99:00:00Z", None),
        ("2026-01-02T11:00:00.Z", None),
    ],
)
def test_parse_docker_time(raw: str, expected: datetime | None) -> None:
    assert parse_docker_time(raw) == expected


def test_max_age_floors_lifetime_at_a_minute() -> None:
    assert default_max_age(300) == timedelta(minutes=10)
    assert default_max_age(0) == default_max_age(10) == timedelta(minutes=2)


def test_judge() -> None:
    age = timedelta(minutes=10)
    old = (NOW - timedelta(hours=2, minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    young = (NOW - timedelta(minutes=3)).isoformat()
    assert judge("exited", old, NOW, age) == (True, "finished 2h ago > max age 10m")
    assert judge("exited", young, NOW, age)[0] is False
    assert judge("exited", "0001-01-01T00:00:00Z", NOW, age)[0] is False
    assert "unparseable" in judge("exited", "garbage", NOW, age)[1]
    assert judge("running", old, NOW, age) == (False, "state is running, not exited")


class FakeEngine:
    """Candidates with canned finish times; removal of some ids fails."""

    def __init__(self, finished: dict[str, str], failing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.finished = finished
        self.failing = failing
        self.removed: list[str] = []
        self.calls = 0
        self.unreachable = False

    def list_candidates(self, *, profile: str = "", status: str = "exited") -> list[Candidate]:
        self.calls += 1
        if self.unreachable:
            raise ConnectionError("engine down")
        return [Candidate(cid, f"n-{cid}", {"io.longshore.profile": "p"}) for cid in self.finished]

    def times(self, cid: str) -> tuple[str, str, str]:
        return "exited", "", self.finished[cid]

    def remove_exited(self, cid: str) -> None:
        if cid in self.failing:
            raise RuntimeError("device busy")
        self.removed.append(cid)


OLD = "2026-01-01T00:00:00.000000001Z"


def test_sweep_removes_old_spares_the_rest_and_survives_failures() -> None:
    engine = FakeEngine(
        {"a": OLD, "b": OLD, "c": "0001-01-01T00:00:00Z", "d": "nonsense", "e": NOW.isoformat()},
        failing={"a"},
    )
    report = sweep(engine, now=NOW, max_age=timedelta(minutes=2))
    assert [d.candidate.sandbox_id for d in report.removed] == ["b"]
    assert [d.candidate.sandbox_id for d in report.failed] == ["a"]
    assert "removal failed: device busy" in report.failed[0].reason
    assert {d.candidate.sandbox_id for d in report.spared} == {"c", "d", "e"}
    assert engine.removed == ["b"] and engine.calls == 1


def test_dry_run_removes_nothing_and_reports_each_candidate() -> None:
    engine = FakeEngine({"a": OLD, "c": "0001-01-01T00:00:00Z"})
    report = sweep(engine, now=NOW, max_age=timedelta(minutes=2), dry_run=True)
    assert engine.removed == [] and report.dry_run
    assert report.removed[0].reason.startswith("would remove: finished")
    assert "zero" in report.spared[0].reason


def test_unreachable_engine_is_an_error_report_not_an_exception() -> None:
    engine = FakeEngine({})
    engine.unreachable = True
    report = sweep(engine, now=NOW, max_age=timedelta(minutes=2))
    assert "engine down" in report.error and not report.removed


def test_idle_action() -> None:
    common = {
        "busy": False,
        "now": NOW,
        "lifetime_seconds": 300,
        "idle_stop_seconds": 0,
        "foreign_grace_seconds": 600,
    }
    ago = NOW - timedelta(seconds=400)
    assert idle_action(persist=False, reference=ago, seen_here=True, **common)[0] == "remove"  # type: ignore[arg-type]
    # Seen only as a start time: another manager may be using it, so more grace.
    assert idle_action(persist=False, reference=ago, seen_here=False, **common)[0] == "keep"  # type: ignore[arg-type]
    assert idle_action(persist=True, reference=ago, seen_here=True, **common) == (
        "keep",
        "idle stop disabled",
    )  # type: ignore[arg-type]
    stop = {**common, "idle_stop_seconds": 60}
    assert idle_action(persist=True, reference=ago, seen_here=True, **stop)[0] == "stop"  # type: ignore[arg-type]
    busy = {**stop, "busy": True}
    assert idle_action(persist=True, reference=ago, seen_here=True, **busy)[0] == "keep"  # type: ignore[arg-type]
    assert idle_action(persist=False, reference=None, seen_here=False, **common)[0] == "keep"  # type: ignore[arg-type]


def test_startup_guard_lets_exactly_one_of_many_concurrent_starts_sweep() -> None:
    guard = StartupGuard()
    sweeps: list[datetime] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        loop = ReaperLoop(
            tick=lambda now: None,
            startup=sweeps.append,
            interval_seconds=3600,
            clock=lambda: NOW,
            guard=guard,
        )
        barrier.wait()
        loop.startup_once()

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sweeps == [NOW]


def test_a_failing_round_does_not_kill_the_loop() -> None:
    ran = threading.Event()
    calls: list[int] = []

    def tick(now: datetime) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        ran.set()

    loop = ReaperLoop(
        tick=tick, startup=tick, interval_seconds=0.01, clock=lambda: NOW, guard=StartupGuard()
    )
    loop.start()
    try:
        assert ran.wait(5)
    finally:
        loop.stop()
