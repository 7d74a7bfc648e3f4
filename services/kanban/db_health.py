"""Kanban's health tells the truth about its database.

:class:`DatabaseHealth` runs ``SELECT 1`` in the background every
``database.probe_interval_seconds``, bounded by ``probe_timeout_seconds``,
and reports the result through the server's health service
(``Server.set_serving``): NOT_SERVING with ``database unreachable: <reason>``
while the database does not answer (the reason reaches ``GetStatus`` and
``longshore status`` as the backend's detail), SERVING again once it does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from sqlalchemy import text

from services.kanban.db import Database

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 160

SetServing = Callable[[bool, str], None]
"""``Server.set_serving``: (serving, why not)."""


def _one_line(err: BaseException) -> str:
    # ASCII on one line: it travels as health metadata, which allows no more.
    text_ = " ".join(str(err).split()).encode("ascii", "replace").decode() or type(err).__name__
    return text_ if len(text_) <= MAX_REASON_CHARS else text_[: MAX_REASON_CHARS - 3] + "..."


class DatabaseHealth:
    """Probes the database in the background and sets the server's health.

    Args:
        db: The database.
        set_serving: ``Server.set_serving``.
        interval: Seconds between probes.
        timeout: A probe slower than this counts as unreachable.
    """

    def __init__(
        self,
        db: Database,
        set_serving: SetServing,
        *,
        interval: float = 5.0,
        timeout: float = 3.0,
    ) -> None:
        self._db = db
        self._set_serving = set_serving
        self._interval = max(0.05, interval)
        self._timeout = max(0.05, timeout)
        # One probe thread: a probe stuck in the driver keeps it busy, and
        # the next probe reports that instead of piling up threads behind it.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kanban-db-probe")
        self._pending: Future[None] | None = None
        self._healthy: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def healthy(self) -> bool | None:
        """The last probe's verdict (``None`` before the first)."""
        return self._healthy

    def _select_one(self) -> None:
        with self._db.read() as s:
            s.execute(text("SELECT 1"))

    def probe_once(self) -> str | None:
        """Probe now, update the health, and say why the database is unreachable.

        Returns:
            ``None`` when the database answered; else the reason.
        """
        problem: str | None = None
        if self._pending is not None and not self._pending.done():
            problem = f"a probe has not returned for over {self._timeout:g}s"
        else:
            self._pending = self._pool.submit(self._select_one)
            try:
                self._pending.result(timeout=self._timeout)
            except FutureTimeout:
                problem = f"SELECT 1 took longer than {self._timeout:g}s"
            except Exception as err:  # any driver error means "not answering"
                problem = _one_line(err)
        self._report(problem)
        return problem

    def _report(self, problem: str | None) -> None:
        healthy = problem is None
        changed = healthy != self._healthy
        self._healthy = healthy
        if healthy:
            if changed:
                log.info("database reachable; serving")
                self._set_serving(True, "")
            return
        # Set every time: the reason may change while it stays down.
        self._set_serving(False, f"database unreachable: {problem}")
        if changed:
            log.warning("database unreachable: %s; health NOT_SERVING", problem)

    def start(self) -> None:
        """Start probing (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="kanban-db-health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop probing (a probe in flight is left to finish on its own)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.probe_once()
            except Exception:  # never let the health thread die
                log.exception("database probe failed unexpectedly")
