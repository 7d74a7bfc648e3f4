"""ClaimLanes: a poll between attempts goes back to its lane unless its own profile was rung."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from services.kanban import claim_lanes
from services.kanban.claim_lanes import ClaimLanes
from services.kanban.commits import WILDCARD, Commit


class _Bus:
    """What ClaimLanes uses of the event bus: ring listeners, closed, bind."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[Commit], None]] = []
        self.closed = False

    def on_ring(self, listener: Callable[[Commit], None]) -> None:
        self.listeners.append(listener)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def ring(self, *profiles: str, events: bool = True) -> None:
        for listener in self.listeners:
            listener(Commit(added_events=events, profiles=frozenset(profiles)))


async def _nothing(profile: str, board: str, most: int) -> tuple[int, float | None]:
    return 0, None


def _lanes(bus: _Bus, *, global_cap: bool = False) -> ClaimLanes:
    return ClaimLanes(bus, _nothing, recheck_seconds=30, global_cap=global_cap)  # type: ignore[arg-type]


def _wait(lanes: ClaimLanes, profile: str, seen: tuple[int, int]) -> bool:
    async def go() -> bool:
        return await lanes.wait(profile, "", 0.2, seen=seen)

    return asyncio.run(go())


def test_a_ring_of_another_profile_during_the_attempt_sends_the_poll_back_to_wait() -> None:
    bus = _Bus()
    lanes = _lanes(bus)
    seen = lanes.rings_of("a")
    bus.ring("b")  # while a's attempt ran
    assert _wait(lanes, "a", seen) is False  # waited, and timed out


def test_a_ring_of_its_own_profile_during_the_attempt_returns_at_once() -> None:
    bus = _Bus()
    lanes = _lanes(bus)
    seen = lanes.rings_of("a")
    bus.ring("b", "a")
    assert _wait(lanes, "a", seen) is True


@pytest.mark.parametrize(
    ("ring", "global_cap"),
    [((WILDCARD,), False), (("b",), True)],
    ids=["wildcard", "any event under a global cap"],
)
def test_rings_that_touch_every_profile_return_at_once(
    ring: tuple[str, ...], global_cap: bool
) -> None:
    bus = _Bus()
    lanes = _lanes(bus, global_cap=global_cap)
    seen = lanes.rings_of("a")
    bus.ring(*ring)
    assert _wait(lanes, "a", seen) is True


def test_the_count_of_names_is_bounded_and_no_mark_survives_the_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(claim_lanes, "MAX_RING_NAMES", 3)
    bus = _Bus()
    lanes = _lanes(bus)
    seen = lanes.rings_of("a")
    for name in ("x", "y", "z", "w"):  # the fourth name starts a new epoch
        bus.ring(name)
    assert len(lanes._rings) <= 3
    assert lanes.rings_of("a") != seen
    assert _wait(lanes, "a", seen) is True


def _joinable_after_one_read(
    answer: object, ring: tuple[str, ...] = (), joins_during_read: int = 0
) -> bool:
    """Polls wait (their lane reads once with ``answer``); is the lane joinable then?

    ``joins_during_read`` polls arrive while the read runs, so the lane
    holds more polls than the read asked about.
    """
    reading = asyncio.Event()

    async def count(profile: str, board: str, most: int) -> tuple[int, float | None]:
        reading.set()
        for _ in range(10):  # the joiners arrive now
            await asyncio.sleep(0)
        if isinstance(answer, Exception):
            raise answer
        return min(most, int(answer)), None  # type: ignore[call-overload]

    async def go() -> bool:
        bus = _Bus()
        lanes = ClaimLanes(bus, count, recheck_seconds=30, global_cap=False)  # type: ignore[arg-type]

        def poll() -> asyncio.Task[bool]:
            return asyncio.create_task(lanes.wait("a", "", 5, seen=lanes.rings_of("a")))

        polls = [poll()]
        await reading.wait()
        polls += [poll() for _ in range(joins_during_read)]
        for _ in range(40):  # let the read end and the wake-ups land
            await asyncio.sleep(0)
        if ring:
            bus.ring(*ring)
        joinable = lanes.joinable("a", "") is not None
        for p in polls:
            p.cancel()
        return joinable

    return asyncio.run(go())


def test_a_lane_is_joinable_only_while_its_last_read_found_less_work_than_polls() -> None:
    assert _joinable_after_one_read(0) is True  # nothing for one more poll
    assert _joinable_after_one_read(0, ring=("b",)) is True  # another profile's commit
    assert _joinable_after_one_read(0, ring=("a",)) is False  # its own: read again first
    # The read asked about one poll and found one task; a second poll joined
    # meanwhile: there may be a task for it too.
    assert _joinable_after_one_read(5, joins_during_read=1) is False
    assert _joinable_after_one_read(RuntimeError("db down")) is False  # nothing known
