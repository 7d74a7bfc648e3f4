"""Sandbox leases: a deadline per sandbox, after which it is paused or removed.

A lease lives in the manager's memory: labels cannot change after a container
is created, and a lease changes on every extension. A manager that restarts
has no leases: its sandboxes run on without one (nothing is ever paused or
removed early) until a caller sets one again, which callers that extend
periodically do anyway; the idle rules (``sandbox.lifetime_seconds``,
``sandbox.pause_idle_after_seconds``, ``sandbox.idle_stop_seconds``) still
apply meanwhile. Setting a lease replaces the previous one (extend = call
again); a lease that expired is consumed: the paused sandbox has none until
it is set again.

Expiry is enforced by one timer thread that sleeps until the earliest
deadline (woken early when a lease is set or the manager closes), so a lease
ends within the engine call's time of its deadline rather than at the next
reaper tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from services.runtime.errors import NotFound, ServiceError

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager

log = logging.getLogger(__name__)

PAUSE = "pause"
REMOVE = "remove"
EXPIRY_ACTIONS = (PAUSE, REMOVE)
#: Longest the timer sleeps without looking again (a clock that jumps).
MAX_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Lease:
    """A sandbox's lease: when it ends and what happens then."""

    expire_time: datetime
    on_expiry: str


class Leases:
    """The leases of one manager's sandboxes and their expiry timer.

    Args:
        manager: The manager that pauses or removes expired sandboxes.
        clock: Wall clock (the manager's, injectable for tests).
        timer: Whether a thread enforces expiry by itself; tests that
            drive :meth:`expire_due` with a fake clock pass False.
    """

    def __init__(
        self, manager: SandboxManager, clock: Callable[[], datetime], *, timer: bool = True
    ) -> None:
        self._manager = manager
        self._clock = clock
        self._timer = timer
        # Guards the leases and the thread's state; the timer waits on it.
        self._cond = threading.Condition()
        self._leases: dict[str, Lease] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def set(self, cid: str, ttl: timedelta, on_expiry: str) -> Lease:
        """Sets (or replaces) the sandbox's lease: it ends ``ttl`` from now."""
        lease = Lease(self._clock() + ttl, on_expiry)
        with self._cond:
            self._leases[cid] = lease
            if self._timer and self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="sandbox-leases", daemon=True
                )
                self._thread.start()
            # The new deadline may be earlier than the one the timer sleeps to.
            self._cond.notify_all()
        log.info(
            "sandbox lease set",
            extra={
                "sandbox_id": cid,
                "expire_time": lease.expire_time.isoformat(),
                "on_expiry": on_expiry,
            },
        )
        return lease

    def get(self, cid: str) -> Lease | None:
        """The sandbox's lease, if it has one."""
        with self._cond:
            return self._leases.get(cid)

    def drop(self, cid: str) -> None:
        """Forgets the lease of a sandbox that is going away."""
        with self._cond:
            self._leases.pop(cid, None)

    def expire_due(self, now: datetime) -> list[tuple[str, str]]:
        """Pauses or removes every sandbox whose lease ended by ``now``.

        Returns:
            (sandbox_id, action) for every lease that ended.
        """
        with self._cond:
            due = [(cid, lease) for cid, lease in self._leases.items() if lease.expire_time <= now]
            for cid, _lease in due:
                del self._leases[cid]
        done: list[tuple[str, str]] = []
        for cid, lease in due:
            try:
                if lease.on_expiry == REMOVE:
                    self._manager.schedule_removal(cid, reason="lease expired")
                else:
                    self._manager.pauses.pause(cid)
            except NotFound:
                continue  # removed meanwhile: nothing left to do
            except ServiceError as exc:
                # E.g. stopped meanwhile (nothing to pause): log, never retry
                # forever; the lease is consumed either way.
                log.warning(
                    "lease expiry: %s failed",
                    lease.on_expiry,
                    extra={"sandbox_id": cid, "error": exc.message},
                )
                continue
            log.info("lease expired", extra={"sandbox_id": cid, "action": lease.on_expiry})
            done.append((cid, lease.on_expiry))
        return done

    def close(self) -> None:
        """Stops the timer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(5)

    def _delay_locked(self) -> float | None:
        if not self._leases:
            return None
        earliest = min(lease.expire_time for lease in self._leases.values())
        return (earliest - self._clock()).total_seconds()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    delay = self._delay_locked()
                    if delay is not None and delay <= 0:
                        break
                    self._cond.wait(
                        MAX_WAIT_SECONDS if delay is None else min(delay, MAX_WAIT_SECONDS)
                    )
                if self._closed:
                    return
            try:
                self.expire_due(self._clock())
            except Exception:  # the timer must outlive one bad round
                log.exception("lease expiry round failed")
