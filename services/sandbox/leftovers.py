"""What a dead manager leaves behind: its running execs and its non-persistent sandboxes.

A manager that dies (``kill -9``, a crash, a compose restart) leaves every
exec it was streaming running in its sandbox, and its non-persistent
sandboxes running with nobody to release them. The next manager of the
deployment cleans both up at start, before it serves (so a caller's retry
never runs next to the old command; with or without the reaper), and the
reaper's tick keeps removing non-persistent sandboxes of owners that die later:

* every running sandbox of the deployment is swept for exec markers; an exec
  whose owner (the marker's first part) is known dead by the rule of
  :mod:`.owners` is frozen and killed like a timed-out one (the sandbox is
  restarted when the killer cannot stop it in place). Execs of live or
  unknown owners are left alone, so two managers of one deployment never stop
  each other's commands; a sandbox where no killer can list the markers is
  restarted when it is at its pids limit (nothing can start in it for anyone)
  and otherwise (an image without a shell) reported and left alone;
* a non-persistent sandbox whose ``io.longshore.owner`` is known dead is
  removed at once, instead of after the idle lifetime plus the exec-timeout
  grace that a sandbox of an unknown owner gets. Persistent sandboxes stay:
  they are meant to outlive their manager.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.runtime.errors import ServiceError
from services.sandbox import labels
from services.sandbox.execution import list_markers, run_killer
from services.sandbox.owners import owner_of_marker

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager
    from services.sandbox.reaper import Candidate

log = logging.getLogger(__name__)

#: The user id every sandbox is swept as, besides its configured user.
ROOT_USER = "0"


@dataclass
class LeftoverReport:
    """One sweep: execs ended, sandboxes restarted or removed, failures."""

    execs_ended: int = 0
    restarted: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def end_orphaned_execs(manager: SandboxManager, cid: str, report: LeftoverReport) -> None:
    """Stops every exec in a running sandbox whose manager is dead.

    The killer runs as the sandbox's configured user and as root, since a
    process's environment is readable by its own user only (the sandbox has
    no CAP_SYS_PTRACE); when it cannot run at all the sandbox is restarted.
    """
    users = list(dict.fromkeys([manager.config_user(cid), ROOT_USER]))
    ended: set[str] = set()
    for user in users:
        markers = list_markers(manager.api, cid, user)
        if markers is None and manager.at_pids_limit(cid):
            # Every pid is taken, so nothing (a live manager's command
            # included) can start here any more: only a restart frees it.
            manager.restart(cid, reason="no process can start in it (pids limit reached)")
            report.restarted.append(cid)
            return
        if markers is None:
            # No killer runs here (e.g. no shell in the image): we cannot tell
            # whose execs run, and a restart would also end a live manager's,
            # so leave them to their own managers.
            report.errors.append(f"sandbox {cid}: execs could not be listed as user {user!r}")
            log.warning(
                "leftover sweep: execs could not be listed", extra={"sandbox_id": cid, "user": user}
            )
            continue
        for marker in markers:
            owner = owner_of_marker(marker)
            if marker in ended or owner == manager.owner or not manager.liveness.is_dead(owner):
                continue
            if run_killer(manager.api, cid, ["kill", marker], user) is None:
                manager.restart(cid, reason="a leftover exec could not be stopped in place")
                report.restarted.append(cid)
                return
            log.info(
                "ended an exec left over by a dead manager",
                extra={"sandbox_id": cid, "owner": owner},
            )
            ended.add(marker)
            report.execs_ended += 1


def sweep(manager: SandboxManager, *, execs: bool = True) -> LeftoverReport:
    """Ends dead managers' execs (when ``execs``) and removes their non-persistent sandboxes.

    Never raises for engine trouble: failures are logged and reported.
    """
    report = LeftoverReport()
    try:
        running = manager.list_candidates(status="running")
    except ServiceError as exc:
        report.errors.append(f"listing running sandboxes failed: {exc.message}")
        log.error("leftover sweep failed", extra={"error": exc.message})
        return report

    def one(cand: Candidate) -> LeftoverReport:
        # Each sandbox gets its own report, merged below, so the workers share nothing.
        part = LeftoverReport()
        cid = cand.sandbox_id
        persist = cand.labels.get(labels.PERSIST) == "true"
        try:
            if not persist and manager.is_owner_dead(cand.labels) and not manager.is_busy(cid):
                manager.schedule_removal(cid, reason="its manager is dead")
                part.removed.append(cid)
            elif execs:
                end_orphaned_execs(manager, cid, part)
        except ServiceError as exc:
            part.errors.append(f"sandbox {cid}: {exc.message}")
            log.warning(
                "leftover sweep: sandbox failed", extra={"sandbox_id": cid, "error": exc.message}
            )
        return part

    if running:
        # Concurrent: the sweep runs before the manager serves, and one
        # sandbox costs a few execs (~0.2 s), so a sequential sweep of many
        # sandboxes would delay the start by that many times.
        workers = max(1, min(manager.section.reap_workers, len(running)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="leftovers") as pool:
            for part in pool.map(one, running):
                report.execs_ended += part.execs_ended
                report.restarted += part.restarted
                report.removed += part.removed
                report.errors += part.errors
    if report.execs_ended or report.restarted or report.removed:
        log.info(
            "leftovers of dead managers cleaned up",
            extra={
                "execs_ended": report.execs_ended,
                "restarted": len(report.restarted),
                "removed": len(report.removed),
            },
        )
    return report


class StartupSweep:
    """The start-up sweep, run again once the engine answers if it could not run at start.

    A manager started while its engine is down serves NOT_SERVING; the execs
    and sandboxes a dead manager left must still be ended, so the first probe
    that finds the engine back triggers the sweep it missed (on a thread of its
    own: the probe thread must keep probing).
    """

    def __init__(self, manager: SandboxManager) -> None:
        self._manager = manager
        self._lock = threading.Lock()
        self._pending = False

    def run(self) -> LeftoverReport:
        """Sweeps now; remembers to sweep again if the engine could not be listed."""
        report = sweep(self._manager, execs=True)
        with self._lock:
            self._pending = bool(report.errors)
        return report

    def engine_changed(self, serving: bool) -> None:
        """Called on every engine health change; sweeps once after a missed start."""
        with self._lock:
            due = serving and self._pending
            self._pending = self._pending and not due
        if due:
            threading.Thread(target=self.run, name="leftovers-retry", daemon=True).start()
