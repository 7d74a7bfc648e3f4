"""The processes of every sandbox: caps, tags, lookups and how long exited ones stay.

Running processes per sandbox are capped (``sandbox.max_processes_per_sandbox``,
RESOURCE_EXHAUSTED beyond); a tag is unique among a sandbox's running
processes (ALREADY_EXISTS). An exited process stays findable, with the tail
of its output, for ``sandbox.process_retention_seconds``, and at most
:data:`MAX_EXITED_PER_SANDBOX` of them per sandbox (the oldest go first), so
memory stays bounded whatever callers start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from services.runtime.errors import AlreadyExists, NotFound, ResourceExhausted, quote
from services.sandbox.processes.checks import Selector
from services.sandbox.processes.process import ManagedProcess

#: Exited processes kept per sandbox at most.
MAX_EXITED_PER_SANDBOX = 64


class ProcessTable:
    """Processes by sandbox, newest last.

    Args:
        max_running: Running processes per sandbox at most.
        retention_seconds: How long an exited process stays.
        clock: Monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        *,
        max_running: int,
        retention_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_running = max_running
        self._retention = retention_seconds
        self._clock = clock
        # Handlers on pool threads and the loop, and reader threads ending
        # processes, all touch the table: one lock, held only for dict work.
        self._lock = threading.Lock()
        self._sandboxes: dict[str, dict[str, ManagedProcess]] = {}
        self._exited_at: dict[str, float] = {}

    def admit(self, process: ManagedProcess) -> None:
        """Adds a process about to start, if the cap and its tag allow.

        Raises:
            ResourceExhausted: The sandbox runs ``max_running`` processes.
            AlreadyExists: A running process of the sandbox has the tag.
        """
        with self._lock:
            self._prune()
            procs = self._sandboxes.setdefault(process.sandbox_id, {})
            running = [p for p in procs.values() if p.process_id not in self._exited_at]
            if len(running) >= self._max_running:
                raise ResourceExhausted(
                    f"sandbox {process.sandbox_id[:12]!r} runs {len(running)} processes, at "
                    f"most {self._max_running} (sandbox.max_processes_per_sandbox)"
                )
            if process.tag and any(p.tag == process.tag for p in running):
                raise AlreadyExists(
                    f"config.tag: a running process of sandbox {process.sandbox_id[:12]!r} "
                    f"is tagged {quote(process.tag)}"
                )
            procs[process.process_id] = process

    def discard(self, process: ManagedProcess) -> None:
        """Removes a process that never started."""
        with self._lock:
            procs = self._sandboxes.get(process.sandbox_id, {})
            procs.pop(process.process_id, None)
            if not procs:
                self._sandboxes.pop(process.sandbox_id, None)

    def exited(self, process: ManagedProcess) -> None:
        """Records that a process ended (its retention starts now)."""
        with self._lock:
            if process.process_id in self._sandboxes.get(process.sandbox_id, {}):
                self._exited_at[process.process_id] = self._clock()

    def _prune(self) -> None:
        now = self._clock()
        for cid in list(self._sandboxes):
            procs = self._sandboxes[cid]
            exited = [pid for pid in procs if pid in self._exited_at]
            excess = len(exited) - MAX_EXITED_PER_SANDBOX
            for index, pid in enumerate(exited):
                if index < excess or now - self._exited_at[pid] > self._retention:
                    del procs[pid]
                    del self._exited_at[pid]
            if not procs:
                del self._sandboxes[cid]

    def find(self, sandbox_id: str, selector: Selector) -> ManagedProcess:
        """The process a selector names; a running one before an exited one.

        Raises:
            NotFound: No such process in the sandbox (or no longer retained).
        """
        kind, value = selector
        with self._lock:
            self._prune()
            procs = list(self._sandboxes.get(sandbox_id, {}).values())
        if kind == "process_id":
            matches = [p for p in procs if p.process_id == value]
        elif kind == "pid":
            matches = [p for p in procs if p.pid == value]
        else:
            matches = [p for p in procs if p.tag == value]
        # Newest first, running before exited: a pid or tag reused after an
        # exit names the live process.
        matches.reverse()
        matches.sort(key=lambda p: not p.running)
        if not matches:
            raise NotFound(
                f"process {kind} {quote(value)} not found in sandbox {sandbox_id[:12]!r}"
            )
        return matches[0]

    def in_sandbox(self, sandbox_id: str, *, include_exited: bool) -> list[ManagedProcess]:
        """A sandbox's processes, newest first."""
        with self._lock:
            self._prune()
            procs = list(self._sandboxes.get(sandbox_id, {}).values())
        procs.reverse()
        return procs if include_exited else [p for p in procs if p.running]

    def running_in(self, sandbox_id: str) -> int:
        """How many processes run in a sandbox."""
        with self._lock:
            procs = self._sandboxes.get(sandbox_id, {})
            return sum(1 for pid in procs if pid not in self._exited_at)

    def running(self) -> list[ManagedProcess]:
        """Every running process (for shutdown)."""
        with self._lock:
            return [
                p
                for procs in self._sandboxes.values()
                for p in procs.values()
                if p.process_id not in self._exited_at
            ]
