"""Value types between the tick and the executor: jobs, outcomes and the run sink.

``executor.py`` re-exports every name here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from longshore.kanban.v1 import run_pb2
from longshore.sandbox.v1 import sandbox_pb2

from services.kanban.planner_types import FailureClass
from services.kanban.sandbox_client import FailureKind


class OutcomeKind(enum.StrEnum):
    """How a run ended."""

    SUCCEEDED = "succeeded"
    """The command exited 0."""
    FAILED = "failed"
    """Non-zero exit, or the exec broke mid-run (``failure_kind`` says how)."""
    TIMED_OUT = "timed_out"
    """The command ran past its timeout and was killed."""
    CANCELLED = "cancelled"
    """Cancelled: ``cancel()`` was called or a heartbeat/started was refused."""
    SPAWN_FAILED = "spawn_failed"
    """The command never started (``failure_kind``: unavailable, image-missing, ...)."""
    ABANDONED = "abandoned"
    """The executor shut down without waiting; the run should be reclaimed."""


# Failures of the sandbox call itself that say nothing about the work: the
# manager or its engine unreachable or too slow to answer, the sandbox gone
# under the run (an engine restart), a stream cancelled by us, the manager
# failing in itself or refusing our internal credential, or out of capacity.
PLATFORM_KINDS = frozenset(
    {
        FailureKind.UNAVAILABLE,
        FailureKind.SERVICE_ERROR,
        FailureKind.BUSY,
        FailureKind.DEADLINE_EXCEEDED,
        FailureKind.NOT_FOUND,
        FailureKind.NOT_RUNNING,
        FailureKind.CANCELLED,
    }
)

_RUN_STATUS = {
    OutcomeKind.SUCCEEDED: run_pb2.RUN_STATUS_SUCCEEDED,
    OutcomeKind.FAILED: run_pb2.RUN_STATUS_FAILED,
    OutcomeKind.TIMED_OUT: run_pb2.RUN_STATUS_TIMED_OUT,
    OutcomeKind.CANCELLED: run_pb2.RUN_STATUS_CANCELLED,
    OutcomeKind.SPAWN_FAILED: run_pb2.RUN_STATUS_SPAWN_FAILED,
    OutcomeKind.ABANDONED: run_pb2.RUN_STATUS_LOST,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run ended.

    Attributes:
        kind: The ending.
        exit_code: The command's exit code, when it exited (-1 on timeout).
        signal: Signal that ended the command, or 0.
        timed_out: The command ran past its timeout.
        truncated: Output beyond the cap was dropped.
        output_bytes: Bytes of output the command produced (dropped included).
        duration_seconds: Wall-clock time of the run in the executor.
        sandbox_id: The sandbox used, when one was acquired.
        failure_kind: For SPAWN_FAILED and broken execs: what failed.
        error: One line for people; empty on success.
    """

    kind: OutcomeKind
    exit_code: int | None = None
    signal: int = 0
    timed_out: bool = False
    truncated: bool = False
    output_bytes: int = 0
    duration_seconds: float = 0.0
    sandbox_id: str = ""
    failure_kind: FailureKind | None = None
    error: str = ""

    @property
    def failure_class(self) -> FailureClass | None:
        """Whose failure it was; ``None`` for a success or an abandoned run.

        The work's: a non-zero exit, the command's timeout, a missing image,
        a spec the manager refuses (INVALID_ARGUMENT, PERMISSION_DENIED), any
        other error. The platform's: a cancel, and a failure of the sandbox
        call itself (:data:`PLATFORM_KINDS`: UNAVAILABLE or DEADLINE_EXCEEDED
        on acquire or exec, the sandbox gone, a stream cancelled).
        """
        if self.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.ABANDONED):
            return None
        if self.kind is OutcomeKind.CANCELLED:
            return FailureClass.PLATFORM
        if self.kind is OutcomeKind.TIMED_OUT:
            return FailureClass.WORK
        if self.failure_kind in PLATFORM_KINDS:
            return FailureClass.PLATFORM
        return FailureClass.WORK

    @property
    def counts_as_failure(self) -> bool:
        """Whether the breaker counts it (work failures only)."""
        return self.failure_class is FailureClass.WORK

    @property
    def backend_down(self) -> bool:
        """Whether it says the sandbox backend is unreachable or failing in itself.

        Opens the dispatcher's breaker; its next health probe closes it again
        when the manager answers SERVING.
        """
        return self.failure_kind in (
            FailureKind.UNAVAILABLE,
            FailureKind.DEADLINE_EXCEEDED,
            FailureKind.SERVICE_ERROR,
            # Overloaded: pausing dispatch until the next probe is the backoff.
            FailureKind.BUSY,
        ) and (self.kind is not OutcomeKind.TIMED_OUT)

    @property
    def run_status(self) -> run_pb2.RunStatus.ValueType:
        """The ``RunStatus`` to record (ABANDONED → LOST)."""
        return _RUN_STATUS[self.kind]


@dataclass(frozen=True, slots=True)
class RunJob:
    """One claimed run for the executor.

    Attributes:
        run_id: The run (fencing token).
        task_id: The task.
        profile: The profile running it.
        spec: The sandbox spec: the profile's default, the task's image
            override and the task's env merged (see :func:`merge_spec`).
        command: The command's argv.
        timeout_seconds: The task's max runtime: the exec timeout.
        persist: Keep the sandbox across runs and processes (else it is
            removed when the run ends).
        env: Extra environment for the exec only (not part of the sandbox's
            config hash).
        trace_parent: W3C ``traceparent`` of the call that created the task;
            the run's spans join that trace.
        refusal: Why the run must not start at all (policy found at spawn,
            e.g. a task image its profile does not allow); it then ends at
            once as a spawn failure of the work, never reaching a sandbox.
    """

    run_id: str
    task_id: str
    profile: str
    spec: sandbox_pb2.SandboxSpec
    command: tuple[str, ...]
    timeout_seconds: float
    persist: bool = True
    env: Mapping[str, str] = field(default_factory=dict)
    trace_parent: str = ""
    refusal: str = ""


def merge_spec(
    profile_spec: sandbox_pb2.SandboxSpec, *, image: str = "", env: Mapping[str, str] | None = None
) -> sandbox_pb2.SandboxSpec:
    """The spec a task's sandbox gets: the profile's, with the task's image and env.

    Args:
        profile_spec: The profile's default spec.
        image: The task's image override; empty keeps the profile's.
        env: The task's environment, layered over the profile's.

    Returns:
        A new spec (the inputs are not modified).
    """
    spec = sandbox_pb2.SandboxSpec()
    spec.CopyFrom(profile_spec)
    if image:
        spec.image = image
    if env:
        spec.env.update(env)
    return spec


class RunSink(Protocol):
    """Where a run's progress goes (K1 implements it over the database).

    Every method is called from executor threads; ``finished`` exactly once
    per started job, last.
    """

    def started(self, run_id: str, sandbox_id: str) -> bool:
        """The sandbox is acquired; False if the run is stale (then nothing runs)."""
        ...

    def output(self, run_id: str, data: bytes) -> None:
        """A chunk of output, in order, within the executor's byte cap."""
        ...

    def heartbeat(self, run_id: str) -> bool:
        """Extends the run's lease; False if the run is stale or cancelled."""
        ...

    def finished(self, run_id: str, outcome: Outcome) -> None:
        """The run ended."""
        ...
