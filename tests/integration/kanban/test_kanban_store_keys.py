"""``keys.by_key``: ``Session.get``'s meaning through statements built once (both databases)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from services.kanban import models
from services.kanban.db import Database, make_engine
from services.kanban.migrations import upgrade
from services.kanban.store import keys


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    upgrade(database_url)
    database = Database(make_engine(database_url, instrument=False))
    with database.write() as s:
        s.add(models.Board(board_id="keys", display_name="Keys", description="before"))
    yield database
    database.dispose()


@pytest.fixture
def statements(db: Database) -> Iterator[list[str]]:
    """Every SQL statement the engine runs while the test does."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    yield seen
    event.remove(db.engine, "before_cursor_execute", record)


def _selects(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith("SELECT")]


def test_a_missing_row_is_none_and_a_present_one_is_read(db: Database) -> None:
    with db.read() as s:
        assert keys.by_key(s, models.Board, "nope") is None
        board = keys.by_key(s, models.Board, "keys")
        assert board is not None and board.description == "before"
        assert keys.by_key(s, models.Profile, "keys") is None  # another entity, same key


def test_an_object_the_session_holds_is_returned_without_sql(
    db: Database, statements: list[str]
) -> None:
    with db.read() as s:
        first = keys.by_key(s, models.Board, "keys")
        before = len(_selects(statements))
        again = keys.by_key(s, models.Board, "keys")
        assert again is first
        assert len(_selects(statements)) == before


def test_an_expired_object_is_read_again(db: Database, statements: list[str]) -> None:
    with db.read() as s:
        board = keys.by_key(s, models.Board, "keys")
        assert board is not None
        s.expire(board)
        before = len(_selects(statements))
        again = keys.by_key(s, models.Board, "keys")
        assert again is board
        assert len(_selects(statements)) == before + 1
        assert board.description == "before"


def test_lock_reads_for_update_on_postgres_and_keeps_held_attributes(
    db: Database, statements: list[str]
) -> None:
    with db.write() as s:
        board = keys.by_key(s, models.Board, "keys")
        assert board is not None
        board.description = "changed here"
        before = len(_selects(statements))
        locked = keys.by_key(s, models.Board, "keys", lock=True)
        assert locked is board
        assert board.description == "changed here"  # not overwritten by the re-read
        new = _selects(statements)[before:]
        if db.is_postgres:
            assert any("FOR UPDATE" in q for q in new), new
        else:
            # The write transaction is exclusive already: no second read.
            assert not new


def test_lock_makes_a_second_writer_wait_on_postgres(db: Database) -> None:
    if not db.is_postgres:
        pytest.skip("SQLite has one writer at a time already")
    other = Database(make_engine(str(db.engine.url.render_as_string(False)), instrument=False))
    holding, release, waited = threading.Event(), threading.Event(), threading.Event()
    seen: list[str] = []

    def second() -> None:
        holding.wait(10)
        with other.write() as s:
            board = keys.by_key(s, models.Board, "keys", lock=True)
            waited.set()
            assert board is not None
            seen.append(board.description)

    thread = threading.Thread(target=second)
    thread.start()
    try:
        with db.write() as s:
            board = keys.by_key(s, models.Board, "keys", lock=True)
            assert board is not None
            board.description = "first writer"
            s.flush()
            holding.set()
            assert not waited.wait(0.5), "the second locking read did not wait for the row"
            release.set()
        thread.join(10)
        assert seen == ["first writer"]
    finally:
        release.set()
        thread.join(10)
        other.dispose()


def test_a_row_locked_once_is_not_read_again_in_its_transaction(
    db: Database, statements: list[str]
) -> None:
    with db.write() as s:
        first = keys.by_key(s, models.Board, "keys", lock=True)
        before = len(_selects(statements))
        again = keys.by_key(s, models.Board, "keys", lock=True)
        assert again is first
        assert len(_selects(statements)) == before
    with db.write() as s:  # a new transaction locks anew
        before = len(_selects(statements))
        assert keys.by_key(s, models.Board, "keys", lock=True) is not None
        assert len(_selects(statements)) == before + 1
