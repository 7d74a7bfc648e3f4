"""The executor's :class:`RunSink` over the database: sandbox, output, leases, endings.

Every call is fenced by ``run_id``: once a run is no longer its task's
running run (cancelled, reclaimed, finished), the sink refuses it and
changes nothing, so a slow or orphaned exec can never overwrite a newer run.

A failed run is recorded with its failure class (``Outcome.failure_class``):
the work's count toward the profile's retry limit, the platform's never do;
both put the task back to ready after a backoff (``store.failures.fail``). A
failure that says the sandbox backend is down also opens the dispatcher's
breaker for it, before the task is put back, so the tick that the failure
wakes already sees the backend paused.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from sqlalchemy.exc import OperationalError

from services.kanban import models
from services.kanban.backends import BackendBreaker
from services.kanban.db import Database
from services.kanban.executor import FailureKind, Outcome, OutcomeKind
from services.kanban.planner import FailureClass, PlannerSettings
from services.kanban.store import effects_of, failures, runs
from services.kanban.vocabulary import RunStatus
from services.runtime.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)
SOURCE = "kanban.executor"
_WRITE_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 4.0)


class DbRunSink:
    """Records a sandbox run's progress in the database.

    Args:
        db: The database.
        lease_seconds: Lease granted by each heartbeat.
        max_output_bytes: Output kept per run.
        settings: The dispatcher's settings (failure limit, default backoff).
        backend: The sandbox backend's breaker, told of platform failures
            and successes; None = no breaker.
        clock: "Now" of a run's end (the dispatcher's clock).
    """

    def __init__(
        self,
        db: Database,
        *,
        lease_seconds: float,
        max_output_bytes: int,
        settings: PlannerSettings,
        backend: BackendBreaker | None = None,
        clock: Callable[[], dt.datetime] = models.utcnow,
    ) -> None:
        self._db = db
        self._lease = lease_seconds
        self._max_output = max_output_bytes
        self._settings = settings
        self._backend = backend
        self._clock = clock

    def started(self, run_id: str, sandbox_id: str) -> bool:
        """Record the acquired sandbox; False when the run is stale."""
        try:
            with self._db.write() as s:
                runs.fenced(s, run_id, lock=True)
                runs.set_sandbox(s, run_id, sandbox_id)
        except (FailedPrecondition, NotFound):
            return False
        return True

    def output(self, run_id: str, data: bytes) -> None:
        """Append output; a stale run's output is dropped."""
        try:
            with self._db.write() as s:
                runs.append_output(s, run_id, data, max_bytes=self._max_output)
        except (FailedPrecondition, NotFound):
            log.debug("output of stale run %s dropped", run_id)

    def heartbeat(self, run_id: str) -> bool:
        """Renew the lease; False when the run is stale."""
        with self._db.write() as s:
            return runs.heartbeat(s, run_id, lease_seconds=self._lease) is not None

    def finished(self, run_id: str, outcome: Outcome) -> None:
        """Record how the run ended and move its task (done, retry or blocked)."""
        if outcome.kind is OutcomeKind.ABANDONED:
            # The process is going away: the lease expires and a tick (here
            # after a restart, or another replica) reclaims and re-runs it.
            log.info("run %s abandoned; it will be reclaimed after its lease", run_id)
            return
        if self._backend is not None:
            # Before the write and its wake: the tick the wake triggers must
            # already see the backend paused, or it would spawn into the outage.
            if outcome.backend_down:
                self._backend.trip(outcome.error or outcome.kind.value)
            elif outcome.kind is OutcomeKind.SUCCEEDED:
                self._backend.succeeded()
        # The database may be restarting (a failover, a PostgreSQL restart):
        # retry the write for a while rather than lose the ending. If it never
        # lands, the run's lease expires and a tick reclaims it (platform).
        for delay in (*_WRITE_RETRY_DELAYS, None):
            try:
                self._record(run_id, outcome)
                return
            except OperationalError as err:
                if delay is None:
                    raise
                log.warning(
                    "recording the end of run %s failed (%s); retrying in %.1fs",
                    run_id,
                    str(err).splitlines()[0][:200],
                    delay,
                )
                time.sleep(delay)  # a bounded backoff on an executor thread

    def _record(self, run_id: str, outcome: Outcome) -> None:
        # The unit of work applies these effects after the commit
        # (``Database.on_effects``: the dispatcher kills, releases, wakes).
        with self._db.write() as s:
            effects = effects_of(s)
            try:
                run, task = runs.fenced(s, run_id, lock=True)
            except (FailedPrecondition, NotFound):
                log.info("run %s already ended; outcome %s ignored", run_id, outcome.kind.value)
                return
            runs.note_exec_end(
                run, task, truncated=outcome.truncated, sandbox_id=outcome.sandbox_id
            )
            if outcome.kind is OutcomeKind.SUCCEEDED:
                runs.complete(
                    s, run_id, summary="exit 0", source=SOURCE, effects=effects, exit_code=0
                )
            else:
                failure_class = outcome.failure_class or FailureClass.PLATFORM
                status = {
                    OutcomeKind.TIMED_OUT: RunStatus.TIMED_OUT,
                    OutcomeKind.SPAWN_FAILED: RunStatus.SPAWN_FAILED,
                    OutcomeKind.CANCELLED: RunStatus.CANCELLED,
                }.get(outcome.kind, RunStatus.FAILED)
                error = outcome.error or (
                    f"exit code {outcome.exit_code}" if outcome.exit_code is not None else "failed"
                )
                # A policy refusal (an image or spec the profile does not
                # allow) fails the same way every time: block at once.
                refused = outcome.kind is OutcomeKind.SPAWN_FAILED and outcome.failure_kind in (
                    FailureKind.PERMISSION_DENIED,
                    FailureKind.INVALID_SPEC,
                )
                failures.fail(
                    s,
                    run,
                    task,
                    status=status,
                    error=error,
                    retryable=not refused,
                    settings=self._settings,
                    source=SOURCE,
                    effects=effects,
                    exit_code=outcome.exit_code,
                    failure_class=failure_class,
                    now=self._clock(),
                )
