"""The latest readiness plan, kept per replica: reads answer from it, not from a new plan.

GetTask, ExplainTask and ListTasks(include_readiness) say why each task is
(not) about to run, as the next tick would see it. A plan reads every ready
and todo task, so building one per read made each read as costly as a dry
run. :class:`LatestPlan` builds it at most once per state of what it plans
from and reuses it for every read until that state moves:

- the event log (every task, run and link change appends an event) and the
  profiles (their changes append none), read as one cheap *stamp* query per
  read, so another replica's commits invalidate it too;
- the sandbox backend's breaker state;
- time: a task whose retry backoff ends or a run whose lease expires changes
  the plan without any write, so a plan is valid only until the earliest
  such moment it saw.

The answer is the same :class:`~services.kanban.planner.Readiness` the plan
gives (as informative as ever); a dry run still builds its own plan.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.kanban import models, snapshot
from services.kanban.planner import BackendView, Readiness, ReadinessReason, Snapshot, plan
from services.kanban.tick import Dispatcher
from services.kanban.vocabulary import RunStatus

#: Most tasks outside the walk (running, done, ...) a plan keeps answers for.
MAX_EXTRA_TASKS = 2000


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class _Kept:
    stamp: tuple[object, ...]
    backend: BackendView | None
    valid_until: dt.datetime | None
    extra: frozenset[str]
    readiness: dict[str, Readiness]


class LatestPlan:
    """Readiness answers from the latest plan this replica built.

    Args:
        dispatcher: Gives the clock, the limits and the backend's state.
        generation: The event bus's ring count (:attr:`EventBus.generation`),
            part of the stamp: it moves when an event commits below the newest
            id, which the stamp query alone cannot see.
    """

    def __init__(self, dispatcher: Dispatcher, generation: Callable[[], int] = lambda: 0) -> None:
        self._dispatcher = dispatcher
        self._generation = generation
        self._kept: _Kept | None = None
        # Guards building: concurrent reads that find the plan stale wait for
        # one build instead of each building the same plan.
        self._build_lock = threading.Lock()
        #: Plans built so far (a test reads it).
        self.builds = 0

    def readiness(self, session: Session, rows: Sequence[models.Task]) -> dict[str, Readiness]:
        """Explain each of ``rows`` as the next tick would see it."""
        now = self._dispatcher.now()
        backend = self._backend()
        # The stamp is read before the plan's own reads: a plan built after
        # it is at least as new as it, so a kept plan is never older than
        # its stamp says.
        stamp = (self._generation(), *_stamp(session))
        wanted = {r.task_id for r in rows}
        # Read without the lock: replacing the kept plan is one reference
        # assignment, and a plan found stale is checked again under it.
        kept = self._kept
        if not self._fresh(kept, stamp, backend, now, wanted):
            with self._build_lock:
                kept = self._kept
                if not self._fresh(kept, stamp, backend, now, wanted):
                    extra = wanted
                    if kept is not None and kept.stamp == stamp and kept.backend == backend:
                        # Same state, new tasks outside the walk: keep the old ones too.
                        extra = wanted | kept.extra if len(kept.extra) < MAX_EXTRA_TASKS else wanted
                    kept = self._build(session, stamp, backend, now, frozenset(extra))
                    self._kept = kept
        assert kept is not None
        fallback = Readiness(ReadinessReason.NOT_DISPATCHABLE)
        return {r.task_id: kept.readiness.get(r.task_id, fallback) for r in rows}

    def _backend(self) -> BackendView | None:
        breaker = self._dispatcher.backend
        return breaker.view() if breaker is not None else None

    @staticmethod
    def _fresh(
        kept: _Kept | None,
        stamp: tuple[object, ...],
        backend: BackendView | None,
        now: dt.datetime,
        wanted: set[str],
    ) -> bool:
        return (
            kept is not None
            and kept.stamp == stamp
            and kept.backend == backend
            and (kept.valid_until is None or now < kept.valid_until)
            and all(t in kept.readiness or t in kept.extra for t in wanted)
        )

    def _build(
        self,
        session: Session,
        stamp: tuple[object, ...],
        backend: BackendView | None,
        now: dt.datetime,
        extra: frozenset[str],
    ) -> _Kept:
        snap = snapshot.build(
            session, now=now, extra_task_ids=sorted(extra), sandbox_backend=backend
        )
        result = plan(snap, settings=self._dispatcher.limits.planner).readiness
        self.builds += 1
        return _Kept(stamp, backend, _valid_until(session, snap, now), extra, result)


# Every readiness read runs it: built once.
_STAMP = select(
    select(func.max(models.TaskEvent.event_id)).scalar_subquery(),
    select(func.count()).select_from(models.Profile).scalar_subquery(),
    select(func.max(models.Profile.update_time)).scalar_subquery(),
)


def _stamp(session: Session) -> tuple[object, ...]:
    """One small query: the newest event id and the profiles' count and newest change."""
    return tuple(session.execute(_STAMP).one())


def _valid_until(session: Session, snap: Snapshot, now: dt.datetime) -> dt.datetime | None:
    """The earliest moment after ``now`` at which time alone changes the plan."""
    moments = [
        _aware(t.next_attempt_time)
        for t in snap.tasks
        if t.next_attempt_time is not None and _aware(t.next_attempt_time) > now
    ]
    lease = session.scalar(
        select(func.min(models.TaskRun.lease_expire_time)).where(
            models.TaskRun.status == RunStatus.RUNNING,
            models.TaskRun.lease_expire_time >= now,
        )
    )
    if lease is not None:
        moments.append(_aware(lease))
    return min(moments) if moments else None
