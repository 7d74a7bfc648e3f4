"""The dispatcher's bulk transitions: reclaim, promote, assign the default, give up.

Each bucket of a tick's plan is applied with one compare-and-set UPDATE of
the task rows (``... WHERE task_id IN (...) AND <the status the plan saw>
RETURNING ...``) and one INSERT of the events of the rows it changed, not a
flush per task. The compare-and-set is what makes a stale plan harmless: a
task another writer moved since the snapshot (another replica's tick, an
API call) is simply not returned, and gets no event. On PostgreSQL an UPDATE
that meets a row locked by a concurrent writer waits for it and re-checks
the condition on the committed row (READ COMMITTED), so no lock wider than
the rows is needed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, case, or_, update
from sqlalchemy.orm import Session

from services.kanban.models import Task, TaskRun
from services.kanban.planner import BlockedRef, PlannerSettings, ReclaimRef, TaskRef
from services.kanban.store import Effects, events, failures, keys
from services.kanban.vocabulary import RunStatus, TaskStatus

_TASKS = cast(Table, Task.__table__)


def reclaim(
    session: Session,
    reclaims: Sequence[ReclaimRef],
    *,
    settings: PlannerSettings,
    source: str,
    effects: Effects,
    now: dt.datetime,
) -> None:
    """End expired or orphaned runs ``lost`` and retry (or block) their tasks.

    Rows are locked first (run, then task, as every fenced write does), so two
    replicas reclaiming one run serialize and the second finds it ended.
    Reclaims are few, and each goes through :func:`failures.fail`, where the
    retry rules live.
    """
    for ref in reclaims:
        run = keys.by_key(session, TaskRun, ref.run_id, lock=True)
        task = keys.by_key(session, Task, ref.task_id, lock=True)
        if run is None or task is None or task.current_run_id != run.run_id:
            continue
        # The plan's time and class: the task's backoff is the one the plan
        # (and so the dry run) computed.
        failures.fail(
            session,
            run,
            task,
            status=RunStatus.LOST,
            error=ref.reason,
            retryable=True,
            settings=settings,
            source=source,
            effects=effects,
            reason=ref.reason,
            failure_class=ref.failure_class,
            now=now,
        )
        effects.cancelled_runs.append(run.run_id)  # kill a straggling exec, if any


def promote(
    session: Session, task_ids: Sequence[str], *, source: str, effects: Effects, now: dt.datetime
) -> list[str]:
    """Move todo tasks whose parents are done to ready.

    Returns:
        The ids promoted (those still todo).
    """
    if not task_ids:
        return []
    stmt = (
        update(_TASKS)
        .where(_TASKS.c.task_id.in_(list(task_ids)), _TASKS.c.status == TaskStatus.TODO)
        .values(status=TaskStatus.READY, update_time=now, ready_time=now)
        .returning(_TASKS.c.task_id, _TASKS.c.board_id)
    )
    rows = sorted(session.execute(stmt))
    events.append_many(
        session,
        [
            {
                "task_id": task_id,
                "board_id": board_id,
                "kind": "promoted",
                "source": source,
                "payload": {
                    "from": TaskStatus.TODO,
                    "to": TaskStatus.READY,
                    "reason": "parents done",
                },
            }
            for task_id, board_id in rows
        ],
        now=now,
    )
    if rows:
        effects.wake = True  # a promoted task may be spawnable at once
    return [task_id for task_id, _ in rows]


def assign_default(
    session: Session, refs: Sequence[TaskRef], *, source: str, now: dt.datetime
) -> list[str]:
    """Give unassigned tasks their default assignee.

    Returns:
        The ids assigned (those still unassigned).
    """
    assignees = {ref.task_id: ref.assignee for ref in refs}
    if not assignees:
        return []
    stmt = (
        update(_TASKS)
        .where(
            _TASKS.c.task_id.in_(list(assignees)),
            or_(_TASKS.c.assignee.is_(None), _TASKS.c.assignee == ""),
        )
        .values(assignee=case(assignees, value=_TASKS.c.task_id), update_time=now)
        .returning(_TASKS.c.task_id, _TASKS.c.board_id)
    )
    rows = sorted(session.execute(stmt))
    events.append_many(
        session,
        [
            {
                "task_id": task_id,
                "board_id": board_id,
                "kind": "assigned",
                "source": source,
                "payload": {"from": "", "to": assignees[task_id]},
            }
            for task_id, board_id in rows
        ],
        now=now,
    )
    return [task_id for task_id, _ in rows]


def give_up(
    session: Session, refs: Sequence[BlockedRef], *, source: str, now: dt.datetime
) -> list[str]:
    """Block ready tasks whose breaker tripped (a ``gave_up`` event each).

    Returns:
        The ids blocked (those still ready: a reclaim in the same tick may
        have blocked one already).
    """
    reasons = {ref.task_id: ref.reason for ref in refs}
    if not reasons:
        return []
    stmt = (
        update(_TASKS)
        .where(_TASKS.c.task_id.in_(list(reasons)), _TASKS.c.status == TaskStatus.READY)
        .values(
            status=TaskStatus.BLOCKED,
            breaker_open=True,
            blocked_reason=case(reasons, value=_TASKS.c.task_id),
            update_time=now,
        )
        .returning(_TASKS.c.task_id, _TASKS.c.board_id)
    )
    rows = sorted(session.execute(stmt))
    events.append_many(
        session,
        [
            {
                "task_id": task_id,
                "board_id": board_id,
                "kind": "gave_up",
                "source": source,
                "payload": {"reason": reasons[task_id]},
            }
            for task_id, board_id in rows
        ],
        now=now,
    )
    return [task_id for task_id, _ in rows]
