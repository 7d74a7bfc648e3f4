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
