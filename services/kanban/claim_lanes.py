"""Idle ClaimTask long polls, grouped in lanes by (profile, board).

A held poll is a future in its lane, on the aio server's loop. When a commit
touches the lane's profile (:meth:`Commit.touches_profile`), the lane makes
*one* claimability read, however many polls wait in it, and wakes only as
many polls as there are tasks to claim (oldest first); the woken ones then
try to claim in a write transaction. So 10,000 idle polls cost nothing per
unrelated commit, and one read per lane per related one, never a read (let
alone a write) per poll. A poll arriving at a lane whose last read found less
work than it had polls joins it without a read of its own (:meth:`joinable`),
so renewing a held poll costs no transaction either.

A task whose retry backoff ends becomes claimable without any commit, so the
read also says when the lane's earliest backoff ends, and the lane reads
again then. Each lane also re-reads every ``recheck_seconds`` while polls
wait in it: on SQLite another process's commits ring nobody here (1 s), and
with LISTEN/NOTIFY it is only a safety net (30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from services.kanban.commits import WILDCARD, Commit
from services.kanban.events_bus import EventBus

log = logging.getLogger(__name__)

#: ``count(profile, board_id, most)``: how many of ``most`` polls may claim now,
#: and in how many seconds the lane's earliest backoff ends (None: no backoff).
Count = Callable[[str, str, int], Awaitable[tuple[int, float | None]]]
#: Most profile names whose rings are counted one by one (see ``ClaimLanes``).
MAX_RING_NAMES = 10_000
#: Least delay of a lane's read for a backoff that ends (coalesces near ones).
MIN_DUE_SECONDS = 0.05


class _Lane:
    """The polls waiting for one (profile, board) (touched on the loop only)."""

    __slots__ = (
        "again",
        "board",
        "checking",
        "live",
        "next_read",
        "profile",
        "read_mark",
        "tick",
        "ticker",
        "waiters",
    )

    def __init__(self, profile: str, board: str) -> None:
        self.profile = profile
        self.board = board
        # Oldest first. Polls that gave up stay until a wake-up pops them
        # (removing from the middle is O(n)); ``live`` counts the others.
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.live = 0
        self.checking = False
        self.again = False
        self.ticker: asyncio.Task[None] | None = None
        #: Loop time of the lane's next read without a ring.
        self.next_read = 0.0
        #: The profile's ring mark taken before the last read, when that read
        #: found less work than polls (so none left for a newcomer); else None.
        self.read_mark: tuple[int, int] | None = None
        self.tick = asyncio.Event()


class ClaimLanes:
    """Where idle ClaimTask polls wait, and the reads that decide whom to wake.

    Args:
        bus: Rings the lanes with every commit (and once at close).
        count: The claimability read (runs in the handler pool).
        recheck_seconds: Period of each waiting lane's read without a ring.
        global_cap: A global ``max_in_progress`` is set: a run that ends
            anywhere may free a slot for every profile, so every commit that
            added events touches every lane.
    """

    def __init__(
        self, bus: EventBus, count: Count, *, recheck_seconds: float, global_cap: bool
    ) -> None:
        self._bus = bus
        self._count = count
        #: Period of a waiting lane's read without a ring (a test raises it to
        #: count only the reads that rings cause).
        self.recheck_seconds = recheck_seconds
        self._global_cap = global_cap
        self._lanes: dict[tuple[str, str], _Lane] = {}
        # Rings so far per profile, and those that touched every profile (a
        # wildcard, or any event under a global cap): see :meth:`rings_of`.
        # One entry per profile name a commit touched, and never more than
        # MAX_RING_NAMES: past it the counts restart under a new epoch.
        self._rings: dict[str, int] = {}
        self._everyone = 0
        bus.on_ring(self._on_ring)

    def rings_of(self, profile: str) -> tuple[int, int]:
        """A mark that moves with every ring touching ``profile`` (for :meth:`wait`'s ``seen``).

        Per profile: a poll whose attempt found nothing goes back to its lane
        unless a commit touching *its* profile landed meanwhile. With one
        count for all profiles, every commit of any profile sent every
        failed poll straight back to another attempt.
        """
        return self._everyone, self._rings.get(profile, 0)

    def joinable(self, profile: str, board_id: str) -> tuple[int, int] | None:
        """The mark under which a new poll may wait in its lane without its own first attempt.

        A lane whose last read found fewer claimable tasks than it had polls
        knows there is nothing for one more poll, until a commit touches its
        profile (the mark moves) or time ends a backoff (the lane reads
        again then). A new poll then joins the lane at once, as informed as
        the polls already waiting, instead of opening a read transaction of
        its own: under 10,000 idle polls, each renewed when its ``wait`` runs
        out, those reads were most of the service's work. None: attempt first.
        """
        lane = self._lanes.get((profile, board_id))
        if lane is None or lane.live == 0 or lane.checking or lane.read_mark is None:
            return None
        mark = self.rings_of(profile)
        return mark if lane.read_mark == mark else None

    def waiting(self) -> int:
        """Polls waiting now, in every lane."""
        return sum(lane.live for lane in self._lanes.values())

    async def wait(
        self, profile: str, board_id: str, timeout: float, *, seen: tuple[int, int]
    ) -> bool:
        """Wait in the lane until it may have work for this poll, or ``timeout``.

        Args:
            profile: The poll's profile.
            board_id: Its board filter ("" = any).
            timeout: Seconds to wait at most.
            seen: :meth:`rings_of` the profile, read before the poll's last
                claim attempt: a ring of the profile since then (while the
                poll was not in its lane) returns at once, so no wake-up is
                lost in that gap.

        Returns:
            True when woken (a claim may succeed), False on timeout.
        """
        if self.rings_of(profile) != seen or self._bus.closed:
            return True
        self._bus.bind(asyncio.get_running_loop())
        lane = self._lanes.get((profile, board_id))
        if lane is None:
            lane = self._lanes[(profile, board_id)] = _Lane(profile, board_id)
            lane.ticker = asyncio.get_running_loop().create_task(self._tick(lane))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.waiters.append(future)
        lane.live += 1
        if lane.live == 1 and not lane.checking:
            # A new lane (or one empty until now) reads once: it learns when
            # its earliest backoff ends, which no commit will announce.
            self._check_soon(lane)
        try:
            await asyncio.wait((future,), timeout=timeout)
        except asyncio.CancelledError:
            if future.done():
                # Woken, then the client went away: pass the wake-up on.
                self._check_soon(lane)
            raise
        finally:
            if not future.done():
                future.cancel()
                lane.live -= 1
            if lane.live == 0 and not lane.checking:
                self._drop(lane)
        return future.done() and not future.cancelled()

    def _on_ring(self, commit: Commit) -> None:
        if self._bus.closed:
            # Shutting down: every poll returns (empty) without a read.
            for lane in list(self._lanes.values()):
                self._wake(lane, lane.live)
            return
        everyone = (self._global_cap and commit.added_events) or WILDCARD in commit.profiles
        touched = [
            lane
            for lane in self._lanes.values()
            if everyone or commit.touches_profile(lane.profile)
        ]
        # Counted even when no lane is touched: the touched poll may be
        # between attempts, out of every lane (see :meth:`wait`).
        if everyone or len(self._rings) >= MAX_RING_NAMES:
            # A new epoch: every mark taken before it differs from now on, so
            # a poll between attempts tries once more (never one wake lost).
            self._everyone += 1
            if not everyone:
                self._rings.clear()
        if not everyone:
            for name in commit.profiles:
                self._rings[name] = self._rings.get(name, 0) + 1
        for lane in touched:
            self._check_soon(lane)

    def _check_soon(self, lane: _Lane) -> None:
        """Read the lane's claimability once more (coalesced with a read in flight)."""
        if lane.checking:
            # The read in flight may predate the commit: one more after it.
            lane.again = True
            return
        lane.checking = True
        asyncio.get_running_loop().create_task(self._check(lane))

    async def _check(self, lane: _Lane) -> None:
        try:
            while lane.live > 0:
                lane.again = False
                lane.read_mark = None
                due_in: float | None = None
                mark, most = self.rings_of(lane.profile), lane.live
                try:
                    ready, due_in = await self._count(lane.profile, lane.board, most)
                except Exception:
                    # The lane's next tick reads again; the polls keep waiting.
                    log.warning("claimability read failed", exc_info=True)
                else:
                    self._wake(lane, ready)
                    if ready < most:
                        # Nothing left for one more poll until the mark moves.
                        lane.read_mark = mark
                self._schedule(lane, due_in)
                if not lane.again:
                    break
        finally:
            lane.checking = False
            if lane.live == 0:
                self._drop(lane)

    def _wake(self, lane: _Lane, ready: int) -> None:
        """Wake the ``ready`` oldest polls still waiting in ``lane``."""
        while ready > 0 and lane.waiters:
            future = lane.waiters.popleft()
            if future.done():
                continue  # gave up already
            future.set_result(None)
            lane.live -= 1
            ready -= 1

    def _schedule(self, lane: _Lane, due_in: float | None) -> None:
        """Make the lane's next read without a ring at most ``due_in`` seconds away."""
        loop = asyncio.get_running_loop()
        delay = (
            self.recheck_seconds
            if due_in is None
            else max(MIN_DUE_SECONDS, min(due_in, self.recheck_seconds))
        )
        lane.next_read = loop.time() + delay
        lane.tick.set()  # the ticker sleeps again, up to the new time

    async def _tick(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        lane.next_read = loop.time() + self.recheck_seconds
        while True:
            lane.tick.clear()
            delay = lane.next_read - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.tick.wait(), delay)
                if lane.tick.is_set():
                    continue  # rescheduled: sleep up to the new time
            if lane.live == 0:
                return
            lane.next_read = loop.time() + self.recheck_seconds
            if len(lane.waiters) > 2 * lane.live + 64:
                # Shed the polls that gave up (timed out, cancelled).
                lane.waiters = deque(f for f in lane.waiters if not f.done())
            self._check_soon(lane)

    def _drop(self, lane: _Lane) -> None:
        key = (lane.profile, lane.board)
        if self._lanes.get(key) is lane:
            del self._lanes[key]
        if lane.ticker is not None and lane.ticker is not asyncio.current_task():
            lane.ticker.cancel()
        lane.ticker = None
