"""The sessions of every sandbox: open, find, close, list, expire.

Sessions live in this process's memory, at most
``sandbox.max_sessions_per_sandbox`` open per sandbox; each sandbox also
keeps its most recently ended ones (DEAD or CLOSED, at most
:data:`ENDED_KEPT`) so a caller can still learn why one ended. A background
thread closes sessions idle past their ``idle_timeout``. A manager restart
ends them all: their shells carry this manager's exec marker, which the next
manager ends with every other leftover exec (:mod:`services.sandbox.leftovers`).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from services.runtime.errors import FailedPrecondition, NotFound, ResourceExhausted, quote
from services.sandbox.sessions.command import CommandRun, Sink
from services.sandbox.sessions.deadlines import Deadlines
from services.sandbox.sessions.model import SessionCommand, SessionInfo
from services.sandbox.sessions.session import Session

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager

log = logging.getLogger(__name__)

#: Ended sessions a sandbox keeps for ListSessions and lookups.
ENDED_KEPT = 16
#: Longest wait between two idle sweeps, in seconds.
SWEEP_SECONDS = 1.0


def new_session_id() -> str:
    """``ses-`` and 16 hex characters."""
    return f"ses-{secrets.token_hex(8)}"


class Sessions:
    """Every session of this manager's sandboxes.

    Args:
        manager: The manager (its engine client, clock, owner and busy counts).
        sweeper: Whether a thread expires idle sessions by itself (tests
            drive :meth:`expire_idle` instead).
    """

    def __init__(self, manager: SandboxManager, *, sweeper: bool = True) -> None:
        self._manager = manager
        self._lock = threading.Lock()
        self._open: dict[str, dict[str, Session]] = {}
        self._opening: dict[str, int] = {}
        self._ended: dict[str, deque[SessionInfo]] = {}
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._sweeper_wanted = sweeper
        self._deadlines = Deadlines()

    def open(
        self,
        cid: str,
        *,
        shell: str,
        env: Mapping[str, str],
        workdir: str,
        idle_timeout: float,
    ) -> SessionInfo:
        """Starts a shell in a running sandbox and returns the READY session.

        Raises:
            ResourceExhausted: The sandbox has its maximum of open sessions.
            FailedPrecondition: The program is no working shell, or the
                sandbox is not running.
        """
        cap = self._manager.section.max_sessions_per_sandbox
        with self._lock:
            # The slot is taken before the shell starts (which takes a while),
            # so concurrent opens cannot overshoot the cap.
            # A closed session leaves the open ones only when its reader saw
            # the shell go; it no longer counts from the moment it is closed.
            alive = [s for s in self._open.get(cid, {}).values() if not s.ended]
            taken = len(alive) + self._opening.get(cid, 0)
            if taken >= cap:
                raise ResourceExhausted(
                    f"sandbox {cid[:12]!r} has {taken} open sessions, at most "
                    f"{cap} (sandbox.max_sessions_per_sandbox); close one first"
                )
            self._opening[cid] = self._opening.get(cid, 0) + 1
        self._ensure_sweeper()
        manager = self._manager
        session = Session(
            manager.api,
            cid,
            new_session_id(),
            shell=shell,
            env=env,
            workdir=workdir,
            idle_timeout=idle_timeout,
            owner=manager.owner,
            clock=manager.clock,
            on_use=lambda busy: self._use(cid, busy),
            on_end=self._ended_one,
            describe_death=lambda code: self._death_reason(cid, code),
            deadlines=self._deadlines,
        )
        try:
            session.open()
            with self._lock:
                self._open.setdefault(cid, {})[session.session_id] = session
        finally:
            with self._lock:
                self._opening[cid] -= 1
                if not self._opening[cid]:
                    del self._opening[cid]
        manager.touch(cid)
        log.info(
            "session opened",
            extra={"session_id": session.session_id, "sandbox_id": cid, "shell": shell},
        )
        return session.info()

    def run(
        self, cid: str, session_id: str, command: SessionCommand, sink: Sink
    ) -> tuple[Session, CommandRun]:
        """Starts a command in a session; its events go to ``sink``.

        Raises:
            NotFound: No such session in the sandbox.
            FailedPrecondition: The session is busy, DEAD or CLOSED.
        """
        session = self._live(cid, session_id)
        cap = command.max_output_bytes or self._manager.section.exec_max_output_bytes
        run = session.start(command, sink, max_output=cap)
        self._manager.touch(cid)
        return session, run

    def close(self, cid: str, session_id: str) -> SessionInfo:
        """Closes a session; a DEAD or CLOSED one is returned as it is.

        Raises:
            NotFound: No such session in the sandbox.
        """
        with self._lock:
            session = self._open.get(cid, {}).get(session_id)
        if session is None:
            return self._ended_info(cid, session_id)
        return session.close("closed by caller")

    def list(self, cid: str) -> list[SessionInfo]:
        """The sandbox's open sessions and its recently ended ones, newest first."""
        with self._lock:
            live = [s.info() for s in self._open.get(cid, {}).values()]
            ended = list(self._ended.get(cid, ()))
        ended_ids = {i.session_id for i in ended}
        rows = [i for i in live if i.session_id not in ended_ids] + ended
        return sorted(rows, key=lambda i: (i.create_time, i.session_id), reverse=True)

    def expire_idle(self, now: datetime) -> int:
        """Closes every session idle past its timeout; returns how many."""
        with self._lock:
            sessions = [s for per in self._open.values() for s in per.values()]
        expired = 0
        for session in sessions:
            idle = session.idle_for(now)
            if idle is not None and idle >= session.idle_timeout:
                session.close(f"idle for {_span(session.idle_timeout)}")
                expired += 1
        return expired

    def end_sandbox(self, cid: str, reason: str) -> None:
        """Ends every session of a sandbox that is going away."""
        with self._lock:
            sessions = list(self._open.get(cid, {}).values())
        for session in sessions:
            session.close(reason)

    def close_all(self) -> None:
        """At shutdown: ends every session and the sweeper."""
        self._stop.set()
        with self._lock:
            sessions = [s for per in self._open.values() for s in per.values()]
        for session in sessions:
            session.close("the sandbox manager shut down")
        self._deadlines.close()

    # ---- internals -----------------------------------------------------------------

    def _live(self, cid: str, session_id: str) -> Session:
        with self._lock:
            session = self._open.get(cid, {}).get(session_id)
        if session is None:
            info = self._ended_info(cid, session_id)
            raise FailedPrecondition(
                f"session {quote(session_id)} is {info.state.value}: {info.end_reason}"
            )
        return session

    def _use(self, cid: str, busy: bool) -> None:
        if not busy:
            self._manager.end_use(cid)
            return
        # Busy first, then resume, as an Exec does: an idle pause that slipped
        # in since the call resolved the sandbox is undone before the command
        # is written (see Pauses.pause_if_idle).
        self._manager.begin_use(cid)
        self._manager.pauses.ensure_running(cid)

    def _ended_info(self, cid: str, session_id: str) -> SessionInfo:
        with self._lock:
            for info in self._ended.get(cid, ()):
                if info.session_id == session_id:
                    return info
        raise NotFound(f"session {quote(session_id)} not found in sandbox {cid[:12]!r}")

    def _ended_one(self, session: Session) -> None:
        """A session's shell ended: it moves from the open ones to the ended ones."""
        info = session.info()
        with self._lock:
            per = self._open.get(session.cid, {})
            per.pop(session.session_id, None)
            if not per:
                self._open.pop(session.cid, None)
            self._ended.setdefault(session.cid, deque(maxlen=ENDED_KEPT)).appendleft(info)

    def _death_reason(self, cid: str, code: int | None) -> str:
        said = f"shell exited with {code}" if code is not None else "shell's connection ended"
        try:
            state = self._manager.container_state(cid)
        except NotFound:
            return f"{said}: the sandbox was removed"
        except Exception:  # the reason is informative only; the death stands
            return said
        if state != "running":
            return f"{said}: the sandbox is {state}"
        return said

    def forget(self, cid: str) -> None:
        """Drops the ended sessions of a sandbox that is gone."""
        with self._lock:
            self._ended.pop(cid, None)

    def _ensure_sweeper(self) -> None:
        with self._lock:
            if not self._sweeper_wanted or self._sweeper is not None:
                return
            self._sweeper = threading.Thread(
                target=self._sweep_loop, daemon=True, name="session-sweeper"
            )
        self._sweeper.start()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(SWEEP_SECONDS):
            try:
                self.expire_idle(self._manager.clock())
            except Exception:  # one bad sweep must not end expiry
                log.exception("session idle sweep failed")


def _span(seconds: float) -> str:
    """``90`` → ``1m30s``: a duration as end reasons show it."""
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    parts.append(f"{secs}s" if secs or not (hours or minutes) else "")
    return "".join(parts)
