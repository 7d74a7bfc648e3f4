"""Pausing and resuming sandboxes, and the manager's belief of which are paused.

A pause is the engine's ``containers.pause`` (the cgroup freezer): processes
keep their memory and stop using CPU. Every call that needs a running sandbox
resumes a paused one first through :meth:`Pauses.ensure_running`, which costs
a set lookup when the sandbox is believed running. The belief is updated by
this manager's own pauses and resumes and by every inspect the manager makes
(:meth:`Pauses.observe`), so a sandbox paused by someone else is resumed the
next time the manager inspects it (a file call, an uncached id, an acquire).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from services.runtime.errors import FailedPrecondition
from services.sandbox.docker_client import engine_call, explain

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager

log = logging.getLogger(__name__)


class Pauses:
    """Pauses and resumes one manager's sandboxes.

    Args:
        manager: The manager whose engine client is used.
    """

    def __init__(self, manager: SandboxManager) -> None:
        self._manager = manager
        # Guards the belief only, never held over an engine call, so a resume
        # of one sandbox never waits for the engine's answer about another.
        self._lock = threading.Lock()
        self._paused: set[str] = set()
        # One lock per sandbox orders its pause and unpause calls, so a use
        # that finds it (being) paused waits for the pause, then resumes it.
        self._sandbox_locks: dict[str, threading.Lock] = {}

    def is_paused(self, cid: str) -> bool:
        """Whether the manager believes the sandbox paused."""
        with self._lock:
            return cid in self._paused

    def observe(self, cid: str, state: str) -> None:
        """Records the state an inspect reported."""
        with self._lock:
            if state == "paused":
                self._paused.add(cid)
            else:
                self._paused.discard(cid)

    def forget(self, cid: str) -> None:
        """Drops the belief about a sandbox that is going away."""
        with self._lock:
            self._paused.discard(cid)
            self._sandbox_locks.pop(cid, None)

    def pause(self, cid: str) -> None:
        """Freezes a running sandbox; pausing a paused one is not an error.

        Raises:
            FailedPrecondition: The sandbox is not running.
            NotFound: The sandbox is gone.
        """
        with self._sandbox_lock(cid):
            self._claim_and_pause(cid)

    def resume(self, cid: str) -> bool:
        """Thaws a paused sandbox; returns whether it was paused.

        Raises:
            FailedPrecondition: The engine refused (e.g. the sandbox stopped).
            NotFound: The sandbox is gone.
        """
        with self._sandbox_lock(cid):
            return self._engine_resume(cid)

    def ensure_running(self, cid: str) -> bool:
        """Resumes the sandbox when it is believed paused; returns whether it resumed.

        No engine call when the belief says running: this runs on every use.

        Raises:
            FailedPrecondition: The engine refused the resume.
            NotFound: The sandbox is gone.
        """
        with self._lock:
            if cid not in self._paused:
                return False
        with self._sandbox_lock(cid):
            with self._lock:
                if cid not in self._paused:
                    return False  # resumed by another call while we waited
            log.info("resuming a paused sandbox for a call", extra={"sandbox_id": cid})
            return self._engine_resume(cid)

    def pause_if_idle(self, cid: str, still_idle: Callable[[], bool]) -> bool:
        """Pauses the sandbox if ``still_idle()`` holds; returns whether it did.

        The idle sweep decided on a snapshot of the sandbox's use; a call may
        have begun since. A use marks itself busy, then asks ensure_running;
        here the check and the claim (the belief says paused before the
        engine call) happen under one lock, so either the check sees the use,
        or the use sees the claim, waits for the pause and resumes.
        """
        with self._sandbox_lock(cid):
            return self._claim_and_pause(cid, still_idle)

    def _sandbox_lock(self, cid: str) -> threading.Lock:
        with self._lock:
            return self._sandbox_locks.setdefault(cid, threading.Lock())

    def _claim_and_pause(self, cid: str, still_idle: Callable[[], bool] | None = None) -> bool:
        # The claim comes before the engine call, in the same hold of the
        # lock as the idle check: a use arriving after sees "paused", waits
        # on the sandbox's lock and resumes after.
        with self._lock:
            if still_idle is not None and (cid in self._paused or not still_idle()):
                return False
            self._paused.add(cid)
        try:
            self._engine_pause(cid)
        except BaseException:
            with self._lock:
                self._paused.discard(cid)
            raise
        return True

    def _engine_pause(self, cid: str) -> None:
        try:
            with engine_call("containers.pause", resource=f"sandbox {cid!r}", sandbox_id=cid):
                self._manager.api.pause(cid)
        except FailedPrecondition as exc:
            if "already paused" not in explain(exc).lower():
                raise

    def _engine_resume(self, cid: str) -> bool:
        try:
            with engine_call("containers.unpause", resource=f"sandbox {cid!r}", sandbox_id=cid):
                self._manager.api.unpause(cid)
        except FailedPrecondition as exc:
            # Resumed meanwhile by someone else: what the caller wanted.
            if "not paused" not in explain(exc).lower():
                raise
            resumed = False
        else:
            resumed = True
        with self._lock:
            self._paused.discard(cid)
        return resumed
