"""The kanban service's client of the sandbox service, with typed errors.

:class:`SandboxClient` wraps ``longshore.sandbox.v1.SandboxService`` over
``services.runtime.channels.open_channel`` (trace propagation, the internal
token), sets an explicit timeout on every call and turns ``grpc.RpcError``
into :class:`SandboxError` subclasses whose :class:`FailureKind` lets the
executor say precisely why a spawn failed (service down vs image missing vs
a bad spec vs anything else).

Each Exec gets its own channel: the traced channel hands back a generator
without ``cancel()``, and closing the channel is the one way to cancel a
stream from another thread that works through every interceptor.

Idempotent calls retry by themselves: the channel carries a gRPC retry
policy (:data:`RETRY_SERVICE_CONFIG`) for AcquireSandbox (get-or-create by
key: a retried acquire finds the sandbox the first attempt made),
GetSandbox, ListSandboxes and ReleaseSandbox, on UNAVAILABLE only, with
bounded attempts and backoff. Exec is never retried: a command must not run
twice because a stream broke.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2, sandbox_service_pb2_grpc
from opentelemetry import trace

from services.runtime.channels import open_channel

SERVICE = "longshore.sandbox.v1.SandboxService"
HEALTH_DETAIL_KEY = "longshore-health-detail"
HEALTH_TIMEOUT_SECONDS = 3.0
RETRY_ATTEMPTS = 4
RETRIED_METHODS = ("AcquireSandbox", "GetSandbox", "ListSandboxes", "ReleaseSandbox")
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": SERVICE, "method": m} for m in RETRIED_METHODS],
                "retryPolicy": {
                    # Bounded: 4 attempts, 0.2 s doubling to at most 2 s, with
                    # gRPC's jitter; within each call's own deadline.
                    "maxAttempts": RETRY_ATTEMPTS,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class FailureKind(enum.StrEnum):
    """What went wrong talking to the sandbox service."""

    UNAVAILABLE = "unavailable"
    PERMISSION_DENIED = "permission-denied"
    IMAGE_MISSING = "image-missing"
    INVALID_SPEC = "invalid-spec"
    NOT_FOUND = "not-found"
    NOT_RUNNING = "not-running"
    DEADLINE_EXCEEDED = "deadline-exceeded"
    CANCELLED = "cancelled"
    SERVICE_ERROR = "service-error"
    BUSY = "busy"
    OTHER = "other"


class SandboxError(Exception):
    """A sandbox service call failed.

    Attributes:
        kind: What went wrong.
        code: The gRPC status, when the failure came from one.
        message: The detail (the service's message, or ours).
    """

    kind: FailureKind = FailureKind.OTHER

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


class SandboxUnavailable(SandboxError):
    """The sandbox service (or its Docker engine) cannot be reached."""

    kind = FailureKind.UNAVAILABLE


class ImageMissing(SandboxError):
    """The requested image does not exist on the engine (FAILED_PRECONDITION on acquire)."""

    kind = FailureKind.IMAGE_MISSING


class InvalidSpec(SandboxError):
    """The service rejected the request (INVALID_ARGUMENT)."""

    kind = FailureKind.INVALID_SPEC


class SpecRefused(SandboxError):
    """The spec asks for more than the manager's policy allows (PERMISSION_DENIED)."""

    kind = FailureKind.PERMISSION_DENIED


class SandboxNotFound(SandboxError):
    """No such sandbox in this deployment."""

    kind = FailureKind.NOT_FOUND


class SandboxNotRunning(SandboxError):
    """The sandbox exists but is not running (FAILED_PRECONDITION on exec)."""

    kind = FailureKind.NOT_RUNNING


class SandboxDeadline(SandboxError):
    """The call ran past its deadline."""

    kind = FailureKind.DEADLINE_EXCEEDED


class ExecCancelled(SandboxError):
    """The exec stream was cancelled by this client."""

    kind = FailureKind.CANCELLED


class SandboxServiceError(SandboxError):
    """The sandbox service failed in itself (INTERNAL, UNKNOWN) or refused our
    credential (UNAUTHENTICATED): a fault of the platform, never of the work."""

    kind = FailureKind.SERVICE_ERROR


class SandboxBusy(SandboxError):
    """The sandbox service refused for want of capacity (RESOURCE_EXHAUSTED: its
    calls in flight are at their bound): the platform's refusal, never the work's."""

    kind = FailureKind.BUSY


class SandboxCallFailed(SandboxError):
    """Any other failure."""

    kind = FailureKind.OTHER


def translate(err: grpc.RpcError, *, operation: str) -> SandboxError:
    """Map a failed call to the typed error the executor reports.

    Args:
        err: The error the stub raised.
        operation: ``acquire``, ``exec``, ``release`` or ``list``.

    Returns:
        The typed error (not raised).
    """
    code: grpc.StatusCode | None = err.code() if isinstance(err, grpc.Call) else None
    details = (err.details() if isinstance(err, grpc.Call) else None) or str(err)
    message = f"{operation}: {details}"
    if code is grpc.StatusCode.UNAVAILABLE:
        return SandboxUnavailable(message, code=code)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        if operation == "acquire":
            return ImageMissing(message, code=code)
        return SandboxNotRunning(message, code=code)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidSpec(message, code=code)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return SpecRefused(message, code=code)
    if code is grpc.StatusCode.NOT_FOUND:
        return SandboxNotFound(message, code=code)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return SandboxDeadline(message, code=code)
    if code is grpc.StatusCode.CANCELLED:
        return ExecCancelled(message, code=code)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return SandboxBusy(message, code=code)
    if code in (
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAUTHENTICATED,
    ):
        return SandboxServiceError(message, code=code)
    return SandboxCallFailed(message, code=code)


@dataclass(frozen=True, slots=True)
class AcquiredSandbox:
    """A sandbox the service handed out, and how it got it."""

    sandbox_id: str
    reused: bool
    outcome: str
    reason: str


@dataclass(frozen=True, slots=True)
class ExecOutput:
    """A chunk of a command's output (``stream`` 1 = stdout, 2 = stderr)."""

    stream: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The final status of an exec (``ExecExit`` in sandbox.proto)."""

    exit_code: int
    signal: int
    timed_out: bool
    truncated: bool
    duration_seconds: float
    output_bytes: int


class ExecStream(Protocol):
    """Output chunks then one :class:`ExecResult`; raises :class:`SandboxError`."""

    def __iter__(self) -> Iterator[ExecOutput | ExecResult]:
        """Yields the stream's events."""
        ...

    def cancel(self) -> None:
        """Cancels the stream from any thread; iteration then raises ExecCancelled."""
        ...


class SandboxApi(Protocol):
    """What the executor needs from the sandbox service (a fake implements it in tests)."""

    def acquire(
        self, task_id: str, profile: str, spec: sandbox_pb2.SandboxSpec, *, persist: bool
    ) -> AcquiredSandbox:
        """Acquires the sandbox for (task, profile); raises :class:`SandboxError`."""
        ...

    def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        timeout_seconds: float,
        max_output_bytes: int,
    ) -> ExecStream:
        """Starts a command; the stream is lazy (the call starts on first iteration)."""
        ...

    def release(self, sandbox_id: str, *, force: bool) -> bool:
        """Releases a sandbox; True when a removal was scheduled."""
        ...

    def find(self, task_id: str, profile: str) -> list[str]:
        """Ids of the sandboxes of (task, profile) in this deployment."""
        ...


class _GrpcExecStream:
    """An Exec call on its own channel, so ``cancel()`` can close it from any thread."""

    def __init__(
        self,
        channel: grpc.Channel,
        request: sandbox_service_pb2.ExecRequest,
        deadline: float,
    ) -> None:
        self._channel = channel
        self._request = request
        self._deadline = deadline
        self._lock = threading.Lock()
        self._cancelled = False
        self._closed = False

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            self._close_locked()

    def _close_locked(self) -> None:
        if not self._closed:
            self._closed = True
            self._channel.close()

    def __iter__(self) -> Iterator[ExecOutput | ExecResult]:
        stub = sandbox_service_pb2_grpc.SandboxServiceStub(self._channel)
        try:
            with self._lock:
                if self._cancelled:
                    raise ExecCancelled("exec: cancelled before it started")
            for message in stub.Exec(self._request, timeout=self._deadline):
                if message.HasField("output"):
                    yield ExecOutput(int(message.output.stream), message.output.data)
                elif message.HasField("exit"):
                    ex = message.exit
                    yield ExecResult(
                        exit_code=ex.exit_code,
                        signal=ex.signal,
                        timed_out=ex.timed_out,
                        truncated=ex.truncated,
                        duration_seconds=ex.duration.ToTimedelta().total_seconds(),
                        output_bytes=ex.output_bytes,
                    )
        except grpc.RpcError as err:
            if self._cancelled:
                raise ExecCancelled("exec: cancelled", code=grpc.StatusCode.CANCELLED) from err
            raise translate(err, operation="exec") from err
        except ValueError as err:
            # A channel closed under a starting call raises ValueError, not
            # RpcError. Only cancel() and the end of iteration close it, so
            # outside a cancel it is a broken call, never an "internal error".
            if self._cancelled:
                raise ExecCancelled("exec: cancelled") from err
            raise SandboxCallFailed(f"exec: the call broke: {err}") from err
        finally:
            with self._lock:
                self._close_locked()


class SandboxClient:
    """Typed client of the sandbox service.

    Args:
        addr: The service's ``host:port``.
        internal_token: The credential between services.
        acquire_timeout: Deadline of AcquireSandbox (creating a container).
        call_timeout: Deadline of the other unary calls.
        exec_grace: Added to an exec's own timeout for the call's deadline, so
            the service's timeout (which kills the process tree and reports
            ``timed_out``) fires first.
        tracer_provider: Provider of the client spans; the global one by default.
        channel_factory: Opens a channel (tests may inject one); defaults to
            ``open_channel(addr, internal_token=..., tracer_provider=...)``.
    """

    def __init__(
        self,
        addr: str,
        *,
        internal_token: str | None = None,
        acquire_timeout: float = 120.0,
        call_timeout: float = 10.0,
        exec_grace: float = 30.0,
        tracer_provider: trace.TracerProvider | None = None,
        channel_factory: Callable[[], grpc.Channel] | None = None,
    ) -> None:
        self._factory = channel_factory or (
            lambda: open_channel(
                addr,
                internal_token=internal_token,
                tracer_provider=tracer_provider,
                options=[("grpc.service_config", RETRY_SERVICE_CONFIG)],
            )
        )
        self._channel = self._factory()
        self._stub = sandbox_service_pb2_grpc.SandboxServiceStub(self._channel)
        self._acquire_timeout = acquire_timeout
        self._call_timeout = call_timeout
        self._exec_grace = exec_grace

    def close(self) -> None:
        """Closes the shared channel (exec channels close with their streams)."""
        self._channel.close()

    def health(self) -> str | None:
        """Checks the sandbox service's gRPC health once (bounded).

        Returns:
            ``None`` when it answers SERVING; else why not: the manager's own
            reason (``longshore-health-detail``, e.g. ``docker engine
            unreachable: ...``) or the call's error.
        """
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service="")
        try:
            response, call = stub.Check.with_call(request, timeout=HEALTH_TIMEOUT_SECONDS)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            details = (err.details() if isinstance(err, grpc.Call) else None) or str(err)
            name = code.name if code is not None else "error"
            return f"sandbox manager {name.lower()}: {details}"
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            return None
        detail = ""
        for key, value in call.trailing_metadata() or ():
            if key == HEALTH_DETAIL_KEY:
                detail = value if isinstance(value, str) else value.decode(errors="replace")
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return detail or f"sandbox manager {status}"

    def acquire(
        self, task_id: str, profile: str, spec: sandbox_pb2.SandboxSpec, *, persist: bool
    ) -> AcquiredSandbox:
        """Acquires the running sandbox for (task, profile).

        Raises:
            SandboxError: ImageMissing, SandboxUnavailable, InvalidSpec,
                SpecRefused, SandboxDeadline or SandboxCallFailed.
        """
        request = sandbox_service_pb2.AcquireSandboxRequest(
            task_id=task_id, profile=profile, spec=spec, persist_across_processes=persist
        )
        try:
            response = self._stub.AcquireSandbox(request, timeout=self._acquire_timeout)
        except grpc.RpcError as err:
            raise translate(err, operation="acquire") from err
        return AcquiredSandbox(
            sandbox_id=response.sandbox.sandbox_id,
            reused=response.reused,
            outcome=sandbox_pb2.ReuseOutcome.Name(response.outcome),
            reason=response.reason,
        )

    def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        timeout_seconds: float,
        max_output_bytes: int,
    ) -> ExecStream:
        """Prepares an Exec on a fresh channel; the call starts on first iteration."""
        timeout = duration_pb2.Duration()
        timeout.FromNanoseconds(int(timeout_seconds * 1e9))
        request = sandbox_service_pb2.ExecRequest(
            sandbox_id=sandbox_id,
            argv=list(argv),
            env=dict(env),
            timeout=timeout,
            max_output_bytes=max_output_bytes,
        )
        return _GrpcExecStream(self._factory(), request, timeout_seconds + self._exec_grace)

    def release(self, sandbox_id: str, *, force: bool) -> bool:
        """Releases a sandbox; a sandbox already gone counts as released.

        Raises:
            SandboxError: SandboxUnavailable, SandboxDeadline or SandboxCallFailed.
        """
        request = sandbox_service_pb2.ReleaseSandboxRequest(
            sandbox_id=sandbox_id, force_remove=force
        )
        try:
            response = self._stub.ReleaseSandbox(request, timeout=self._call_timeout)
        except grpc.RpcError as err:
            error = translate(err, operation="release")
            if isinstance(error, SandboxNotFound):
                return False
            raise error from err
        return response.removal_scheduled

    def find(self, task_id: str, profile: str) -> list[str]:
        """Ids of the sandboxes of (task, profile) in this deployment.

        Raises:
            SandboxError: SandboxUnavailable, SandboxDeadline or SandboxCallFailed.
        """
        request = sandbox_service_pb2.ListSandboxesRequest(
            task_id=task_id, profile=profile, page_size=100
        )
        try:
            response = self._stub.ListSandboxes(request, timeout=self._call_timeout)
        except grpc.RpcError as err:
            raise translate(err, operation="list") from err
        return [s.sandbox_id for s in response.sandboxes]
