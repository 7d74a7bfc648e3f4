"""The executor's :class:`RunSink` over the database: sandbox, output, leases, endings.

Every call is fenced by ``run_id``: once a run is no longer its task's
running run (cancelled, reclaimed, finished), the sink refuses it and
changes nothing, so a slow or orphaned exec can never overwrite a newer run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from services.kanban import models
from services.kanban.db import Database
from services.kanban.executor import Outcome, OutcomeKind
from services.kanban.store import Effects, events, runs
from services.runtime.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)
SOURCE = "kanban.executor"


class DbRunSink:
    """Records a sandbox run's progress in the database.

    Args:
        db: The database.
        lease_seconds: Lease granted by each heartbeat.
        max_output_bytes: Output kept per run.
        failure_limit: Counted failures that open the breaker.
        after_commit: Applies post-commit effects (wake, release).
    """

    def __init__(
        self,
        db: Database,
        *,
        lease_seconds: float,
        max_output_bytes: int,
        failure_limit: int,
        after_commit: Callable[[Effects], None],
    ) -> None:
        self._db = db
        self._lease = lease_seconds
        self._max_output = max_output_bytes
        self._failure_limit = failure_limit
        self._after = after_commit

    def started(self, run_id: str, sandbox_id: str) -> bool:
        """Record the acquired sandbox; False when the run is stale."""
        try:
            with self._db.unlocked_write() as s:
                runs.fenced(s, run_id, lock=True)
                runs.set_sandbox(s, run_id, sandbox_id)
        except (FailedPrecondition, NotFound):
            return False
        return True

    def output(self, run_id: str, data: bytes) -> None:
        """Append output; a stale run's output is dropped."""
        try:
            with self._db.unlocked_write() as s:
                runs.append_output(s, run_id, data, max_bytes=self._max_output)
        except (FailedPrecondition, NotFound):
            log.debug("output of stale run %s dropped", run_id)

    def heartbeat(self, run_id: str) -> bool:
        """Renew the lease; False when the run is stale."""
        with self._db.unlocked_write() as s:
            return runs.heartbeat(s, run_id, lease_seconds=self._lease) is not None

    def finished(self, run_id: str, outcome: Outcome) -> None:
        """Record how the run ended and move its task (done, retry or blocked)."""
        if outcome.kind is OutcomeKind.ABANDONED:
            # The process is going away: the lease expires and a tick (here
            # after a restart, or another replica) reclaims and re-runs it.
            log.info("run %s abandoned; it will be reclaimed after its lease", run_id)
            return
        effects = Effects()
        with self._db.write() as s:
            try:
                run, task = runs.fenced(s, run_id, lock=True)
            except (FailedPrecondition, NotFound):
                log.info("run %s already ended; outcome %s ignored", run_id, outcome.kind.value)
                return
            if outcome.truncated:
                run.output_truncated = True
            if outcome.sandbox_id and not run.sandbox_id:
                run.sandbox_id = task.sandbox_id = outcome.sandbox_id
            if outcome.kind is OutcomeKind.SUCCEEDED:
                run.exit_code = 0
                runs.complete(s, run_id, summary="exit 0", source=SOURCE, effects=effects)
            elif outcome.kind is OutcomeKind.CANCELLED:
                runs.end_run(run, status=models.RUN_CANCELLED, error=outcome.error)
                task.current_run_id = None
                task.status = models.READY
                task.ready_time = models.utcnow()
                events.append(
                    s,
                    task_id=task.task_id,
                    board_id=task.board_id,
                    kind="cancelled",
                    source=SOURCE,
                    payload={"reason": outcome.error},
                    run_id=run_id,
                )
                effects.wake = True
            else:
                status = {
                    OutcomeKind.TIMED_OUT: models.RUN_TIMED_OUT,
                    OutcomeKind.SPAWN_FAILED: models.RUN_SPAWN_FAILED,
                }.get(outcome.kind, models.RUN_FAILED)
                error = outcome.error or (
                    f"exit code {outcome.exit_code}" if outcome.exit_code is not None else "failed"
                )
                runs.fail(
                    s,
                    run,
                    task,
                    status=status,
                    error=error,
                    retryable=True,
                    failure_limit=self._failure_limit,
                    source=SOURCE,
                    effects=effects,
                    exit_code=outcome.exit_code,
                )
        self._after(effects)
