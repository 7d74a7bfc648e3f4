"""The sandbox executor: runs a claimed task's command in its sandbox.

``tick.py`` claims a task (a new run whose ``run_id`` is the fencing token)
and calls :meth:`Executor.start`, which returns at once. On a bounded thread
pool the executor then acquires the sandbox for (task, profile), tells the
:class:`RunSink` which sandbox it got, streams the command's output into the
sink (bounded), heartbeats while the run lives (a refused heartbeat cancels
the exec), and reports one :class:`Outcome` through ``sink.finished``.

The executor never raises into its caller: every failure, including a broken
sink, ends as exactly one ``sink.finished`` call per started job.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from opentelemetry import propagate, trace

from services.kanban.executor_types import (
    Outcome,
    OutcomeKind,
    RunJob,
    RunSink,
    merge_spec,
)
from services.kanban.sandbox_client import (
    ExecResult,
    ExecStream,
    FailureKind,
    SandboxApi,
    SandboxError,
    SandboxNotFound,
)

__all__ = [
    "Executor",
    "FailureKind",
    "Outcome",
    "OutcomeKind",
    "RunJob",
    "RunSink",
    "merge_spec",
]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Active:
    """A job the executor holds, from start() until finished()."""

    job: RunJob
    sink: RunSink
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel_kind: OutcomeKind | None = None
    cancel_reason: str = ""
    stream: ExecStream | None = None
    sandbox_id: str = ""
    started_at: float = field(default_factory=time.monotonic)


class Executor:
    """Runs sandbox jobs on a bounded thread pool and reports them to their sinks.

    Args:
        sandboxes: The sandbox service (a :class:`SandboxClient`, or a fake).
        max_workers: Runs executing at once; further jobs queue (and are
            heartbeated while they wait).
        heartbeat_interval: Seconds between heartbeats of every held run.
        max_output_bytes: Output kept per run; the rest is dropped and the
            outcome says ``truncated``.
        heartbeats: Start the background heartbeat thread (tests turn it off
            and call :meth:`heartbeat_once`).
        tracer_provider: Provider of the run spans; the global one by default.
    """

    def __init__(
        self,
        sandboxes: SandboxApi,
        *,
        max_workers: int = 8,
        heartbeat_interval: float = 10.0,
        max_output_bytes: int = 1 << 20,
        heartbeats: bool = True,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._sandboxes = sandboxes
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._max_output = max_output_bytes
        self._interval = heartbeat_interval
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="kanban-run")
        self._cleanup = ThreadPoolExecutor(1, thread_name_prefix="kanban-release")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active: dict[str, _Active] = {}
        self._closed = False
        self._stop = threading.Event()
        self._heartbeater: threading.Thread | None = None
        if heartbeats:
            self._heartbeater = threading.Thread(
                target=self._heartbeat_loop, name="kanban-heartbeat", daemon=True
            )
            self._heartbeater.start()

    # -- the tick's side -------------------------------------------------

    def start(self, job: RunJob, sink: RunSink) -> None:
        """Queues a run and returns at once; its sink hears the rest.

        A job given after :meth:`shutdown` finishes at once as ABANDONED. A
        second start for a run id still held is ignored (logged).
        """
        active = _Active(job, sink)
        with self._lock:
            if job.run_id in self._active:
                log.warning("run %s is already held; start ignored", job.run_id)
                return
            closed = self._closed
            if not closed:
                self._active[job.run_id] = active
        if closed:
            self._finish(active, Outcome(OutcomeKind.ABANDONED, error="executor is shut down"))
            return
        try:
            self._pool.submit(self._run, active)
        except RuntimeError:  # the pool shut down between the check and the submit
            self._drop(job.run_id)
            self._finish(active, Outcome(OutcomeKind.ABANDONED, error="executor is shut down"))

    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Kills a held run's exec (the stream is cancelled; the run ends CANCELLED).

        Returns:
            Whether the run was held.
        """
        with self._lock:
            active = self._active.get(run_id)
        if active is None:
            return False
        self._request_cancel(active, OutcomeKind.CANCELLED, reason)
        return True

    def release(
        self, task_id: str, profile: str, sandbox_id: str = "", *, force: bool = True
    ) -> Future[bool]:
        """Releases a task's sandbox in the background (for done or archived tasks).

        Args:
            task_id: The task.
            profile: Its profile.
            sandbox_id: The sandbox, when known; else every sandbox of
                (task, profile) is released.
            force: Stop and remove it even if it is persistent.

        Returns:
            A future: True when every release call succeeded. It never raises.
        """
        try:
            return self._cleanup.submit(self._release, task_id, profile, sandbox_id, force)
        except RuntimeError:
            done: Future[bool] = Future()
            done.set_result(False)
            return done

    def held_runs(self) -> list[str]:
        """Run ids started and not yet finished."""
        with self._lock:
            return list(self._active)

    def heartbeat_once(self) -> None:
        """Heartbeats every held run once; a refused heartbeat cancels the run."""
        with self._lock:
            held = list(self._active.values())
        for active in held:
            if active.cancel_kind is not None:
                continue
            try:
                alive = active.sink.heartbeat(active.job.run_id)
            except Exception:
                log.exception("heartbeat of run %s failed", active.job.run_id)
                continue
            if not alive:
                self._request_cancel(
                    active, OutcomeKind.CANCELLED, "heartbeat refused: the run is stale"
                )

    def shutdown(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Stops taking jobs and drains.

        Args:
            wait: Wait for held runs to end. Without waiting, held runs are
                cancelled at once and finish as ABANDONED.
            timeout: With ``wait``, wait at most this long, then abandon the rest.
        """
        with self._lock:
            self._closed = True
            if wait and timeout is not None:
                deadline = time.monotonic() + timeout
                while self._active and (left := deadline - time.monotonic()) > 0:
                    self._idle.wait(left)
            held = list(self._active.values())
        self._stop.set()
        if not wait or timeout is not None:
            for active in held:
                self._request_cancel(active, OutcomeKind.ABANDONED, "executor shutting down")
        self._pool.shutdown(wait=wait)
        self._cleanup.shutdown(wait=wait)
        if self._heartbeater is not None and wait:
            self._heartbeater.join()

    # -- worker threads --------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.heartbeat_once()

    def _request_cancel(self, active: _Active, kind: OutcomeKind, reason: str) -> None:
        with active.lock:
            if active.cancel_kind is None:
                active.cancel_kind = kind
                active.cancel_reason = reason
            stream = active.stream
        if stream is not None:
            stream.cancel()

    def _drop(self, run_id: str) -> None:
        with self._lock:
            self._active.pop(run_id, None)
            if not self._active:
                self._idle.notify_all()

    def _finish(self, active: _Active, outcome: Outcome) -> None:
        job = active.job
        log.info(
            "run %s of task %s ended %s",
            job.run_id,
            job.task_id,
            outcome.kind.value,
            extra={"run_id": job.run_id, "task_id": job.task_id, "outcome": outcome.kind.value},
        )
        try:
            active.sink.finished(job.run_id, outcome)
        except Exception:
            log.exception("recording the end of run %s failed", job.run_id)

    def _run(self, active: _Active) -> None:
        job = active.job
        outcome: Outcome | None = None
        try:
            context = (
                propagate.extract({"traceparent": job.trace_parent}) if job.trace_parent else None
            )
            with self._tracer.start_as_current_span(
                "kanban.run",
                context=context,
                attributes={
                    "longshore.run_id": job.run_id,
                    "longshore.task_id": job.task_id,
                    "longshore.profile": job.profile,
                },
            ) as span:
                outcome = self._execute(active)
                span.set_attribute("longshore.run.outcome", outcome.kind.value)
                if outcome.error:
                    span.set_attribute("longshore.run.error", outcome.error)
        except Exception as exc:
            log.exception("run %s failed in the executor", job.run_id)
            outcome = Outcome(
                OutcomeKind.FAILED, failure_kind=FailureKind.OTHER, error=f"executor error: {exc}"
            )
        finally:
            if outcome is None:
                outcome = Outcome(OutcomeKind.ABANDONED, error="executor thread interrupted")
            outcome = replace(
                outcome,
                sandbox_id=active.sandbox_id,
                duration_seconds=time.monotonic() - active.started_at,
            )
            self._drop(job.run_id)
            self._finish(active, outcome)
            if not job.persist and active.sandbox_id:
                self.release(job.task_id, job.profile, active.sandbox_id, force=False)

    def _cancelled(self, active: _Active) -> Outcome | None:
        with active.lock:
            kind = active.cancel_kind
            reason = active.cancel_reason
        if kind is None:
            return None
        return Outcome(kind, error=reason)

    def _execute(self, active: _Active) -> Outcome:
        job = active.job
        if (stop := self._cancelled(active)) is not None:
            return stop
        try:
            acquired = self._sandboxes.acquire(
                job.task_id, job.profile, job.spec, persist=job.persist
            )
        except SandboxError as err:
            return Outcome(OutcomeKind.SPAWN_FAILED, failure_kind=err.kind, error=str(err))
        active.sandbox_id = acquired.sandbox_id
        if (stop := self._cancelled(active)) is not None:
            return stop
        if not active.sink.started(job.run_id, acquired.sandbox_id):
            return Outcome(OutcomeKind.CANCELLED, error="started refused: the run is stale")
        stream = self._sandboxes.exec(
            acquired.sandbox_id,
            job.command,
            env=job.env,
            timeout_seconds=job.timeout_seconds,
            max_output_bytes=self._max_output,
        )
        with active.lock:
            active.stream = stream
            cancel_now = active.cancel_kind is not None
        if cancel_now:
            stream.cancel()
        return self._stream(active, stream)

    def _stream(self, active: _Active, stream: ExecStream) -> Outcome:
        job = active.job
        room = self._max_output
        truncated = False
        result: ExecResult | None = None
        seen = False
        began = time.monotonic()
        try:
            for event in stream:
                seen = True
                if isinstance(event, ExecResult):
                    result = event
                    continue
                data = event.data
                if len(data) > room:
                    data = data[:room]
                    truncated = True
                if not data:
                    continue
                room -= len(data)
                try:
                    active.sink.output(job.run_id, data)
                except Exception:
                    log.exception("storing output of run %s failed", job.run_id)
        except SandboxError as err:
            if (stop := self._cancelled(active)) is not None:
                return replace(stop, truncated=truncated)
            if result is not None:
                # The exit status arrived before the stream broke: it is the
                # truth (a timed-out command is TIMED_OUT with its exit).
                log.info("exec stream of run %s broke after its exit: %s", job.run_id, err)
                return self._ended(job, result, truncated)
            if err.kind is FailureKind.DEADLINE_EXCEEDED:
                return Outcome(
                    OutcomeKind.TIMED_OUT,
                    timed_out=True,
                    truncated=truncated,
                    failure_kind=err.kind,
                    error=f"no exit status within the deadline ({job.timeout_seconds:g}s + grace)",
                )
            if err.kind is FailureKind.OTHER and time.monotonic() - began >= job.timeout_seconds:
                # The command ran its whole timeout and the manager failed to
                # report how it ended (e.g. it could not start its killer at a
                # pids limit): the command timed out; it never "failed to spawn".
                return Outcome(
                    OutcomeKind.TIMED_OUT,
                    timed_out=True,
                    truncated=truncated,
                    failure_kind=err.kind,
                    error=f"timed out after {job.timeout_seconds:g}s; its exit was lost: {err}",
                )
            kind = OutcomeKind.FAILED if seen else OutcomeKind.SPAWN_FAILED
            return Outcome(kind, truncated=truncated, failure_kind=err.kind, error=str(err))
        if result is None:
            if (stop := self._cancelled(active)) is not None:
                return replace(stop, truncated=truncated)
            return Outcome(
                OutcomeKind.FAILED,
                truncated=truncated,
                failure_kind=FailureKind.OTHER,
                error="exec stream ended without an exit status",
            )
        return self._ended(job, result, truncated)

    def _ended(self, job: RunJob, result: ExecResult, truncated: bool) -> Outcome:
        """The outcome of a command that reported its exit status."""
        base = Outcome(
            OutcomeKind.FAILED,
            exit_code=result.exit_code,
            signal=result.signal,
            truncated=truncated or result.truncated,
            output_bytes=result.output_bytes,
        )
        if result.timed_out:
            error = f"timed out after {job.timeout_seconds:g}s; process tree killed"
            return replace(base, kind=OutcomeKind.TIMED_OUT, timed_out=True, error=error)
        if result.exit_code == 0:
            return replace(base, kind=OutcomeKind.SUCCEEDED)
        signal = f" (signal {result.signal})" if result.signal else ""
        return replace(base, error=f"exit code {result.exit_code}{signal}")

    def _release(self, task_id: str, profile: str, sandbox_id: str, force: bool) -> bool:
        try:
            ids = [sandbox_id] if sandbox_id else self._sandboxes.find(task_id, profile)
        except SandboxError as err:
            log.warning("finding the sandboxes of task %s failed: %s", task_id, err)
            return False
        ok = True
        for sid in ids:
            try:
                self._sandboxes.release(sid, force=force)
            except SandboxNotFound:
                continue
            except SandboxError as err:
                log.warning("releasing sandbox %s of task %s failed: %s", sid, task_id, err)
                ok = False
        return ok
