"""Rows by primary key through statements built once: what ``Session.get`` does, cheaper.

``Session.get`` builds its SELECT anew on every call that misses the
session (a new statement, its annotated criterion, its cache key). Here that
is more than half of a lookup's cost (0.49 ms against 0.27 ms with a
statement built once, whose cache key SQLAlchemy memoizes), and a worker's
claim, heartbeat and completion make about nine lookups between them.

:func:`by_key` keeps ``Session.get``'s meaning:

- an object the session already holds (and has not expired) is returned
  without SQL;
- with ``lock`` on PostgreSQL the row is read ``FOR UPDATE`` even when the
  session holds it, and an object already held keeps its attributes, as
  with ``Session.get(..., with_for_update=True)``. Only a row this
  transaction has locked already is not read again: nobody else can have
  changed it since (no store code uses savepoints, whose rollback would
  release such a lock);
- with ``lock`` on SQLite nothing changes: a write transaction is exclusive
  from its first statement, so every object its session holds was read
  under that lock already (and SQLite has no ``FOR UPDATE``);
- no row: None.

Entities with a composite key (links) keep ``Session.get``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session, class_mapper
from sqlalchemy.orm.attributes import instance_state

_T = TypeVar("_T")

#: ``session.info`` key: the (entity, key) rows this transaction has locked.
_LOCKED = "longshore.keys.locked"
#: (entity, lock) -> its statement; a handful of entities, built on first use.
_STATEMENTS: dict[tuple[type[Any], bool], Select[Any]] = {}


def _statement(entity: type[_T], lock: bool) -> Select[tuple[_T]]:
    stmt = _STATEMENTS.get((entity, lock))
    if stmt is None:
        (column,) = class_mapper(entity).primary_key
        stmt = select(entity).where(column == bindparam("key"))
        if lock:
            stmt = stmt.with_for_update()
        _STATEMENTS[(entity, lock)] = stmt
    return stmt


def by_key(session: Session, entity: type[_T], key: Any, *, lock: bool = False) -> _T | None:
    """The ``entity`` row with primary key ``key``, or None (see the module docstring)."""
    if lock and session.get_bind().dialect.name != "postgresql":
        lock = False
    locked: set[tuple[type[Any], Any]] | None = session.info.get(_LOCKED)
    if not lock or (locked is not None and (entity, key) in locked):
        held: _T | None = session.identity_map.get((entity, (key,), None))
        if held is not None and not instance_state(held).expired:
            return held
    found = session.execute(_statement(entity, lock), {"key": key}).scalar_one_or_none()
    if lock and found is not None:
        # Until the transaction ends, with its session.
        session.info.setdefault(_LOCKED, set()).add((entity, key))
    return found
