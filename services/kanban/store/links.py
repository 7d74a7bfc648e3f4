"""Task links: a child waits in todo until every parent is done."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from services.kanban.models import Task, TaskLink
from services.kanban.store import Effects, events, lifecycle
from services.kanban.vocabulary import TaskStatus
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound


def waiting_on(session: Session, task_ids: Iterable[str]) -> dict[str, list[str]]:
    """Return, per child id, its parents that are not done (only non-empty)."""
    ids = list(task_ids)
    out: dict[str, list[str]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        stmt = (
            select(TaskLink.child_id, TaskLink.parent_id)
            .join(Task, Task.task_id == TaskLink.parent_id)
            .where(TaskLink.child_id.in_(chunk), Task.status != TaskStatus.DONE)
            .order_by(TaskLink.child_id, TaskLink.parent_id)
        )
        for child, parent in session.execute(stmt):
            out.setdefault(child, []).append(parent)
    return out


# Read by every answer that carries a task (claims, completions, GetTask): built once.
_PARENTS = (
    select(TaskLink.child_id, TaskLink.parent_id)
    .where(TaskLink.child_id.in_(bindparam("ids", expanding=True)))
    .order_by(TaskLink.parent_id)
)


def parent_ids(session: Session, task_ids: Sequence[str]) -> dict[str, list[str]]:
    """Return, per child id, every parent id (sorted)."""
    out: dict[str, list[str]] = {t: [] for t in task_ids}
    if not task_ids:
        return out
    for child, parent in session.execute(_PARENTS, {"ids": list(task_ids)}):
        out[child].append(parent)
    return out


def _ancestors(session: Session, task_id: str) -> set[str]:
    seen: set[str] = set()
    frontier = [task_id]
    while frontier:
        stmt = select(TaskLink.parent_id).where(TaskLink.child_id.in_(frontier))
        frontier = [p for p in session.scalars(stmt) if p not in seen]
        seen.update(frontier)
    return seen


def link(session: Session, parent_id: str, child_id: str, *, source: str, effects: Effects) -> Task:
    """Make ``child_id`` wait for ``parent_id``.

    Raises:
        InvalidArgument: A self link.
        NotFound: Either task.
        FailedPrecondition: A cycle, or the child is running or done.
    """
    if parent_id and parent_id == child_id:
        raise InvalidArgument("child_id: a task cannot wait for itself")
    parent = lifecycle.get(session, parent_id)
    child = lifecycle.get(session, child_id, for_update=True)
    if child.status in (TaskStatus.RUNNING, TaskStatus.DONE):
        raise FailedPrecondition(f"task {child_id!r} is {child.status}; cannot add a parent")
    if session.get(TaskLink, (parent_id, child_id)) is not None:
        return child
    if child_id in _ancestors(session, parent_id):
        raise FailedPrecondition(f"linking {parent_id!r} -> {child_id!r} would make a cycle")
    session.add(TaskLink(parent_id=parent_id, child_id=child_id))
    session.flush()
    events.append(
        session,
        task_id=child_id,
        board_id=child.board_id,
        kind="linked",
        source=source,
        payload={"parent_id": parent_id},
    )
    if child.status == TaskStatus.READY and parent.status != TaskStatus.DONE:
        lifecycle.set_status(
            session,
            child,
            TaskStatus.TODO,
            reason=f"waiting on {parent_id}",
            source=source,
            effects=effects,
        )
    return child


def unlink(
    session: Session, parent_id: str, child_id: str, *, source: str, effects: Effects
) -> Task:
    """Remove a link.

    Raises:
        NotFound: Either task, or the link.
    """
    lifecycle.get(session, parent_id)
    child = lifecycle.get(session, child_id)
    found = session.get(TaskLink, (parent_id, child_id))
    if found is None:
        raise NotFound(f"link {parent_id!r} -> {child_id!r} not found")
    session.delete(found)
    session.flush()
    events.append(
        session,
        task_id=child_id,
        board_id=child.board_id,
        kind="unlinked",
        source=source,
        payload={"parent_id": parent_id},
    )
    effects.wake = effects.wake or child.status == TaskStatus.TODO
    return child
