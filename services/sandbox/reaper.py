"""The orphan reaper and idle handling.

A sweep removes only ``exited`` sandboxes of this deployment (optionally one
profile) whose ``State.FinishedAt`` is older than the max age
(``2 * max(lifetime_seconds, 60 s)`` unless the caller passes one). Zero-value
and unparseable timestamps are spared; one failed removal never stops the
sweep; removals use no force, so a container restarted meanwhile is refused by
the engine rather than killed. Candidates come from one filtered list call and
are inspected and removed concurrently.

Warm-pool members no task took yet are left to :mod:`.pools` (never idle-
stopped or paused; drained when no pool wants them, also from this tick); a
member a task took is that task's sandbox like any other.

The same periodic tick handles idle sandboxes: non-persistent ones idle longer
than ``lifetime_seconds`` are removed, persistent running ones idle longer than
``idle_stop_seconds`` (when set) are stopped and later aged out by the reaper;
persistent running ones idle longer than ``pause_idle_after_seconds`` (when
set, and not yet due a stop) are paused, and the next call resumes them. A
paused sandbox is never a candidate: the engine lists it as ``paused``, which
is neither the ``exited`` state the reaper removes nor the ``running`` state
the idle rules act on.

What dead managers leave behind is handled by :mod:`.leftovers`: before it
serves, the manager ends their leftover execs and removes their
non-persistent sandboxes (``__main__``); every tick removes non-persistent
sandboxes of owners that died since (the liveness rule is in :mod:`.owners`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from services.sandbox import labels, leftovers
from services.sandbox.docker_client import parse_docker_time

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager

log = logging.getLogger(__name__)

MIN_LIFETIME_SECONDS = 60


def default_max_age(lifetime_seconds: int) -> timedelta:
    """``2 * lifetime`` with the lifetime floored at 60 s."""
    return timedelta(seconds=2 * max(lifetime_seconds, MIN_LIFETIME_SECONDS))


def format_age(delta: timedelta) -> str:
    """A short human age: ``45s``, ``12m``, ``3h``, ``2d``."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Candidate:
    """A sandbox as the filtered list call returns it."""

    sandbox_id: str
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Decision:
    """The reaper's verdict on one candidate."""

    candidate: Candidate
    reason: str


@dataclass
class ReapReport:
    """One sweep: what was removed, spared or failed, and why."""

    dry_run: bool
    max_age: timedelta
    removed: list[Decision] = field(default_factory=list)
    spared: list[Decision] = field(default_factory=list)
    failed: list[Decision] = field(default_factory=list)
    error: str = ""


def judge(state: str, finished_raw: str, now: datetime, max_age: timedelta) -> tuple[bool, str]:
    """Decides whether an exited container is old enough to reap.

    Returns:
        (remove, reason).
    """
    if state != "exited":
        return False, f"state is {state or 'unknown'}, not exited"
    finished = parse_docker_time(finished_raw)
    if finished is None:
        return False, f"finish time unparseable or zero ({finished_raw!r})"
    age = now - finished
    if age <= max_age:
        return False, f"finished {format_age(age)} ago <= max age {format_age(max_age)}"
    return True, f"finished {format_age(age)} ago > max age {format_age(max_age)}"


class ReapTarget(Protocol):
    """What a sweep needs from the manager (the only module that talks to Docker)."""

    def list_candidates(self, *, profile: str = "", status: str = "exited") -> list[Candidate]:
        """Sandboxes of this deployment in one state, in one call."""
        ...

    def times(self, cid: str) -> tuple[str, str, str]:
        """(state, raw StartedAt, raw FinishedAt)."""
        ...

    def remove_exited(self, cid: str) -> None:
        """Removes a stopped container without force."""
        ...


def sweep(
    target: ReapTarget,
    *,
    now: datetime,
    max_age: timedelta,
    profile: str = "",
    dry_run: bool = False,
    workers: int = 8,
) -> ReapReport:
    """Runs one reaper sweep; never raises for engine trouble (see ``report.error``)."""
    report = ReapReport(dry_run=dry_run, max_age=max_age)
    try:
        candidates = target.list_candidates(profile=profile, status="exited")
    except Exception as exc:
        report.error = f"listing exited sandboxes failed: {exc}"
        log.error("reaper: sweep failed", extra={"error": report.error})
        return report

    def one(candidate: Candidate) -> tuple[str, Decision]:
        try:
            state, _started, finished = target.times(candidate.sandbox_id)
        except Exception as exc:
            return "spared", Decision(candidate, f"inspect failed: {exc}")
        remove, reason = judge(state, finished, now, max_age)
        if not remove:
            return "spared", Decision(candidate, reason)
        if dry_run:
            return "removed", Decision(candidate, f"would remove: {reason}")
        try:
            target.remove_exited(candidate.sandbox_id)
        except Exception as exc:
            return "failed", Decision(candidate, f"removal failed: {exc}")
        return "removed", Decision(candidate, reason)

    if candidates:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(candidates)))) as pool:
            for verdict, decision in pool.map(one, candidates):
                getattr(report, verdict).append(decision)
    for verdict in ("removed", "spared", "failed"):
        for d in getattr(report, verdict):
            log.info(
                "reaper: %s",
                verdict,
                extra={
                    "sandbox_id": d.candidate.sandbox_id,
                    "profile": d.candidate.labels.get(labels.PROFILE, ""),
                    "reason": d.reason,
                    "dry_run": dry_run,
                },
            )
    return report


def idle_action(
    *,
    persist: bool,
    reference: datetime | None,
    seen_here: bool,
    busy: bool,
    now: datetime,
    lifetime_seconds: int,
    idle_stop_seconds: int,
    foreign_grace_seconds: float,
    pause_idle_seconds: int = 0,
) -> tuple[str, str]:
    """Decides what to do with a running sandbox: ``remove``, ``stop``, ``pause`` or ``keep``.

    Args:
        persist: The sandbox's persist label.
        reference: Last use seen by this manager, else the container's start.
        seen_here: Whether ``reference`` is a use this manager saw.
        busy: An exec is running in it through this manager.
        now: Current time.
        lifetime_seconds: Idle limit of non-persistent sandboxes.
        idle_stop_seconds: Idle limit of persistent sandboxes (0 = off).
        foreign_grace_seconds: Added when the reference is only the start time
            (another manager may be using it without our knowledge).
        pause_idle_seconds: Idle time after which a persistent sandbox is
            paused (0 = off); stopping, when due too, wins.

    Returns:
        (action, reason).
    """
    if busy:
        return "keep", "exec in progress"
    if reference is None:
        return "keep", "no usable timestamp"
    grace = 0.0 if seen_here else foreign_grace_seconds
    idle = now - reference
    if persist and idle_stop_seconds <= 0:
        if pause_idle_seconds > 0:
            return _idle_verdict("pause", idle, pause_idle_seconds + grace)
        return "keep", "idle stop disabled"
    limit = float(lifetime_seconds if not persist else idle_stop_seconds) + grace
    action, reason = _idle_verdict("stop" if persist else "remove", idle, limit)
    if action == "keep" and persist and pause_idle_seconds > 0:
        return _idle_verdict("pause", idle, pause_idle_seconds + grace)
    return action, reason


def _idle_verdict(action: str, idle: timedelta, limit: float) -> tuple[str, str]:
    if idle.total_seconds() <= limit:
        return "keep", f"idle {format_age(idle)}"
    return action, f"idle {format_age(idle)} > {format_age(timedelta(seconds=limit))}"


class StartupGuard:
    """Makes the startup sweep happen once per process, even with concurrent starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tripped = False

    def claim(self) -> bool:
        """True for exactly one caller."""
        with self._lock:
            if self.tripped:
                return False
            self.tripped = True
            return True


#: The process-wide guard (managers in one process share it).
STARTUP_GUARD = StartupGuard()


class ReaperLoop:
    """Runs the startup sweep (guarded) and then a tick every interval on a thread.

    Args:
        tick: One periodic round (reap + idle), given the current time.
        startup: The startup sweep, given the current time.
        interval_seconds: Seconds between ticks.
        clock: Wall clock.
        guard: Startup guard (process-wide by default).
    """

    def __init__(
        self,
        *,
        tick: Callable[[datetime], object],
        startup: Callable[[datetime], object],
        interval_seconds: float,
        clock: Callable[[], datetime],
        guard: StartupGuard = STARTUP_GUARD,
    ) -> None:
        self._tick = tick
        self._startup = startup
        self._interval = interval_seconds
        self._clock = clock
        self._guard = guard
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Starts the background thread (the startup sweep runs on it, not here)."""
        self._thread = threading.Thread(target=self._run, name="sandbox-reaper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the thread (waits at most ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def startup_once(self) -> bool:
        """Runs the startup sweep unless this process already did; returns whether it ran."""
        if not self._guard.claim():
            return False
        self._safely(self._startup)
        return True

    def _run(self) -> None:
        self.startup_once()
        while not self._stop.wait(self._interval):
            self._safely(self._tick)

    def _safely(self, fn: Callable[[datetime], object]) -> None:
        try:
            fn(self._clock())
        except Exception:  # the loop must outlive one bad round
            log.exception("reaper: round failed")


class Reaper:
    """Reaper sweeps and idle handling for one manager.

    Args:
        manager: The manager (the only module that talks to Docker).
        guard: Startup guard (process-wide by default).
    """

    def __init__(self, manager: SandboxManager, guard: StartupGuard = STARTUP_GUARD) -> None:
        self.manager = manager
        self.section = manager.section
        self._guard = guard
        self._loop: ReaperLoop | None = None

    def reap(
        self,
        *,
        now: datetime | None = None,
        max_age: timedelta | None = None,
        profile: str = "",
        dry_run: bool = False,
    ) -> ReapReport:
        """One sweep of exited sandboxes (see :func:`sweep`)."""
        report = sweep(
            self.manager,
            now=now or self.manager.clock(),
            max_age=max_age
            if max_age is not None
            else default_max_age(self.section.lifetime_seconds),
            profile=profile,
            dry_run=dry_run,
            workers=self.section.reap_workers,
        )
        if not dry_run:
            self.manager.metrics.reaped(len(report.removed), failed=len(report.failed))
        return report

    def idle(self, now: datetime) -> list[tuple[str, str, str]]:
        """Removes idle non-persistent and stops idle persistent sandboxes.

        Returns:
            (sandbox_id, action, reason) for every sandbox acted upon.
        """
        acted: list[tuple[str, str, str]] = []
        try:
            running = self.manager.list_candidates(status="running")
        except Exception as exc:
            log.error("idle sweep: listing failed", extra={"error": str(exc)})
            return acted
        for cand in running:
            cid = cand.sandbox_id
            if self.manager.cleanup.is_pending(cid):
                continue
            if labels.is_pool_member(cand.labels) and not labels.task_of(cand.labels, cand.name):
                continue  # a warm member waits to be handed out; its pool drains it
            seen = self.manager.last_used(cid)
            reference = seen
            if reference is None:
                try:
                    _state, started, _finished = self.manager.times(cid)
                except Exception as exc:
                    log.warning(
                        "idle sweep: inspect failed", extra={"sandbox_id": cid, "error": str(exc)}
                    )
                    continue
                reference = parse_docker_time(started)
            action, reason = idle_action(
                persist=cand.labels.get(labels.PERSIST) == "true",
                reference=reference,
                seen_here=seen is not None,
                busy=self.manager.is_busy(cid),
                now=now,
                lifetime_seconds=self.section.lifetime_seconds,
                idle_stop_seconds=self.section.idle_stop_seconds,
                foreign_grace_seconds=self.section.exec_timeout_seconds,
                pause_idle_seconds=self.section.pause_idle_after_seconds,
            )
            if action == "keep":
                continue
            try:
                if action == "remove":
                    self.manager.schedule_removal(cid, reason=f"idle: {reason}")
                elif action == "pause":
                    # Checked again under the pauses lock: a call may have
                    # begun since the decision (see Pauses.pause_if_idle).
                    still_idle = functools.partial(self._still_idle, cid, seen)
                    if not self.manager.pauses.pause_if_idle(cid, still_idle):
                        continue
                else:
                    self.manager.stop(cid)
                    self.manager.forget(cid)
            except Exception as exc:
                log.warning(
                    "idle sweep: %s failed", action, extra={"sandbox_id": cid, "error": str(exc)}
                )
                continue
            log.info("idle sweep: %s", action, extra={"sandbox_id": cid, "reason": reason})
            self.manager.metrics.reaper_action(action)
            acted.append((cid, action, reason))
        return acted

    def _still_idle(self, cid: str, seen: datetime | None) -> bool:
        """No exec runs in the sandbox and no use was seen since the idle decision."""
        return not self.manager.is_busy(cid) and self.manager.last_used(cid) == seen

    def tick(self, now: datetime) -> None:
        """One periodic round: reap, idle handling, dead owners' leftovers, unwanted warm members.

        A warm member a task took is that task's sandbox like any other; one
        no task took is never idle-stopped, only drained by its pool's rules.
        """
        self.reap(now=now)
        self.idle(now)
        leftovers.sweep(self.manager, execs=False)
        try:
            self.manager.pools.drain()
        except Exception as exc:  # a pool failure never stops the reaper
            log.warning("reaper: warm pool drain failed", extra={"error": str(exc)})

    def startup(self, now: datetime) -> None:
        """The start-up round of the loop: reap (leftovers ended before serving)."""
        self.reap(now=now)

    def start(self) -> bool:
        """Starts the loop when enabled; returns whether it started.

        Disabled reapers never claim the startup guard, so a later enabled
        manager in the same process still sweeps once.
        """
        if not self.section.reaper_enabled:
            return False
        self._loop = ReaperLoop(
            tick=self.tick,
            startup=self.startup,
            interval_seconds=self.section.reap_interval_seconds,
            clock=self.manager.clock,
            guard=self._guard,
        )
        self._loop.start()
        return True

    def startup_once(self, now: datetime | None = None) -> bool:
        """Runs the startup sweep synchronously unless the guard already tripped."""
        if not self.section.reaper_enabled or not self._guard.claim():
            return False
        self.startup(now or self.manager.clock())
        return True

    def stop(self) -> None:
        """Stops the loop."""
        if self._loop is not None:
            self._loop.stop()
