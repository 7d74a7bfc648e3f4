"""The only code that writes SQL: one module per resource.

Store functions take a :class:`~sqlalchemy.orm.Session` opened by the caller
(the RPC handler or the dispatcher owns the transaction), flush, and never
commit. What must happen after the commit (kill an exec, release a sandbox,
wake the dispatcher) is collected in an :class:`Effects`. The transaction's
own one, :func:`effects_of`, is applied by the unit of work: ``Database.write()``
hands it to its appliers once the commit succeeded (and never on rollback).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

#: ``session.info`` key of the transaction's :class:`Effects`.
EFFECTS = "effects"


def new_id(prefix: str) -> str:
    """Return a fresh random id such as ``t-3f9a0c1b2d4e5f60``."""
    return f"{prefix}-{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class Release:
    """A task that reached done or archived and whose sandbox may go."""

    task_id: str
    profile: str
    sandbox_id: str


@dataclass
class Effects:
    """Work to do once the transaction has committed.

    Attributes:
        cancelled_runs: Runs ended ``cancelled``: their execs must be killed.
        releases: Tasks whose sandbox should be released (force-removed).
        wake: A task may have become dispatchable: wake the dispatcher.
    """

    cancelled_runs: list[str] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    wake: bool = False


def effects_of(session: Session) -> Effects:
    """The effects of the session's transaction, applied after its commit.

    Args:
        session: A write session from ``Database.write()``.
    """
    found = session.info.get(EFFECTS)
    if not isinstance(found, Effects):
        found = session.info[EFFECTS] = Effects()
    return found
