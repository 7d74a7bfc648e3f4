"""One command of a session while it runs: its output relay, its cap, its end.

The session's reader thread feeds the command what the shell writes; the
command passes output on to its :class:`Sink` (blocking while the caller is
slow, which stalls the shell's pipe: backpressure, nothing piles up here),
counts and drops what is past the cap, and is complete once both end
markers arrived (:mod:`.framing`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from services.sandbox.model import OutputChunk, StreamKind
from services.sandbox.sessions.deadlines import Deadline
from services.sandbox.sessions.framing import EndScanner, parse_status
from services.sandbox.sessions.model import SessionCommand, SessionExit

Event = OutputChunk | SessionExit


class Sink(Protocol):
    """Where a command's events go (the RPC's stream)."""

    def put(self, event: OutputChunk, *, give_up: Callable[[], bool]) -> bool:
        """Passes output on, waiting for room until ``give_up()``; False when not taken."""

    def end(self, event: SessionExit) -> None:
        """Passes the exit on; never waits, never refused."""


class CommandRun:
    """A command between its line being sent and its exit.

    Args:
        command: What runs.
        marker: The command's exec marker (its processes carry it).
        nonce: Its end marker.
        sink: Where its events go.
        max_output: Output bytes passed on; more are counted and dropped.
    """

    def __init__(
        self, command: SessionCommand, *, marker: str, nonce: str, sink: Sink, max_output: int
    ) -> None:
        self.command = command
        self.marker = marker
        self.nonce = nonce
        self._sink = sink
        self._max_output = max_output
        self._scanners = {1: EndScanner(nonce), 2: EndScanner(nonce)}
        self.produced = 0
        self.truncated = False
        self.started = time.monotonic()
        #: Set once the exit was handed to the sink.
        self.done = threading.Event()
        #: Why it is being stopped: "" (it is not), "timeout" or "cancel".
        self.stopping = ""
        self._end_lock = threading.Lock()
        #: Stops the command at its timeout (set by the session).
        self.timer: Deadline | None = None

    def feed(self, stream: int, data: bytes) -> bool:
        """Takes bytes the shell wrote; returns whether the command is now over."""
        scanner = self._scanners.get(stream)
        if scanner is None:
            return False
        self._emit(stream, scanner.feed(data))
        return all(s.ended for s in self._scanners.values())

    def status(self) -> int:
        """The ``$?`` its stdout end line carried."""
        return parse_status(self._scanners[1].trailer)

    def complete(self, status: int, *, session_ended: bool) -> None:
        """Hands the exit to the sink (once; later calls do nothing)."""
        with self._end_lock:
            if self.done.is_set():
                return
            if session_ended:
                for stream, scanner in self._scanners.items():
                    self._emit(stream, scanner.flush())
            stopped = bool(self.stopping) or session_ended
            self._sink.end(
                SessionExit(
                    exit_code=-1 if stopped else status,
                    timed_out=self.stopping == "timeout",
                    truncated=self.truncated,
                    duration_seconds=time.monotonic() - self.started,
                    output_bytes=self.produced,
                    session_ended=session_ended,
                )
            )
            self.done.set()

    def _emit(self, stream: int, data: bytes) -> None:
        if not data:
            return
        room = self._max_output - self.produced
        self.produced += len(data)
        if room <= 0:
            self.truncated = True
            return
        if len(data) > room:
            self.truncated = True
            data = data[:room]
        kind = StreamKind.STDERR if stream == 2 else StreamKind.STDOUT
        # Once the command is being stopped nobody may wait on the caller (even
        # a wait already begun gives up): the reader must get to the end
        # markers. What finds no room then is dropped.
        if not self._sink.put(OutputChunk(kind, data), give_up=lambda: bool(self.stopping)):
            self.truncated = True
