"""Persistent shell sessions in sandboxes: one shell, commands one after another.

A session is a long-lived ``sh`` in a sandbox (:mod:`.shell`); each command
is one framed line to it (:mod:`.framing`) whose output streams until its
end markers; working directory, variables and functions persist because
every command runs in the same shell. A timeout or cancel stops the
command's process tree and leaves the shell (:mod:`.killer`). The manager
keeps sessions per sandbox, capped, and closes idle ones
(:mod:`.registry`). Like :mod:`services.sandbox.files`, this is a half of
the manager: it talks to the engine only through the manager's client.
"""

from __future__ import annotations

from services.sandbox.sessions.command import CommandRun, Sink
from services.sandbox.sessions.model import (
    SessionCommand,
    SessionExit,
    SessionInfo,
    SessionState,
)
from services.sandbox.sessions.registry import Sessions
from services.sandbox.sessions.session import Session

__all__ = [
    "CommandRun",
    "Session",
    "SessionCommand",
    "SessionExit",
    "SessionInfo",
    "SessionState",
    "Sessions",
    "Sink",
]
