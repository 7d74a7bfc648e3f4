"""Processes in sandboxes: started in the foreground or background, reconnected to by offset.

A process is one docker exec with its socket attached (:mod:`.process`);
its output goes into a bounded ring with absolute offsets that many readers
follow (:mod:`.buffer`); the manager keeps them per sandbox with caps and
tags (:mod:`.table`); requests are checked in :mod:`.checks`; snapshots and
their protos are :mod:`.records`. A start takes a *spare* when one is ready
(:mod:`.spares`, execs started ahead; the line they read is :mod:`.spare_line`).
Like :mod:`..files`, this is a half of the manager: it talks to the engine
only through the manager's client.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

from services.sandbox.processes.checks import Selector
from services.sandbox.processes.process import ManagedProcess
from services.sandbox.processes.records import ProcessConfig
from services.sandbox.processes.spare_line import spare_line
from services.sandbox.processes.spares import Spares
from services.sandbox.processes.table import ProcessTable

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager

__all__ = ["ManagedProcess", "ProcessConfig", "SandboxProcesses"]


class SandboxProcesses:
    """Starts and finds the processes of this manager's sandboxes.

    Args:
        manager: The manager whose engine client, settings and clock are used.
    """

    def __init__(self, manager: SandboxManager) -> None:
        self._manager = manager
        section = manager.section
        self.table = ProcessTable(
            max_running=section.max_processes_per_sandbox,
            retention_seconds=section.process_retention_seconds,
        )
        #: Execs started ahead, one of which a compatible start takes.
        self.spares = Spares(
            manager.api,
            per_sandbox=section.spare_processes_per_sandbox,
            total=section.max_spare_processes,
            buffer_bytes=section.process_output_buffer_bytes,
            owner=manager.owner,
            now=manager.clock,
        )

    def start(
        self, sandbox_id: str, config: ProcessConfig, *, default_timeout: float = 0.0
    ) -> ManagedProcess:
        """Starts a process (blocking until its pid is known).

        Args:
            sandbox_id: The sandbox (full id, as the access check resolved it).
            config: What to run.
            default_timeout: Seconds when the config sets none (0 = no limit).

        Raises:
            NotFound: No such sandbox.
            FailedPrecondition: The sandbox is not running.
            ResourceExhausted: The sandbox runs its most processes.
            AlreadyExists: The tag names a running process.
            Unavailable: The engine is unreachable.
        """
        manager = self._manager
        manager.require_engine()
        cid = manager.resolve_id(sandbox_id)
        if not config.timeout_seconds and default_timeout:
            config = replace(config, timeout_seconds=default_timeout)
        process_id = f"proc-{secrets.token_hex(8)}"
        process = self._from_spare(cid, process_id, config) or self._fresh(cid, process_id, config)
        manager.touch(cid)
        return process

    def _from_spare(
        self, cid: str, process_id: str, config: ProcessConfig
    ) -> ManagedProcess | None:
        """The process started by a ready spare; None when none fits (the normal path then)."""
        line = spare_line(config) if self.spares.enabled else None
        spare = self.spares.take(cid) if line is not None else None
        if spare is None or line is None:
            return None
        manager = self._manager
        taken = spare.take(
            process_id=process_id,
            config=config,
            line=line,
            on_exit=self._exited,
            resume=lambda: manager.pauses.ensure_running(cid),
        )
        if not taken:
            return None
        try:
            self.table.admit(spare)
        except BaseException:
            spare.drop()  # what it was taken for is refused: it ends unused
            raise
        spare.launch(manager.clock())
        manager.metrics.process_start("spare")
        return spare

    def _fresh(self, cid: str, process_id: str, config: ProcessConfig) -> ManagedProcess:
        """The process started by its own exec (the normal path)."""
        manager = self._manager
        process = ManagedProcess(
            manager.api,
            sandbox_id=cid,
            process_id=process_id,
            config=config,
            buffer_bytes=manager.section.process_output_buffer_bytes,
            owner=manager.owner,
            now=manager.clock,
            on_exit=self._exited,
            resume=lambda: manager.pauses.ensure_running(cid),
        )
        self.table.admit(process)
        try:
            process.start()
        except BaseException:
            self.table.discard(process)
            raise
        manager.metrics.process_start("exec")
        return process

    def _exited(self, process: ManagedProcess) -> None:
        self.table.exited(process)
        self._manager.touch(process.sandbox_id)

    def find(self, sandbox_id: str, selector: Selector) -> ManagedProcess:
        """The process a selector names (see :meth:`ProcessTable.find`)."""
        return self.table.find(sandbox_id, selector)

    def in_sandbox(self, sandbox_id: str, *, include_exited: bool) -> list[ManagedProcess]:
        """A sandbox's processes, newest first."""
        return self.table.in_sandbox(sandbox_id, include_exited=include_exited)

    def close(self) -> None:
        """Ends every running process and spare (the manager is shutting down)."""
        self.spares.close()
        running = self.table.running()
        if not running:
            return
        # A kill is an exec (~40 ms): several at once keep the shutdown short.
        with ThreadPoolExecutor(max_workers=min(8, len(running))) as pool:
            list(pool.map(lambda p: p.kill("the sandbox manager shut down"), running))
