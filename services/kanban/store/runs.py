"""Runs: the compare-and-set claim, leases, heartbeats, fencing, output chunks,
and a run's successful end (a failed one: :mod:`services.kanban.store.failures`).

A run's ``run_id`` is the fencing token. Every run-affecting call names it;
:func:`fenced` refuses any run that is not the task's current running run,
so a stale holder changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from services.kanban import commits
from services.kanban.models import Profile, RunOutput, Task, TaskRun, utcnow
from services.kanban.store import Effects, events, keys, lifecycle, new_id
from services.kanban.vocabulary import RunStatus, TaskStatus
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_CHUNK = 64 * 1024
end_run = lifecycle.end_run
DEFAULT_READ_LIMIT = 1024 * 1024


def get_run(session: Session, run_id: str, *, lock: bool = False) -> TaskRun:
    """Return a run (with ``lock``, its row locked as :func:`keys.by_key` locks).

    Raises:
        InvalidArgument: Empty id.
        NotFound: No such run.
    """
    if not run_id:
        raise InvalidArgument("run_id: required")
    run = keys.by_key(session, TaskRun, run_id, lock=lock)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


def fenced(session: Session, run_id: str, *, lock: bool = False) -> tuple[TaskRun, Task]:
    """Return the run and its task if ``run_id`` still holds the task.

    Raises:
        InvalidArgument: Empty id.
        NotFound: No such run.
        FailedPrecondition: The run is stale (ended, reclaimed or cancelled).
    """
    if not run_id:
        raise InvalidArgument("run_id: required")
    run = keys.by_key(session, TaskRun, run_id, lock=lock)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    task = keys.by_key(session, Task, run.task_id, lock=lock)
    if run.status != RunStatus.RUNNING or task is None or task.current_run_id != run_id:
        raise FailedPrecondition(f"run {run_id!r} is stale: {run.status}")
    return run, task


@dataclass(frozen=True, slots=True)
class Claimed:
    """A task won by :func:`claim_many`: what spawning it needs, and its new run.

    ``run_values`` are the run's inserted columns. :attr:`run` builds the
    ORM object only when asked: a tick claims a hundred tasks and needs
    only their run ids (an ORM instance costs ~20 us to build).
    """

    task_id: str
    board_id: str
    image: str
    command: list[Any]
    env: dict[str, Any]
    max_runtime_seconds: float | None
    trace_parent: str
    run_values: dict[str, Any]

    @property
    def run_id(self) -> str:
        """The new run's id."""
        return str(self.run_values["run_id"])

    @property
    def run(self) -> TaskRun:
        """The new run, not in the session (it was inserted in bulk): load it to change it."""
        return TaskRun(**self.run_values)


def claim(
    session: Session,
    task: Task,
    *,
    profile: str,
    worker_id: str,
    executor_instance: str,
    lease_seconds: float,
    source: str,
    holder: str,
    now: dt.datetime | None = None,
    event_kind: str = "claimed",
) -> TaskRun | None:
    """Claim a ready task: compare-and-set ready → running and create its run.

    ``task`` (loaded in this session) is updated to what was written.

    Returns:
        The new run, or None when the task was no longer ready.
    """
    won = claim_many(
        session,
        [(task.task_id, profile)],
        worker_id=worker_id,
        executor_instance=executor_instance,
        lease_seconds=lease_seconds,
        source=source,
        holder=holder,
        now=now,
        event_kind=event_kind,
    )
    claimed = won.get(task.task_id)
    if claimed is None:
        return None
    run = claimed.run
    for key, value in (
        ("status", TaskStatus.RUNNING),
        ("current_run_id", run.run_id),
        ("update_time", run.start_time),
        ("assignee", profile),
        ("next_attempt_time", None),
    ):
        set_committed_value(task, key, value)
    return run


def claim_many(
    session: Session,
    claims: Sequence[tuple[str, str]],
    *,
    worker_id: str,
    executor_instance: str,
    lease_seconds: float,
    source: str,
    holder: str,
    now: dt.datetime | None = None,
    event_kind: str = "claimed",
) -> dict[str, Claimed]:
    """Claim many ready tasks in three statements, however many there are.

    One ``UPDATE tasks ... WHERE task_id IN (...) AND status = 'ready'
    RETURNING ...`` is the compare-and-set: a task another caller took
    meanwhile is not returned, so it is not won (on PostgreSQL the UPDATE
    waits for a row lock held by a concurrent writer and re-checks the status
    on the committed row). Then one INSERT of the won runs and one of their
    events. The caller holds the cap domains the claims spend
    (:mod:`services.kanban.store.claims`).

    Args:
        session: The caller's write session.
        claims: (task id, profile) pairs.
        worker_id: Holder recorded on the runs.
        executor_instance: Spawning process, for crash detection ("" for workers).
        lease_seconds: Initial lease.
        source: Event source.
        holder: Principal that owns the runs (the claiming API key's name, or
            ``dispatcher``); only it may change them through WorkerService.
        now: Claim time.
        event_kind: ``claimed`` (a worker) or ``spawned`` (the dispatcher).

    Returns:
        What was won, per task id.
    """
    if not claims:
        return {}
    now = now or utcnow()
    profiles = dict(claims)
    run_ids = {task_id: new_id("r") for task_id in profiles}
    table = cast(Table, Task.__table__)
    stmt = (
        update(table)
        .where(table.c.task_id.in_(list(run_ids)), table.c.status == TaskStatus.READY)
        .values(
            status=TaskStatus.RUNNING,
            current_run_id=case(run_ids, value=table.c.task_id),
            assignee=case(profiles, value=table.c.task_id),
            update_time=now,
            next_attempt_time=None,
        )
        .returning(
            table.c.task_id,
            table.c.board_id,
            table.c.image,
            table.c.command,
            table.c.env,
            table.c.max_runtime_seconds,
            table.c.trace_parent,
        )
    )
    rows = sorted(session.execute(stmt), key=lambda r: r.task_id)
    if not rows:
        return {}
    # Every column of the run, given (no column default applies).
    base = {
        "status": RunStatus.RUNNING,
        "worker_id": worker_id,
        "executor_instance": executor_instance,
        "holder": holder,
        "start_time": now,
        "lease_expire_time": now + dt.timedelta(seconds=lease_seconds),
        "sandbox_id": "",
        "error": "",
        "output_bytes": 0,
        "output_truncated": False,
        "counted_failure": False,
        "failure_class": "",
        "end_time": None,
        "exit_code": None,
    }
    won: dict[str, Claimed] = {}
    for row in rows:
        values = {
            **base,
            "run_id": run_ids[row.task_id],
            "task_id": row.task_id,
            "profile": profiles[row.task_id],
        }
        won[row.task_id] = Claimed(
            task_id=row.task_id,
            board_id=row.board_id,
            image=row.image or "",
            command=list(row.command or ()),
            env=dict(row.env or {}),
            max_runtime_seconds=row.max_runtime_seconds,
            trace_parent=row.trace_parent or "",
            run_values=values,
        )
    session.execute(insert(cast(Table, TaskRun.__table__)), [w.run_values for w in won.values()])
    events.append_many(
        session,
        [
            {
                "task_id": w.task_id,
                "board_id": w.board_id,
                "kind": event_kind,
                "source": source,
                "payload": {"profile": profiles[w.task_id], "worker_id": worker_id},
                "run_id": w.run_id,
            }
            for w in won.values()
        ],
        now=now,
    )
    return won


# Every heartbeat of every worker runs these two: built once (see store.keys).
_RENEW = (
    update(TaskRun)
    .where(TaskRun.run_id == bindparam("rid"), TaskRun.status == RunStatus.RUNNING)
    .values(lease_expire_time=bindparam("expire"))
    .execution_options(synchronize_session=False)
)
_SPEC_COLUMNS = (
    select(Profile.sandbox_spec, Task.image, Task.env)
    .join(Profile, Profile.name == bindparam("profile"))
    .where(Task.task_id == bindparam("task_id"))
)


def heartbeat(session: Session, run_id: str, *, lease_seconds: float) -> dt.datetime | None:
    """Renew a running run's lease (compare-and-set on its status).

    Returns:
        The new lease expiry, or None when the run is not running any more.
    """
    expire = utcnow() + dt.timedelta(seconds=lease_seconds)
    result = session.execute(_RENEW, {"rid": run_id, "expire": expire})
    return expire if result.rowcount == 1 else None  # type: ignore[attr-defined]


def spec_columns(
    session: Session, run: TaskRun
) -> tuple[dict[str, Any] | None, str, dict[str, str] | None] | None:
    """The stored parts of ``run``'s sandbox spec: its profile's spec, its task's image and env.

    Three columns in one indexed join, not two whole rows (a heartbeat reads
    them to mint the run's next sandbox token). None: task or profile gone.
    """
    row = session.execute(
        _SPEC_COLUMNS, {"profile": run.profile, "task_id": run.task_id}
    ).one_or_none()
    return None if row is None else (row.sandbox_spec, row.image, row.env)


def set_sandbox(session: Session, run_id: str, sandbox_id: str) -> None:
    """Record the sandbox a running run uses (and on its task)."""
    run = keys.by_key(session, TaskRun, run_id)
    if run is None:
        return
    run.sandbox_id = sandbox_id
    task = keys.by_key(session, Task, run.task_id)
    if task is not None:
        task.sandbox_id = sandbox_id
    session.flush()


def append_output(session: Session, run_id: str, data: bytes, *, max_bytes: int) -> TaskRun:
    """Append output to a running run, keeping at most ``max_bytes`` in all.

    Raises:
        NotFound, FailedPrecondition: As :func:`fenced`.
    """
    run, _task = fenced(session, run_id, lock=True)
    keep = max(0, max_bytes - run.output_bytes)
    kept = data[:keep]
    if len(data) > keep:
        run.output_truncated = True
    offset = run.output_bytes
    for start in range(0, len(kept), MAX_CHUNK):
        piece = kept[start : start + MAX_CHUNK]
        session.add(RunOutput(run_id=run_id, offset=offset + start, data=piece))
    run.output_bytes = offset + len(kept)
    commits.note_output(session, run_id)
    session.flush()
    return run


def read_output(session: Session, run: TaskRun, offset: int, limit: int) -> tuple[bytes, int]:
    """Return up to ``limit`` bytes of a run's output from ``offset``, and the next offset."""
    if offset < 0:
        raise InvalidArgument("offset: must not be negative")
    limit = limit or DEFAULT_READ_LIMIT
    stmt = (
        select(RunOutput.offset, RunOutput.data)
        .where(
            RunOutput.run_id == run.run_id,
            RunOutput.offset >= offset - MAX_CHUNK,
            RunOutput.offset < offset + limit,
        )
        .order_by(RunOutput.offset)
    )
    out = bytearray()
    for chunk_offset, data in session.execute(stmt):
        end = chunk_offset + len(data)
        if end <= offset:
            continue
        out += data[max(0, offset - chunk_offset) :]
    out = out[:limit]
    return bytes(out), offset + len(out)


def latest_run(session: Session, task_id: str) -> TaskRun:
    """Return a task's newest run.

    Raises:
        NotFound: The task does not exist or has no runs.
    """
    lifecycle.get(session, task_id)
    stmt = (
        select(TaskRun)
        .where(TaskRun.task_id == task_id)
        .order_by(TaskRun.start_time.desc(), TaskRun.run_id.desc())
        .limit(1)
    )
    run = session.scalar(stmt)
    if run is None:
        raise NotFound(f"task {task_id!r} has no runs")
    return run


def list_runs(
    session: Session, task_id: str, *, after: tuple[dt.datetime, str] | None, limit: int
) -> list[TaskRun]:
    """Return a task's runs, newest first."""
    lifecycle.get(session, task_id)
    stmt = select(TaskRun).where(TaskRun.task_id == task_id)
    if after is not None:
        t, rid = after
        stmt = stmt.where(
            (TaskRun.start_time < t) | ((TaskRun.start_time == t) & (TaskRun.run_id < rid))
        )
    stmt = stmt.order_by(TaskRun.start_time.desc(), TaskRun.run_id.desc()).limit(limit)
    return list(session.scalars(stmt))


def note_exec_end(run: TaskRun, task: Task, *, truncated: bool, sandbox_id: str) -> None:
    """Record what an exec reported at its end: output cut, and the sandbox it used."""
    if truncated:
        run.output_truncated = True
    if sandbox_id and not run.sandbox_id:
        run.sandbox_id = task.sandbox_id = sandbox_id


def complete(
    session: Session,
    run_id: str,
    *,
    summary: str,
    source: str,
    effects: Effects,
    exit_code: int | None = None,
) -> Task:
    """End a run successfully: the task is done and its failure streak resets.

    Raises:
        NotFound, FailedPrecondition: As :func:`fenced`.
    """
    run, task = fenced(session, run_id, lock=True)
    now = utcnow()
    code = exit_code if exit_code is not None else run.exit_code or 0
    end_run(run, status=RunStatus.SUCCEEDED, exit_code=code, now=now)
    task.current_run_id = None
    task.failure_count = 0
    task.next_attempt_time = None
    events.append(
        session,
        task_id=task.task_id,
        board_id=task.board_id,
        kind="completed",
        source=source,
        payload={"summary": summary},
        run_id=run_id,
        now=now,
        flush=False,  # set_status's event flushes both, in this order
    )
    lifecycle.set_status(
        session, task, TaskStatus.DONE, reason="completed", source=source, effects=effects
    )
    return task


def expired_runs(session: Session, now: dt.datetime) -> list[TaskRun]:
    """Return running runs whose lease ended before ``now``."""
    stmt = select(TaskRun).where(
        TaskRun.status == RunStatus.RUNNING, TaskRun.lease_expire_time < now
    )
    return list(session.scalars(stmt.order_by(TaskRun.start_time, TaskRun.run_id)))
