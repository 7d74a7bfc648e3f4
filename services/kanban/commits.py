"""What one committed write transaction changed, so that only the right readers wake.

The store marks a write session as it goes (:func:`note_event` when it
appends an event, :func:`note_output` when it appends run output);
:meth:`services.kanban.db.Database.write` turns the marks into one
:class:`Commit` just before committing and hands it to its listeners after
the commit. The event bus rings WatchEvents streams only for commits that
added events, run-output streams only for their own run, and ClaimTask polls
only for the profiles whose tasks changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from services.kanban.models import Task

#: A profile or run name that stands for "any": what changed is not known.
WILDCARD = "*"
_EVENT_TASKS = "longshore.commit.event_tasks"
_OUTPUT_RUNS = "longshore.commit.output_runs"
_PROFILES = "longshore.commit.profiles"


@dataclass(frozen=True)
class Commit:
    """One committed transaction, as the readers waiting on the bus see it.

    Attributes:
        added_events: The event log grew.
        output_runs: Runs whose output grew or that gained an event (so a
            stream following one may have reached its end); may hold
            :data:`WILDCARD`.
        profiles: Assignees of the tasks whose events were appended, and
            profiles changed (their ClaimTask polls may have work now); may
            hold :data:`WILDCARD`.
    """

    added_events: bool = False
    output_runs: frozenset[str] = frozenset()
    profiles: frozenset[str] = frozenset()

    @classmethod
    def everything(cls) -> Commit:
        """A commit that may have changed anything (after missed notifications)."""
        wild = frozenset({WILDCARD})
        return cls(added_events=True, output_runs=wild, profiles=wild)

    def touches_profile(self, profile: str) -> bool:
        """Whether polls of ``profile`` may have work after this commit."""
        return profile in self.profiles or WILDCARD in self.profiles

    def touches_run(self, run_id: str) -> bool:
        """Whether a stream following ``run_id`` may have more to read."""
        return run_id in self.output_runs or WILDCARD in self.output_runs


def note_event(session: Session, task_id: str, run_id: str = "") -> None:
    """Mark ``session``: an event about ``task_id`` (and ``run_id``) was appended."""
    session.info.setdefault(_EVENT_TASKS, set()).add(task_id)
    if run_id:
        session.info.setdefault(_OUTPUT_RUNS, set()).add(run_id)


def note_output(session: Session, run_id: str) -> None:
    """Mark ``session``: output of ``run_id`` was appended."""
    session.info.setdefault(_OUTPUT_RUNS, set()).add(run_id)


def note_profile(session: Session, name: str) -> None:
    """Mark ``session``: profile ``name`` changed (its polls may have work, or an error)."""
    session.info.setdefault(_PROFILES, set()).add(name)


def of(session: Session) -> Commit:
    """The :class:`Commit` a write session is about to make (call before it commits).

    Assignees are read from the tasks already loaded in the session, never
    with a query: the transaction still holds its locks here. A task not loaded (or
    whose assignee is not) makes the profiles a wildcard, which costs waiting
    polls one cheap read each lane, never a missed wake-up.
    """
    event_tasks: set[str] = session.info.get(_EVENT_TASKS, set())
    runs: set[str] = session.info.get(_OUTPUT_RUNS, set())
    noted: set[str] = session.info.get(_PROFILES, set())
    if not event_tasks:
        return Commit(output_runs=frozenset(runs), profiles=frozenset(noted))
    assignees: dict[str, str | None] = {}
    for obj in session.identity_map.values():
        if isinstance(obj, Task) and obj.task_id in event_tasks:
            loaded = inspect(obj).dict
            if "assignee" in loaded:
                assignees[obj.task_id] = loaded["assignee"]
    if len(assignees) < len(event_tasks):
        profiles = frozenset({WILDCARD})
    else:
        profiles = frozenset(a for a in assignees.values() if a) | noted
    return Commit(added_events=True, output_runs=frozenset(runs), profiles=profiles)
