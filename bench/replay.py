"""An independent checker of a run's history: replays the event log after the fact.

It reads ``task_events``, ``task_runs`` and ``profiles`` with plain SQL (none
of the kanban service's code, so a bug there cannot hide itself here) and
walks the log in id order. A run opens at its first ``claimed``/``spawned``
event and closes at its first ending event (``completed``, ``failed``, ...).
At every event it checks what several replicas sharing one database must
never do:

- two runs of one task open at once (a task run twice in parallel);
- more runs of a profile open than the profile's cap;

and after the walk, tasks whose work finished more than once (``completed``
twice) and runs whose row ended but whose log says nothing of it.

The event ids are the commit order only per transaction; a claim and a
completion committed by two replicas at the same moment could be seen in an
order the database did not serialise. The cap check is therefore exact for
what the log says and, for a true violation, conservative: a run's ending
event is always appended in the same transaction as the ending itself.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import create_engine, text

STARTS = frozenset({"claimed", "spawned"})
ENDS = frozenset({"completed", "failed", "timed_out", "spawn_failed", "reclaimed", "cancelled"})


@dataclass
class Replay:
    """What the replay found; :attr:`ok` when no rule was broken."""

    events: int = 0
    runs: int = 0
    #: Run openings that found another run of the same task open.
    overlapping: int = 0
    #: Run openings that took a profile past its cap.
    over_cap: int = 0
    #: Tasks completed more than once.
    completed_twice: int = 0
    #: Runs whose row is finished while the log never closed them.
    unended: int = 0
    max_running: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No overlap, no cap exceeded, no task completed twice."""
        return not (self.overlapping or self.over_cap or self.completed_twice)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready counts (the largest open count per profile summarised)."""
        return {
            "events": self.events,
            "runs": self.runs,
            "overlapping_runs": self.overlapping,
            "over_cap": self.over_cap,
            "completed_twice": self.completed_twice,
            "unended_runs": self.unended,
            "max_running_any_profile": max(self.max_running.values(), default=0),
            "examples": self.examples[:5],
        }


def replay(url: str) -> Replay:
    """Replay the database at ``url`` (SQLAlchemy URL) and return the findings."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            caps = {
                name: cap or 0
                for name, cap in conn.execute(text("SELECT name, max_in_progress FROM profiles"))
            }
            runs = {
                run_id: (task_id, profile, status)
                for run_id, task_id, profile, status in conn.execute(
                    text("SELECT run_id, task_id, profile, status FROM task_runs")
                )
            }
            log = [
                (int(event_id), str(task_id), str(run_id), str(kind))
                for event_id, task_id, run_id, kind in conn.execute(
                    text(
                        "SELECT event_id, task_id, run_id, kind FROM task_events"
                        " WHERE run_id <> '' ORDER BY event_id"
                    )
                )
            ]
    finally:
        engine.dispose()
    return walk(log, runs, caps)


def walk(
    log: list[tuple[int, str, str, str]],
    runs: dict[str, tuple[str, str, str]],
    caps: dict[str, int],
) -> Replay:
    """Replay ``log`` ((event_id, task_id, run_id, kind) in id order) against the run rows.

    Args:
        log: The run events, in event id order.
        runs: ``run_id -> (task_id, profile, status)`` from ``task_runs``.
        caps: ``profile -> max_in_progress`` (0 = no cap).
    """
    out = Replay(events=len(log), runs=len(runs))
    open_by_task: dict[str, str] = {}
    open_by_profile: Counter[str] = Counter()
    opened: set[str] = set()
    closed: set[str] = set()
    completed: Counter[str] = Counter()
    peak: dict[str, int] = defaultdict(int)
    for event_id, task_id, run_id, kind in log:
        profile = runs.get(run_id, (task_id, "?", ""))[1]
        if kind in STARTS and run_id not in opened:
            opened.add(run_id)
            other = open_by_task.get(task_id)
            if other is not None:
                out.overlapping += 1
                out.examples.append(f"event {event_id}: {run_id} opened while {other} open")
            open_by_task[task_id] = run_id
            open_by_profile[profile] += 1
            peak[profile] = max(peak[profile], open_by_profile[profile])
            cap = caps.get(profile, 0)
            if cap and open_by_profile[profile] > cap:
                out.over_cap += 1
                out.examples.append(
                    f"event {event_id}: {profile} at {open_by_profile[profile]} > cap {cap}"
                )
        elif kind in ENDS and run_id in opened and run_id not in closed:
            closed.add(run_id)
            if open_by_task.get(task_id) == run_id:
                del open_by_task[task_id]
            open_by_profile[profile] -= 1
            if kind == "completed":
                completed[task_id] += 1
    out.completed_twice = sum(1 for n in completed.values() if n > 1)
    out.unended = sum(
        1 for run_id, (_, _, status) in runs.items() if status != "running" and run_id not in closed
    )
    out.max_running = dict(peak)
    return out
