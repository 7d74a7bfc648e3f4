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
        # One lock for the belief and the engine's pause/unpause calls: an
        # idle pause checks "not busy" and pauses under it, and a use marks
        # itself busy before ensure_running takes it, so a use never finds
        # the sandbox paused behind its back (see pause_if_idle).
        self._lock = threading.Lock()
        self._paused: set[str] = set()

    def is_paused(self, cid: str) -> bool:
        """Whether the manager believes the sandbox paused."""
        with self._lock:
            return cid in self._paused

    def observe(self, cid: str, state: str) -> None:
        """Records the state an inspect or list reported."""
        with self._lock:
            if state == "paused":
                self._paused.add(cid)
            else:
                self._paused.discard(cid)

    def forget(self, cid: str) -> None:
        """Drops the belief about a sandbox that is going away."""
        with self._lock:
            self._paused.discard(cid)

    def pause(self, cid: str) -> None:
        """Freezes a running sandbox; pausing a paused one is not an error.

        Raises:
            FailedPrecondition: The sandbox is not running.
            NotFound: The sandbox is gone.
        """
        with self._lock:
            self._pause_locked(cid)

    def resume(self, cid: str) -> bool:
        """Thaws a paused sandbox; returns whether it was paused.

        Raises:
            FailedPrecondition: The engine refused (e.g. the sandbox stopped).
            NotFound: The sandbox is gone.
        """
        with self._lock:
            return self._resume_locked(cid)

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
            log.info("resuming a paused sandbox for a call", extra={"sandbox_id": cid})
            return self._resume_locked(cid)

    def pause_if_idle(self, cid: str, still_idle: Callable[[], bool]) -> bool:
        """Pauses the sandbox if ``still_idle()`` holds under the lock; returns whether it did.

        The idle sweep decided on a snapshot of the sandbox's use; a call may
        have started since. Checking again under the lock every use takes
        (after marking itself busy) closes that window.
        """
        with self._lock:
            if cid in self._paused or not still_idle():
                return False
            self._pause_locked(cid)
            return True

    def _pause_locked(self, cid: str) -> None:
        try:
            with engine_call("containers.pause", resource=f"sandbox {cid!r}", sandbox_id=cid):
                self._manager.api.pause(cid)
        except FailedPrecondition as exc:
            if "already paused" not in explain(exc).lower():
                raise
        self._paused.add(cid)

    def _resume_locked(self, cid: str) -> bool:
        try:
            with engine_call("containers.unpause", resource=f"sandbox {cid!r}", sandbox_id=cid):
                self._manager.api.unpause(cid)
        except FailedPrecondition as exc:
            # Resumed meanwhile by someone else: what the caller wanted.
            if "not paused" not in explain(exc).lower():
                raise
            self._paused.discard(cid)
            return False
        self._paused.discard(cid)
        return True
