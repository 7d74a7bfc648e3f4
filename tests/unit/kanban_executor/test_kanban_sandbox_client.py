"""Status codes of the sandbox service become the executor's typed errors."""

from __future__ import annotations

import grpc
import pytest

from services.kanban.sandbox_client import (
    ExecCancelled,
    FailureKind,
    ImageMissing,
    InvalidSpec,
    SandboxBusy,
    SandboxCallFailed,
    SandboxDeadline,
    SandboxError,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxServiceError,
    SandboxUnavailable,
    translate,
)


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a stub raises: an RpcError that is also a Call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> None: ...
    def trailing_metadata(self) -> None: ...
    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None: ...
    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: object) -> bool:
        return False


@pytest.mark.parametrize(
    ("code", "operation", "error", "kind"),
    [
        (grpc.StatusCode.UNAVAILABLE, "acquire", SandboxUnavailable, FailureKind.UNAVAILABLE),
        (grpc.StatusCode.FAILED_PRECONDITION, "acquire", ImageMissing, FailureKind.IMAGE_MISSING),
        (grpc.StatusCode.FAILED_PRECONDITION, "exec", SandboxNotRunning, FailureKind.NOT_RUNNING),
        (grpc.StatusCode.INVALID_ARGUMENT, "acquire", InvalidSpec, FailureKind.INVALID_SPEC),
        (grpc.StatusCode.NOT_FOUND, "exec", SandboxNotFound, FailureKind.NOT_FOUND),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "acquire",
            SandboxDeadline,
            FailureKind.DEADLINE_EXCEEDED,
        ),
        (grpc.StatusCode.CANCELLED, "exec", ExecCancelled, FailureKind.CANCELLED),
        (grpc.StatusCode.INTERNAL, "acquire", SandboxServiceError, FailureKind.SERVICE_ERROR),
        (grpc.StatusCode.UNKNOWN, "exec", SandboxServiceError, FailureKind.SERVICE_ERROR),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            "acquire",
            SandboxServiceError,
            FailureKind.SERVICE_ERROR,
        ),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "acquire", SandboxBusy, FailureKind.BUSY),
        (grpc.StatusCode.ABORTED, "acquire", SandboxCallFailed, FailureKind.OTHER),
    ],
)
def test_translate(
    code: grpc.StatusCode, operation: str, error: type[SandboxError], kind: FailureKind
) -> None:
    translated = translate(FakeRpcError(code, "image busybox:nope not found"), operation=operation)
    assert type(translated) is error
    assert translated.kind is kind
    assert translated.code is code
    assert str(translated) == f"{kind.value}: {operation}: image busybox:nope not found"
