"""The dispatcher's breaker per backend: is the sandbox backend up, and since when not.

While the sandbox manager or its Docker engine is down, every spawn to a
``sandbox`` profile would fail, and each failure would cost the task a
retry. The :class:`BackendBreaker` opens on the first platform failure (a
call UNAVAILABLE or past its deadline) or on a health check answering
NOT_SERVING, and the dispatcher then spawns nothing to that backend: the
breaker's :meth:`~BackendBreaker.view` is an input of the pure plan (the
snapshot), so the tick, its dry run and every readiness answer agree.

A background thread probes the backend (the gRPC health check on the sandbox
channel): every ``probe_interval`` while it is available (so a backend that
turns NOT_SERVING is noticed before a spawn fails), and with a doubling
delay up to ``max_probe_interval`` while it is not. The first successful
probe closes the breaker and wakes the dispatcher: dispatch resumes by
itself. Only a probe closes it: a run that succeeded meanwhile may have
talked to the backend before the outage, so its success just brings the
next probe forward.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from services.kanban.planner import BackendView

log = logging.getLogger(__name__)

# Reasons come from errors of other processes: keep them one short line.
MAX_REASON_CHARS = 160

Probe = Callable[[], str | None]
"""Checks a backend once: ``None`` when it is available, else why not."""


def _one_line(reason: str) -> str:
    text = " ".join(reason.split()).encode("ascii", "replace").decode() or "unavailable"
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class BackendBreaker:
    """Holds one backend's availability and probes it in the background.

    Args:
        probe: Checks the backend once (it must be bounded: a short deadline).
        name: The backend's name in messages (``sandbox``).
        probe_interval: Seconds between probes while available, and the first
            delay after the breaker opens.
        max_probe_interval: Longest delay between probes while unavailable.
        clock: Returns "now", aware UTC (tests inject one).
        on_available: Called (from the probe thread) when the breaker closes;
            the dispatcher passes its ``wake``.
    """

    def __init__(
        self,
        probe: Probe,
        *,
        name: str = "sandbox",
        probe_interval: float = 2.0,
        max_probe_interval: float = 30.0,
        clock: Callable[[], dt.datetime] = _utcnow,
        on_available: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._probe = probe
        self._interval = max(0.05, probe_interval)
        self._max_interval = max(self._interval, max_probe_interval)
        self._clock = clock
        self._on_available = on_available
        # One lock guards the state below: the probe thread, executor threads
        # (trip/succeeded) and tick threads (view) all touch it.
        self._lock = threading.Lock()
        self._since: dt.datetime | None = None
        self._reason = ""
        self._failed_probes = 0
        # Probe at once when the thread starts (the clock is not read here:
        # a test may wire it to a clock made later).
        self._next_probe = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state -------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether dispatch to the backend may go on."""
        with self._lock:
            return self._since is None

    def view(self) -> BackendView | None:
        """The backend as the planner sees it: ``None`` while available."""
        with self._lock:
            if self._since is None:
                return None
            return BackendView(self.name, self._since, self._reason, self._next_probe)

    def set_on_available(self, callback: Callable[[], None] | None) -> None:
        """Set the callback run when the breaker closes (the dispatcher's wake)."""
        self._on_available = callback

    def trip(self, reason: str) -> None:
        """A call failed for the platform's reason: open the breaker (or keep it open).

        The first reason is kept while the breaker stays open; the next
        probe is scheduled ``probe_interval`` from now unless one is due sooner.
        """
        now = self._clock()
        with self._lock:
            if self._since is not None:
                return
            self._since = now
            self._reason = _one_line(reason)
            self._failed_probes = 0
            self._next_probe = now + dt.timedelta(seconds=self._interval)
            why = self._reason
        log.warning(
            "%s backend unavailable: %s; dispatch to it is paused",
            self.name,
            why,
            extra={"backend": self.name},
        )
        self._kick.set()  # the probe thread reschedules to the new next probe

    def succeeded(self) -> None:
        """A run's calls to the backend worked: while open, probe now.

        A success never closes the breaker by itself: the run's last engine
        call may predate the outage (a command that exited just before the
        engine went away reports its exit just after), so only the health
        probe says the backend is back. The success only brings that probe
        forward, so a recovery is seen at once, not after the probe delay.
        """
        now = self._clock()
        with self._lock:
            if self._since is None or self._next_probe <= now:
                return
            self._next_probe = now
        self._kick.set()

    def _close(self) -> bool:
        with self._lock:
            if self._since is None:
                return False
            down = self._clock() - self._since
            self._since = None
            self._reason = ""
            self._failed_probes = 0
            self._next_probe = self._clock() + dt.timedelta(seconds=self._interval)
        log.info(
            "%s backend available again after %.1fs; dispatch resumes",
            self.name,
            down.total_seconds(),
            extra={"backend": self.name},
        )
        if self._on_available is not None:
            try:
                self._on_available()
            except Exception:
                log.exception("waking the dispatcher failed")
        return True

    # -- probing -------------------------------------------------------------

    def probe_once(self) -> bool:
        """Probe the backend now and update the breaker.

        Returns:
            Whether the backend is available.
        """
        try:
            problem = self._probe()
        except Exception as exc:  # a probe must never kill the probe thread
            problem = f"probe failed: {exc!r}"
        if problem is None:
            self._close()
            with self._lock:
                self._next_probe = self._clock() + dt.timedelta(seconds=self._interval)
            return True
        now = self._clock()
        with self._lock:
            if self._since is None:
                self._since = now
                self._reason = _one_line(problem)
                self._failed_probes = 0
                opened = True
            else:
                self._reason = _one_line(problem)  # the latest probe says why now
                opened = False
            self._failed_probes += 1
            # Doubling delay while down: the backend is not hammered, and a
            # long outage costs one probe per max_probe_interval.
            delay = min(self._max_interval, self._interval * 2 ** min(self._failed_probes - 1, 30))
            self._next_probe = now + dt.timedelta(seconds=delay)
            why = self._reason
        if opened:
            log.warning(
                "%s backend unavailable: %s; dispatch to it is paused",
                self.name,
                why,
                extra={"backend": self.name},
            )
        return False

    def start(self) -> None:
        """Start the probe thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._loop, name=f"kanban-{self.name}-probe", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the probe thread."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                wait = (self._next_probe - self._clock()).total_seconds()
            if wait > 0:
                self._kick.wait(wait)
                self._kick.clear()
                continue  # re-read the schedule: a trip may have moved it
            self.probe_once()
