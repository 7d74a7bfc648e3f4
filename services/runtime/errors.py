"""Typed service errors, each bound to the gRPC status code a client sees.

Domain code raises these with a message that names the field or resource at
fault; the error interceptor in :mod:`services.runtime.interceptors` turns them
into statuses. Anything else that escapes a handler becomes INTERNAL.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

#: How much of a caller-supplied value a message may quote.
QUOTE_CHARS = 100
#: Hard cap on any status message a client receives (the status travels in
#: HTTP/2 trailers, which the default 8 KiB header limit would otherwise break).
MAX_STATUS_MESSAGE_CHARS = 1000


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """Return ``repr(value)`` shortened to its first ``limit`` characters.

    Every message that echoes a caller-supplied value uses this, so a 1 MB id
    never travels back in a status.

    Args:
        value: The value to quote (usually a string from the request).
        limit: Characters of the value to keep.

    Returns:
        The quoted value, e.g. ``'abc'`` or ``'aaaa…' (1048576 chars)``.
    """
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} chars)"
    if isinstance(value, bytes) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} bytes)"
    text = repr(value)
    return text if len(text) <= limit + 2 else text[: limit + 2] + "…"


def clip_message(message: str, limit: int = MAX_STATUS_MESSAGE_CHARS) -> str:
    """Return ``message`` cut to ``limit`` characters (a status message's cap)."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


class ServiceError(Exception):
    """Base of every error a handler may raise on purpose.

    Attributes:
        code: The gRPC status code the client receives.
        message: The human-readable detail the client receives.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(ServiceError):
    """The request is malformed; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """A named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """The resource to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The system is not in a state that allows the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    """A concurrency conflict; the caller may retry the whole operation."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(ServiceError):
    """A value is past the valid range (e.g. an offset past the end)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class PermissionDenied(ServiceError):
    """The caller is known but lacks the needed scope."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    """The caller presented no valid credential."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ServiceError):
    """A quota or rate limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """A dependency (Docker, a backend, the database) cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """The operation did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    """The operation was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Internal(ServiceError):
    """A bug or broken invariant on the server side."""

    code = grpc.StatusCode.INTERNAL
