"""Spares: execs started ahead, so a process start costs no docker exec.

A process is one docker exec (create + start + inspect, 80-130 ms) while a
write to a running one is ~2 ms. So for each running sandbox the manager
keeps ``sandbox.spare_processes_per_sandbox`` execs of
:data:`~.spare_line.SPARE_WRAPPER` started as the sandbox's default user,
stdin attached, waiting for one line. A compatible start (:func:`.spare_line`)
takes one, writes the line and the shell ``exec``\\ s the program in its own
place: same pid and process group (the engine's ``setsid``), same stdin (a
POSIX shell reads a pipe byte by byte, so the program gets the rest), same
output socket and exec marker. A request that wants no stdin gets it closed
right after the line. Anything else, or no spare ready, takes the normal exec.

Spares are not processes until taken: they are not in the process table (not
listed, not in the cap, not keeping a sandbox busy). They are made in the
background on a small pool of their own (never on a request's path) after an
acquire, a warm member's start, and each take (that one
:data:`REFILL_DELAY_SECONDS` later, so it does not compete with the process
just started); bounded per sandbox and by
``sandbox.max_spare_processes`` in all. Dropping one closes its stdin (its
``read`` fails and the shell exits, no exec needed); a spare of a sandbox
that stops simply ends and leaves the shelf. A manager that dies leaves them
to the next one's leftover sweep, like any exec with its marker.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import docker

from services.runtime.errors import ServiceError
from services.sandbox.docker_client import explain
from services.sandbox.processes.process import PID_WAIT_SECONDS, WRAPPER_NAME, ManagedProcess
from services.sandbox.processes.records import ProcessConfig
from services.sandbox.processes.spare_line import SPARE_WRAPPER

log = logging.getLogger(__name__)

#: What a spare is before it is taken (default user, stdin attached, no PTY).
SPARE_CONFIG = ProcessConfig(argv=("sh",), stdin=True)
#: Threads that start spares (each start is one exec; the engine pool stays free).
FILL_WORKERS = 2
#: How long the refill after a take waits. A refill is an exec create and
#: start (engine work and this process's CPU); made at once, it competes with
#: the very process the take started, whose exit and exit code are what the
#: caller is waiting for: a ``true`` took 26 ms with the refill beside it and
#: 15 ms without. A short command is done well within this.
REFILL_DELAY_SECONDS = 0.1


class SpareProcess(ManagedProcess):
    """An exec of the spare wrapper; becomes a process when :meth:`take` names one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._line = b""
        # Set once its output ended: a spare whose sandbox just stopped is
        # never taken while its end is still being worked out.
        self._eof = threading.Event()

    def _finish(self) -> None:
        self._eof.set()
        super()._finish()

    def open(self) -> None:
        """Starts the spare's exec and waits (bounded) for its pid.

        Raises:
            ServiceError: The engine refused the exec (the sandbox stopped...).
        """
        self._open(["sh", "-c", SPARE_WRAPPER, WRAPPER_NAME], {}, workdir="", user="")
        self._pid_known.wait(PID_WAIT_SECONDS)

    def take(
        self,
        *,
        process_id: str,
        config: ProcessConfig,
        line: bytes,
        on_exit: Callable[[ManagedProcess], None],
        resume: Callable[[], object],
    ) -> bool:
        """Makes this spare the process ``config`` names; False if it already ended.

        Called once, before the process is admitted anywhere; :meth:`launch`
        then sends the line.
        """
        with self._lock:
            if self._end is not None or self._pid <= 0 or self._eof.is_set():
                return False
            self.process_id = process_id
            self.config = config
            self.tag = config.tag
            self._pty = None
            self._stdin_open = config.stdin
            self._on_exit = on_exit
            self._resume = resume
        self._line = line
        return True

    def launch(self, now: datetime) -> None:
        """Writes the line (the program starts), closes stdin if unwanted, starts the timeout."""
        self.start_time = now
        self._started = time.monotonic()  # its duration counts from the line, not the spare
        raw = self._raw
        try:
            if raw is None:
                raise OSError("closed")
            raw.sendall(self._line)
            if not self.config.stdin:
                raw.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # The spare ended under us: its reader reports that end as the process's.
            log.warning("spare ended before its line", extra={"error": str(exc)})
        self._arm_timeout()

    def drop(self) -> None:
        """Ends an untaken spare: its stdin closes, its ``read`` fails, the shell exits."""
        raw = self._raw
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_WR)


class Spares:
    """The spares of every sandbox, and their background filling.

    Args:
        api: The engine's low-level client.
        per_sandbox: Spares kept per sandbox (0: off).
        total: Spares across all sandboxes at most.
        buffer_bytes: Output bytes a taken spare keeps for readers.
        owner: This manager's owner id (the exec marker's first part).
        now: The wall clock.
    """

    def __init__(
        self,
        api: docker.APIClient,
        *,
        per_sandbox: int,
        total: int,
        buffer_bytes: int,
        owner: str,
        now: Callable[[], datetime],
    ) -> None:
        self._api = api
        self._per_sandbox = per_sandbox
        self._total = total
        self._buffer_bytes = buffer_bytes
        self._owner = owner
        self._now = now
        self._lock = threading.Lock()
        self._ready: dict[str, list[SpareProcess]] = {}
        self._filling: set[str] = set()
        # Sandboxes dropped while their fill was under way: what it makes is dropped too.
        self._dropped: set[str] = set()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=FILL_WORKERS, thread_name_prefix="spares")

    @property
    def enabled(self) -> bool:
        """Whether spares are kept at all."""
        return self._per_sandbox > 0 and self._total > 0

    def count(self, cid: str | None = None) -> int:
        """Ready spares of one sandbox, or of all."""
        with self._lock:
            if cid is not None:
                return len(self._ready.get(cid, []))
            return sum(len(spares) for spares in self._ready.values())

    def fill_soon(self, cid: str, *, after: float = 0.0) -> None:
        """Tops the sandbox's spares up in the background, ``after`` seconds from now.

        One fill per sandbox at a time, a pending one included.
        """
        if not self.enabled:
            return
        with self._lock:
            if self._closed:
                return
            if cid in self._filling:
                # A fill under way or pending serves this request too, even
                # when a drop came meanwhile: the sandbox runs again.
                self._dropped.discard(cid)
                return
            self._filling.add(cid)
        if after <= 0:
            self._submit(cid)
            return
        timer = threading.Timer(after, self._submit, (cid,))
        timer.daemon = True
        timer.start()

    def _submit(self, cid: str) -> None:
        try:
            self._pool.submit(self._fill, cid)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self._filling.discard(cid)

    def _fill(self, cid: str) -> None:
        try:
            while True:
                with self._lock:
                    total = sum(len(spares) for spares in self._ready.values())
                    if (
                        self._closed
                        or cid in self._dropped
                        or len(self._ready.get(cid, [])) >= self._per_sandbox
                        or total >= self._total
                    ):
                        return
                spare = self._make(cid)
                if spare is None:
                    return
                with self._lock:
                    keep = not self._closed and cid not in self._dropped
                    if keep and spare.running:
                        self._ready.setdefault(cid, []).append(spare)
                if not keep:
                    spare.drop()
                    return
        except Exception:  # a fill worker must never die silently
            log.exception("spare fill failed", extra={"sandbox_id": cid})
        finally:
            with self._lock:
                self._filling.discard(cid)
                self._dropped.discard(cid)

    def _make(self, cid: str) -> SpareProcess | None:
        spare = SpareProcess(
            self._api,
            sandbox_id=cid,
            process_id=f"spare-{cid[:12]}",
            config=SPARE_CONFIG,
            buffer_bytes=self._buffer_bytes,
            owner=self._owner,
            now=self._now,
            on_exit=self._ended,
        )
        try:
            spare.open()
        except ServiceError as exc:  # a stopped or paused sandbox: no spare, no harm
            log.info("no spare made", extra={"sandbox_id": cid, "error": explain(exc)})
            return None
        if spare.pid <= 0:
            spare.drop()
            return None
        return spare

    def _ended(self, process: ManagedProcess) -> None:
        """An untaken spare ended (its sandbox stopped, or it was dropped)."""
        with self._lock:
            spares = [s for s in self._ready.get(process.sandbox_id, []) if s is not process]
            if spares:
                self._ready[process.sandbox_id] = spares
            else:
                self._ready.pop(process.sandbox_id, None)

    def take(self, cid: str) -> SpareProcess | None:
        """A ready spare of the sandbox, off the shelf (a refill follows); None if none."""
        with self._lock:
            spares = self._ready.get(cid)
            spare = spares.pop(0) if spares else None
            if spares is not None and not spares:
                del self._ready[cid]
        if spare is not None:
            self.fill_soon(cid, after=REFILL_DELAY_SECONDS)
        return spare

    def drop(self, cid: str) -> None:
        """Ends a sandbox's spares (it stops, restarts, is released or removed)."""
        with self._lock:
            spares = self._ready.pop(cid, [])
            if cid in self._filling:
                self._dropped.add(cid)
        for spare in spares:
            spare.drop()

    def close(self) -> None:
        """Ends every spare (the manager is shutting down)."""
        with self._lock:
            self._closed = True
            everything = [spare for spares in self._ready.values() for spare in spares]
            self._ready.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for spare in everything:
            spare.drop()
