"""Creating tasks: many in one transaction, each with its own answer.

CreateTask calls that arrive together are written together
(:mod:`services.kanban.create_batches`): a transaction's round trips to the
database, not its rows, are what a create costs, so a batch reads what it
needs in one statement, inserts its tasks and its events in one statement
each, and commits once. Every create still gets the answer it would have got
alone: a bad one is refused by itself and the others are written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from services.kanban import limits
from services.kanban.models import Board, Profile, Task, TaskLink, utcnow
from services.kanban.store import Effects, events, links, new_id, profiles
from services.kanban.vocabulary import TaskStatus
from services.runtime.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ServiceError,
    quote,
)

CREATE_STATUSES = frozenset({TaskStatus.TRIAGE, TaskStatus.TODO, TaskStatus.READY})
MAX_TITLE = limits.TEXTS["title"].size
MAX_REQUEST_ID = limits.TEXTS["request_id"].size


@dataclass(frozen=True)
class NewTask:
    """One CreateTask request, as the store takes it.

    Attributes:
        values: Column values: board_id, title, status and the optional fields.
        parents: Parent task ids to wait for.
        request_id: Idempotency key; empty = none.
    """

    values: dict[str, Any]
    parents: Sequence[str] = ()
    request_id: str = ""


@dataclass(frozen=True)
class Created:
    """What one create made (or found).

    Attributes:
        task: The task row (stays loaded after the commit).
        parent_ids: Its parents.
        deduplicated: An earlier create with the same ``request_id`` made it.
    """

    task: Task
    parent_ids: list[str]
    deduplicated: bool


def validate(values: dict[str, Any]) -> None:
    """Refuse bad task values (title, command, max runtime) before any write."""
    if "title" in values:
        title = values["title"]
        if not title.strip():
            raise InvalidArgument("task.title: required")
        if len(title) > MAX_TITLE:
            raise InvalidArgument(f"task.title: at most {MAX_TITLE} characters")
    if "command" in values and any(not isinstance(a, str) for a in values["command"]):
        raise InvalidArgument("task.command: every argument must be a string")
    runtime = values.get("max_runtime_seconds")
    if runtime is not None and runtime <= 0:
        raise InvalidArgument("task.max_runtime: must be positive")


def create_many(
    session: Session, items: Sequence[NewTask], *, source: str, effects: Effects
) -> list[Created | ServiceError]:
    """Create tasks, or return the ones earlier calls with their ``request_id`` made.

    Args:
        session: The caller's write session.
        items: The creates, in the order their events are appended.
        source: Event source.
        effects: Collects the dispatcher wake-up.

    Returns:
        One answer per item, in order: what it made or found, or the error it
        alone is refused with (InvalidArgument: bad title, status, parents or
        command; NotFound: the board or a parent does not exist;
        AlreadyExists: ``request_id`` was used for another board;
        PermissionDenied: the assignee's profile does not allow the image).
        A database error raises and fails the whole transaction.
    """
    answers: list[Created | ServiceError | None] = [None] * len(items)
    for i, item in enumerate(items):
        if len(item.request_id) > MAX_REQUEST_ID:
            answers[i] = InvalidArgument(f"request_id: at most {MAX_REQUEST_ID} characters")
    live = [i for i, a in enumerate(answers) if a is None]
    boards = {_board(items[i]) for i in live}
    rids = {items[i].request_id for i in live if items[i].request_id}
    found_boards, earlier = _precheck(session, boards, rids)
    parents = _parent_statuses(session, [p for i in live for p in items[i].parents])
    images = _profiles_for_images(session, [items[i] for i in live])
    now = utcnow()
    made: dict[str, int] = {}  # request_id -> index of the item that makes its task
    rows: list[tuple[int, Task, list[str]]] = []
    for i in live:
        item = items[i]
        board_id = _board(item)
        if item.request_id in earlier:
            task = earlier[item.request_id]
            answers[i] = _other_board(task, board_id, item.request_id) or Created(
                task, links.parent_ids(session, [task.task_id])[task.task_id], True
            )
            continue
        try:
            task, unique_parents = _build(item, board_id, found_boards, parents, images, now)
        except ServiceError as err:
            answers[i] = err
            continue
        if item.request_id and item.request_id in made:
            continue  # answered below, by the task the first of them makes
        if item.request_id:
            made[item.request_id] = i
        rows.append((i, task, unique_parents))
    if rows:
        _insert(session, rows, source=source, now=now)
        effects.wake = effects.wake or any(
            t.status in (TaskStatus.READY, TaskStatus.TODO) for _, t, _ in rows
        )
    # Parents as a read returns them (sorted), not as the request listed them.
    by_index = {i: Created(t, sorted(p), False) for i, t, p in rows}
    for i in live:
        if answers[i] is None and i not in by_index:
            # A second create in the batch with the first's request_id: the first's task.
            first = by_index[made[items[i].request_id]]
            answers[i] = _other_board(first.task, _board(items[i]), items[i].request_id) or (
                Created(first.task, first.parent_ids, True)
            )
    return [by_index.get(i) or a for i, a in enumerate(answers)]  # type: ignore[misc]


def _board(item: NewTask) -> str:
    return str(item.values.get("board_id") or "default")


def _precheck(
    session: Session, boards: set[str], rids: set[str]
) -> tuple[set[str], dict[str, Task]]:
    """The boards that exist, and the tasks earlier creates with these request ids made.

    The common case (every board exists, no request id seen before) is one
    statement, which on PostgreSQL also enters the event gate the batch's
    events need next: each statement is a round trip while the transaction
    is open, and they are most of what a create costs.
    """
    columns: list[Any] = [
        select(func.count()).select_from(Board).where(Board.board_id.in_(boards)).scalar_subquery(),
        select(func.count()).where(Task.request_id.in_(rids)).scalar_subquery()
        if rids
        else literal(0),
    ]
    gate = events.gate_column(session)
    if gate is not None:
        columns.append(gate)
    row = session.execute(select(*columns)).one()
    if gate is not None:
        events.gate_entered(session)
    found = boards
    if row[0] != len(boards):
        found = set(session.scalars(select(Board.board_id).where(Board.board_id.in_(boards))))
    earlier: dict[str, Task] = {}
    if rids and row[1]:
        for task in session.scalars(select(Task).where(Task.request_id.in_(rids))):
            earlier[str(task.request_id)] = task
    return found, earlier


def _parent_statuses(session: Session, ids: list[str]) -> dict[str, str]:
    wanted = {p for p in ids if p}
    if not wanted:
        return {}
    stmt = select(Task.task_id, Task.status).where(Task.task_id.in_(wanted))
    return {str(row.task_id): str(row.status) for row in session.execute(stmt)}


def _profiles_for_images(session: Session, items: list[NewTask]) -> dict[str, Profile]:
    """The profiles whose allowed images the items' images must pass.

    An unassigned task's image is checked when it is assigned.
    """
    names = {
        str(i.values["assignee"])
        for i in items
        if i.values.get("assignee") and i.values.get("image")
    }
    if not names:
        return {}
    return {p.name: p for p in session.scalars(select(Profile).where(Profile.name.in_(names)))}


def _build(
    item: NewTask,
    board_id: str,
    found_boards: set[str],
    parents: dict[str, str],
    images: dict[str, Profile],
    now: dt.datetime,
) -> tuple[Task, list[str]]:
    values = item.values
    validate({"title": values.get("title", ""), **values})
    status = values.get("status") or TaskStatus.READY
    if status not in CREATE_STATUSES:
        raise InvalidArgument(
            "task.status: must be TaskStatus.TRIAGE, TaskStatus.TODO or TaskStatus.READY on create"
        )
    if board_id not in found_boards:
        raise NotFound(f"board {quote(board_id)} not found")
    unique_parents = list(dict.fromkeys(item.parents))
    for parent in unique_parents:
        if not parent:
            raise InvalidArgument("parent_ids: empty id")
        if parent not in parents:
            raise NotFound(f"parent task {quote(parent)} not found")
    profile = images.get(str(values.get("assignee") or ""))
    if profile is not None and values.get("image"):
        profiles.check_image(profile, str(values["image"]))
    task = Task(**{**values, "board_id": board_id, "status": status})
    task.task_id = new_id("t")
    task.request_id = item.request_id or None
    task.create_time = task.update_time = now
    if status == TaskStatus.READY and any(parents[p] != TaskStatus.DONE for p in unique_parents):
        task.status = TaskStatus.TODO
    task.ready_time = now if task.status == TaskStatus.READY else None
    return task, unique_parents


def _insert(
    session: Session, rows: list[tuple[int, Task, list[str]]], *, source: str, now: dt.datetime
) -> None:
    """One INSERT for the tasks (and one for their links), one for their events."""
    session.add_all([task for _, task, _ in rows])
    session.add_all(
        [TaskLink(parent_id=p, child_id=task.task_id) for _, task, ps in rows for p in ps]
    )
    session.flush()
    events.append_many(
        session,
        [
            {
                "task_id": task.task_id,
                "board_id": task.board_id,
                "kind": "created",
                "source": source,
                "payload": {
                    "title": task.title,
                    "status": task.status,
                    "assignee": task.assignee or "",
                    "parent_ids": ps,
                },
            }
            for _, task, ps in rows
        ],
        now=now,
    )


def _other_board(task: Task, board_id: str, request_id: str) -> AlreadyExists | None:
    """The refusal of a ``request_id`` that made ``task`` on another board, if it did."""
    if task.board_id == board_id:
        return None
    return AlreadyExists(f"request_id {quote(request_id)} was used for another board")
