"""User-facing errors: one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import grpc

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error to print as one line (``error: ...``) before exiting non-zero."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


_HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: (
        "the gateway refused the API key ({details}); pass --api-key, set "
        "LONGSHORE_API_KEY, or put api_key in $LONGSHORE_HOME/cli.yaml"
    ),
    grpc.StatusCode.PERMISSION_DENIED: "permission denied: {details}",
    grpc.StatusCode.NOT_FOUND: "not found: {details}",
    grpc.StatusCode.ALREADY_EXISTS: "already exists: {details}",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid argument: {details}",
    grpc.StatusCode.FAILED_PRECONDITION: "not allowed now: {details}",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "limit reached: {details}",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timed out: {details} (raise --timeout?)",
    grpc.StatusCode.CANCELLED: "cancelled: {details}",
}


def describe_rpc_error(exc: grpc.RpcError, addr: str) -> str:
    """Turn a failed call into the one line a person reads."""
    if not isinstance(exc, grpc.Call):
        return f"call to the gateway at {addr} failed: {exc}"
    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        if "backend" in details:
            return f"unavailable: {details}"
        return (
            f"cannot reach the gateway at {addr} ({details}); is it running "
            "(`longshore up`)? set --addr or LONGSHORE_GATEWAY_ADDR"
        )
    template = _HINTS.get(code)
    if template is None:
        return f"{code.name.lower()}: {details}"
    return template.format(details=details)
