"""The dispatcher: one real tick (or a dry run), and the loop that ticks.

A tick reads a :mod:`~services.kanban.snapshot`, asks the pure planner for a
:class:`~services.kanban.planner.Plan`, and applies it in the same write
transaction (see :mod:`services.kanban.db`), holding the cap domains the plan
spends (:mod:`services.kanban.store.claims`): reclaim, promote, assign
defaults, trip breakers, then claim the spawned tasks, each bucket one
compare-and-set statement (:mod:`services.kanban.store.transitions`). Only
after the commit is the response built and are the claimed runs handed to the
executor. A dry run builds the same snapshot in a read transaction and
returns the plan: it writes nothing, and predicts exactly.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from google.protobuf import timestamp_pb2
from longshore.kanban.v1 import dispatch_pb2
from opentelemetry import trace
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.kanban import convert, models, snapshot
from services.kanban.backends import BackendBreaker
from services.kanban.db import Database
from services.kanban.executor import RunJob, RunSink, merge_spec
from services.kanban.metrics import KanbanMetrics
from services.kanban.planner import BackendView, Plan, Readiness, ReadinessReason, plan
from services.kanban.run_sink import DbRunSink
from services.kanban.settings import DispatchLimits, KanbanSection
from services.kanban.store import Effects, claims, effects_of, runs, transitions
from services.kanban.store.profiles import check_image
from services.runtime.callers import DISPATCHER
from services.runtime.errors import PermissionDenied

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
SOURCE = "kanban.dispatcher"
#: Least time between two ticks of the loop (a burst of wakes makes one tick).
WAKE_COALESCE_SECONDS = 0.1
#: The gap after a tick is at least this many times its duration.
TICK_SHARE_FACTOR = 4.0
DEFAULT_ASSIGNEE_SOURCE = "kanban.default_assignee"


class RunStarter(Protocol):
    """What the dispatcher needs from the executor (``executor.Executor``)."""

    def start(self, job: RunJob, sink: RunSink) -> None:
        """Start a claimed run; its sink hears the rest."""

    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Kill a held run's exec."""

    def release(
        self, task_id: str, profile: str, sandbox_id: str = "", *, force: bool = True
    ) -> object:
        """Release a task's sandbox in the background."""


class Dispatcher:
    """Plans, applies and loops dispatcher ticks for one kanban process.

    Args:
        db: The database.
        section: The `kanban` settings section.
        limits: Interpreted caps and defaults.
        executor: Runs sandbox runs; None = sandbox tasks fail to spawn.
        instance: This process's id, recorded on the runs it spawns.
        clock: Returns "now" (tests inject one).
        backend: The sandbox backend's breaker; its state is an input of
            every plan (None = the backend is always taken as available).
    """

    def __init__(
        self,
        db: Database,
        *,
        section: KanbanSection,
        limits: DispatchLimits,
        executor: RunStarter | None,
        instance: str,
        clock: Callable[[], dt.datetime] = models.utcnow,
        backend: BackendBreaker | None = None,
        metrics: KanbanMetrics | None = None,
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._section = section
        self.limits = limits
        self._executor = executor
        self.instance = instance
        self._clock = clock
        self._tick_lock = threading.Lock()
        # Whether the last real tick wrote nothing (then the next plans on a read first).
        self._quiet = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Earliest end of a backoff the last real tick saw: the loop wakes
        # then rather than up to a whole interval later. Written by whichever
        # thread ticks (the loop, or a Dispatch RPC), read by the loop: one
        # reference assignment, so no lock; a stale read costs at most one
        # interval of waiting, never a missed retry.
        self._next_due: dt.datetime | None = None
        self.backend = backend
        # The unit of work hands every committed transaction's effects here.
        db.on_effects(self.apply_effects)
        if backend is not None:
            backend.set_on_available(self.wake)
        self.sink = DbRunSink(
            db,
            lease_seconds=section.claim_ttl_seconds,
            max_output_bytes=section.run_output_max_bytes,
            settings=limits.planner,
            backend=backend,
            clock=clock,
        )

    def now(self) -> dt.datetime:
        """The dispatcher's "now" (its clock): WorkerService compares backoffs with it."""
        return self._clock()

    def _backend_view(self) -> BackendView | None:
        return self.backend.view() if self.backend is not None else None

    # -- readiness ------------------------------------------------------

    def readiness(self, session: Session, rows: Sequence[models.Task]) -> dict[str, Readiness]:
        """Explain each task as the next tick would see it."""
        snap = snapshot.build(
            session,
            now=self._clock(),
            extra_task_ids=[r.task_id for r in rows],
            sandbox_backend=self._backend_view(),
        )
        result = plan(snap, settings=self.limits.planner).readiness
        fallback = Readiness(ReadinessReason.NOT_DISPATCHABLE)
        return {r.task_id: result.get(r.task_id, fallback) for r in rows}

    # -- one tick ---------------------------------------------------------

    def tick(
        self, *, dry_run: bool = False, board_id: str = "", max_spawn: int | None = None
    ) -> dispatch_pb2.DispatchResult:
        """Run one tick, or with ``dry_run`` plan one and write nothing.

        Args:
            dry_run: Plan only.
            board_id: Only this board's tasks.
            max_spawn: Spawn at most this many; None = the setting.

        Returns:
            Every bucket of the tick.
        """
        spawn_cap = max_spawn if max_spawn is not None else self.limits.max_spawn
        now = self._clock()
        tick_time = timestamp_pb2.Timestamp()
        tick_time.FromDatetime(now)
        if dry_run:
            with tracer.start_as_current_span("kanban.dispatch.tick", attributes={"dry_run": True}):
                with self._db.read() as s:
                    snap = snapshot.build(
                        s, now=now, board_id=board_id, sandbox_backend=self._backend_view()
                    )
                    result = plan(snap, settings=self.limits.planner, max_spawn=spawn_cap)
                proto = result.to_proto(dry_run=True)
        else:
            result, run_ids = self._timed_tick(now, board_id, spawn_cap)
            # Built after the commit and the spawns: the runs do not wait for it.
            proto = result.to_proto(dry_run=False)
            for i, ref in enumerate(result.spawned):
                if ref.task_id in run_ids:
                    proto.spawned[i].run_id = run_ids[ref.task_id]
        proto.tick_time.CopyFrom(tick_time)
        return proto

    def tick_plan(self) -> Plan:
        """The loop's real tick over every board: the plan it applied, and no DispatchResult.

        Nobody reads a DispatchResult in the loop, and at 10,000 waiting
        tasks building one is a tenth of the tick.
        """
        return self._timed_tick(self._clock(), "", self.limits.max_spawn)[0]

    def _timed_tick(
        self, now: dt.datetime, board_id: str, spawn_cap: int | None
    ) -> tuple[Plan, dict[str, str]]:
        """A real tick, traced, timed and counted; the loop's whole tick (no DispatchResult)."""
        with (
            tracer.start_as_current_span("kanban.dispatch.tick", attributes={"dry_run": False}),
            self._tick_lock,
        ):
            # Timed inside the lock: a tick waiting for another is not slow itself.
            started = time.perf_counter()
            result, run_ids = self._real_tick(now, board_id, spawn_cap)
            if self._metrics is not None:
                self._metrics.tick(time.perf_counter() - started, result)
            return result, run_ids

    def _real_tick(
        self, now: dt.datetime, board_id: str, spawn_cap: int | None
    ) -> tuple[Plan, dict[str, str]]:
        """Plan, write and spawn; the plan and the run id of each task it won."""
        if self._quiet:
            # The last tick wrote nothing: plan on a plain read first, and
            # open a write transaction (on SQLite the one writer slot, which
            # every create and claim waits on) only when this plan has
            # something to write. Writing ticks re-plan inside it, so caps
            # stay exact.
            with self._db.read() as s:
                snap = snapshot.build(
                    s, now=now, board_id=board_id, sandbox_backend=self._backend_view()
                )
                result = plan(snap, settings=self.limits.planner, max_spawn=spawn_cap)
            if not _writes(result):
                if not board_id:
                    self._next_due = _earliest_retry(result)
                return result, {}
        with self._db.write() as s:
            result = self._plan_locked(s, now, board_id, spawn_cap)
            # Applied by the unit of work once this commits (see __init__).
            won, profiles = self._apply(s, result, effects_of(s), now)
        # After the commit: the transaction held its locks only for the writes.
        jobs = [
            self._job(won[ref.task_id], profiles[ref.assignee])
            for ref in result.spawned
            if ref.task_id in won
        ]
        self._quiet = not _writes(result)
        if not board_id:
            self._next_due = _earliest_retry(result)
        self._start(jobs)
        return result, {task_id: claimed.run_id for task_id, claimed in won.items()}

    def _plan_locked(
        self, s: Session, now: dt.datetime, board_id: str, spawn_cap: int | None
    ) -> Plan:
        """Plan in the write transaction, holding the cap domains the plan spends.

        The snapshot is read without locks (PostgreSQL: other replicas write
        meanwhile). The profiles the plan spends are then locked, in the one
        lock order and before any row lock, and their running runs re-counted:
        while we hold a profile's lock nobody else can add a run to it, so if
        no count grew since the snapshot the plan's claims stay within every
        cap. If one grew (another replica claimed in between), plan again
        under the locks and spawn only in the domains we hold; the rest wait
        for the next tick (locking more now would break the lock order).
        """
        snap = snapshot.build(s, now=now, board_id=board_id, sandbox_backend=self._backend_view())
        result = plan(snap, settings=self.limits.planner, max_spawn=spawn_cap)
        if not result.spawned or not self._db.is_postgres:
            return result  # SQLite: this transaction is the only writer
        global_cap = self.limits.planner.max_in_progress is not None
        spend = {ref.assignee for ref in result.spawned}
        claims.lock_cap_domains(s, spend, global_cap=global_cap)
        counts = claims.running_counts(s, spend)
        grew = any(counts.get(p, 0) > snap.running.get(p, 0) for p in spend) or (
            global_cap and claims.running_total(s) > sum(snap.running.values())
        )
        if not grew:
            return result
        snap = snapshot.build(s, now=now, board_id=board_id, sandbox_backend=self._backend_view())
        result = plan(snap, settings=self.limits.planner, max_spawn=spawn_cap)
        dropped = [ref for ref in result.spawned if ref.assignee not in spend]
        if dropped:
            result.spawned = [ref for ref in result.spawned if ref.assignee in spend]
            self.wake()
        return result

    def _apply(
        self, s: Session, result: Plan, effects: Effects, now: dt.datetime
    ) -> tuple[dict[str, runs.Claimed], dict[str, models.Profile]]:
        """Write the plan: one statement (or two, with its events) per bucket."""
        settings = self.limits.planner
        transitions.reclaim(
            s,
            [*result.reclaimed, *result.crashed],
            settings=settings,
            source=SOURCE,
            effects=effects,
            now=now,
        )
        transitions.promote(s, result.promoted, source=SOURCE, effects=effects, now=now)
        transitions.assign_default(
            s, result.auto_assigned_default, source=DEFAULT_ASSIGNEE_SOURCE, now=now
        )
        transitions.give_up(s, result.auto_blocked, source=SOURCE, now=now)
        if not result.spawned:
            return {}, {}
        profiles = {p.name: p for p in s.scalars(select(models.Profile))}
        won = runs.claim_many(
            s,
            [(ref.task_id, ref.assignee) for ref in result.spawned if ref.assignee in profiles],
            worker_id=f"kanban-executor/{self.instance}",
            executor_instance=self.instance,
            lease_seconds=self._section.claim_ttl_seconds,
            source=SOURCE,
            holder=DISPATCHER,
            now=now,
            event_kind="spawned",
        )
        return won, profiles

    def _job(self, task: runs.Claimed, profile: models.Profile) -> RunJob:
        timeout = (
            task.max_runtime_seconds
            or profile.default_max_runtime_seconds
            or self._section.default_max_runtime_seconds
        )
        # Checked again at spawn: the task may have taken the default assignee
        # after it was written, or the profile's images changed since.
        try:
            check_image(profile, task.image)
            refusal = ""
        except PermissionDenied as exc:
            refusal = exc.message
        return RunJob(
            run_id=task.run_id,
            task_id=task.task_id,
            profile=profile.name,
            spec=merge_spec(convert.spec_proto(profile.sandbox_spec or {}), image=task.image),
            command=tuple(task.command or ()),
            timeout_seconds=float(timeout),
            persist=True,
            env=dict(task.env or {}),
            trace_parent=task.trace_parent,
            refusal=refusal,
        )

    def _start(self, jobs: list[RunJob]) -> None:
        from services.kanban.executor import FailureKind, Outcome, OutcomeKind

        for job in jobs:
            if job.refusal:
                self.sink.finished(
                    job.run_id,
                    Outcome(
                        OutcomeKind.SPAWN_FAILED,
                        failure_kind=FailureKind.PERMISSION_DENIED,
                        error=job.refusal,
                    ),
                )
                continue
            if self._executor is None:
                self.sink.finished(
                    job.run_id,
                    Outcome(OutcomeKind.SPAWN_FAILED, error="no sandbox executor configured"),
                )
                continue
            self._executor.start(job, self.sink)

    # -- after a commit ---------------------------------------------------

    def apply_effects(self, effects: Effects) -> None:
        """Kill cancelled execs, release finished tasks' sandboxes, wake the loop."""
        if self._executor is not None:
            for run_id in effects.cancelled_runs:
                self._executor.cancel(run_id, "the task left running")
            for rel in effects.releases:
                self._executor.release(rel.task_id, rel.profile, rel.sandbox_id, force=True)
        if effects.wake:
            self.wake()

    # -- the loop -----------------------------------------------------------

    def wake(self) -> None:
        """Tick as soon as possible (a task may have become ready)."""
        self._wake.set()

    def start(self) -> None:
        """Start the loop thread: a tick every interval, and on every wake."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="kanban-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop after its current tick."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        interval = max(0.05, self._section.dispatch_interval_seconds)
        last_tick = 0.0
        gap = WAKE_COALESCE_SECONDS
        while not self._stop.is_set():
            wait = interval
            due = self._next_due
            if due is not None:
                # A backoff ends before the next interval: tick right after it.
                until = (due - self._clock()).total_seconds() + 0.01
                wait = min(interval, max(0.01, until))
            self._wake.wait(wait)
            # A writing tick holds SQLite's one writer slot (on PostgreSQL
            # the cap domains it spends) while it plans; ticking once per
            # wake would let a burst of creates (each wakes the loop) queue
            # behind back-to-back ticks. Coalesce: after a tick of d seconds
            # the next waits max(WAKE_COALESCE_SECONDS, TICK_SHARE_FACTOR * d),
            # so ticks hold the lock at most ~1/(1 + factor) of the time and
            # a burst is dispatched by one tick.
            rest = gap - (time.monotonic() - last_tick)
            if rest > 0 and self._stop.wait(rest):
                return
            self._wake.clear()
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                self.tick_plan()
            except Exception:
                log.exception("dispatcher tick failed")
            last_tick = time.monotonic()
            gap = max(WAKE_COALESCE_SECONDS, TICK_SHARE_FACTOR * (last_tick - started))


def _writes(result: Plan) -> bool:
    """Whether applying ``result`` changes anything (what :meth:`Dispatcher._apply` acts on)."""
    return bool(
        result.reclaimed
        or result.crashed
        or result.promoted
        or result.auto_assigned_default
        or result.auto_blocked
        or result.spawned
    )


def _earliest_retry(result: Plan) -> dt.datetime | None:
    """The earliest end of a backoff among the plan's backing-off tasks."""
    times = [
        when
        for ref in result.backing_off
        if (when := result.readiness[ref.task_id].next_attempt_time) is not None
    ]
    return min(times) if times else None
