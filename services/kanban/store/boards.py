"""Boards."""

from __future__ import annotations

import re

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from services.kanban.models import DEFAULT_BOARD, Board, Task
from services.kanban.store import keys
from services.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    quote,
)

BOARD_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def create(session: Session, *, board_id: str, display_name: str, description: str) -> Board:
    """Create a board.

    Raises:
        InvalidArgument: ``board_id`` is malformed.
        AlreadyExists: A board with that id exists.
    """
    if not BOARD_ID.fullmatch(board_id):
        raise InvalidArgument(
            f"board.board_id: {quote(board_id)} must match [a-z0-9][a-z0-9-]{{0,62}}"
        )
    if keys.by_key(session, Board, board_id) is not None:
        raise AlreadyExists(f"board {quote(board_id)} already exists")
    board = Board(board_id=board_id, display_name=display_name or board_id, description=description)
    session.add(board)
    session.flush()
    return board


def get(session: Session, board_id: str) -> Board:
    """Return a board.

    Raises:
        InvalidArgument: ``board_id`` is empty.
        NotFound: No such board.
    """
    if not board_id:
        raise InvalidArgument("board_id: required")
    board = keys.by_key(session, Board, board_id)
    if board is None:
        raise NotFound(f"board {quote(board_id)} not found")
    return board


def require(session: Session, board_id: str) -> None:
    """Raise NotFound unless the board exists (a no-op for an empty id)."""
    if board_id and keys.by_key(session, Board, board_id) is None:
        raise NotFound(f"board {quote(board_id)} not found")


def list_boards(session: Session, *, after: str | None, limit: int) -> list[Board]:
    """Return boards by id, after ``after``."""
    stmt = select(Board).order_by(Board.board_id).limit(limit)
    if after is not None:
        stmt = stmt.where(Board.board_id > after)
    return list(session.scalars(stmt))


def task_counts(session: Session, board_ids: list[str]) -> dict[str, dict[str, int]]:
    """Return, per board, the number of tasks per status."""
    counts: dict[str, dict[str, int]] = {b: {} for b in board_ids}
    if not board_ids:
        return counts
    stmt = (
        select(Task.board_id, Task.status, func.count())
        .where(Task.board_id.in_(board_ids))
        .group_by(Task.board_id, Task.status)
    )
    for board_id, status, n in session.execute(stmt):
        counts[board_id][status] = int(n)
    return counts


def delete_board(session: Session, board_id: str, *, force: bool) -> list[str]:
    """Delete a board; with ``force`` its tasks go too.

    Returns:
        Ids of the board's tasks, which the caller deletes first with
        :func:`services.kanban.store.tasks.delete` when ``force`` is set.

    Raises:
        NotFound: No such board.
        FailedPrecondition: The `default` board, or it has tasks and not force.
    """
    get(session, board_id)
    if board_id == DEFAULT_BOARD:
        raise FailedPrecondition("board 'default' cannot be deleted")
    task_ids = list(session.scalars(select(Task.task_id).where(Task.board_id == board_id)))
    if task_ids and not force:
        raise FailedPrecondition(
            f"board {quote(board_id)} has {len(task_ids)} tasks; delete them or pass force"
        )
    return task_ids


def remove(session: Session, board_id: str) -> None:
    """Delete the board row (its tasks must be gone)."""
    session.execute(delete(Board).where(Board.board_id == board_id))
    session.flush()
