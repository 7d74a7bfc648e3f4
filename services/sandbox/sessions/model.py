"""Records of shell sessions: their state, a snapshot of one, a command and its exit."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class SessionState(enum.StrEnum):
    """Where a session is in its life (the proto's ``SessionState``)."""

    READY = "ready"
    BUSY = "busy"
    DEAD = "dead"
    CLOSED = "closed"


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one session, as ListSessions and the other RPCs return it."""

    session_id: str
    #: Full id of the sandbox the shell runs in.
    sandbox_id: str
    shell: str
    state: SessionState
    create_time: datetime
    #: When its last command ended (or when it was opened).
    last_used_time: datetime
    idle_timeout_seconds: float
    commands_run: int
    #: Why a DEAD or CLOSED session ended ("" while it lives).
    end_reason: str


@dataclass(frozen=True)
class SessionCommand:
    """One command for a session's shell, already validated."""

    #: Shell source, run by the session's shell in its own state.
    source: str
    timeout_seconds: float
    max_output_bytes: int


@dataclass(frozen=True)
class SessionExit:
    """How one command of a session ended (the proto's ``SessionCommandExit``)."""

    #: ``$?`` of the command; -1 when it was stopped (timeout, cancel) or the shell died.
    exit_code: int
    timed_out: bool
    truncated: bool
    duration_seconds: float
    #: Output bytes produced, dropped ones included.
    output_bytes: int
    #: The shell died while running the command: the session is DEAD.
    session_ended: bool
