"""One table from a gRPC status to what E2B's clients expect: an HTTP status
(control plane, ``/files``) and a Connect code (envd's services).

Every failure the front door answers with comes from here: a gateway error
keeps its code and message, a :class:`~services.runtime.errors.ServiceError`
raised by the front door itself (bad input) likewise, and anything else is a
transport failure of the gateway (UNAVAILABLE), never a bare 500.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from grpc import aio

from services.runtime.errors import ServiceError, clip_message

_S = grpc.StatusCode
log = logging.getLogger(__name__)

#: gRPC status -> (HTTP status, Connect code).
TABLE: dict[grpc.StatusCode, tuple[int, Code]] = {
    _S.INVALID_ARGUMENT: (400, Code.INVALID_ARGUMENT),
    _S.OUT_OF_RANGE: (400, Code.OUT_OF_RANGE),
    _S.UNAUTHENTICATED: (401, Code.UNAUTHENTICATED),
    _S.PERMISSION_DENIED: (403, Code.PERMISSION_DENIED),
    _S.NOT_FOUND: (404, Code.NOT_FOUND),
    _S.ALREADY_EXISTS: (409, Code.ALREADY_EXISTS),
    _S.ABORTED: (409, Code.ABORTED),
    _S.FAILED_PRECONDITION: (409, Code.FAILED_PRECONDITION),
    _S.RESOURCE_EXHAUSTED: (429, Code.RESOURCE_EXHAUSTED),
    _S.CANCELLED: (499, Code.CANCELED),
    _S.UNIMPLEMENTED: (501, Code.UNIMPLEMENTED),
    _S.UNAVAILABLE: (503, Code.UNAVAILABLE),
    _S.DEADLINE_EXCEEDED: (504, Code.DEADLINE_EXCEEDED),
    _S.INTERNAL: (500, Code.INTERNAL),
    _S.UNKNOWN: (500, Code.UNKNOWN),
    _S.DATA_LOSS: (500, Code.DATA_LOSS),
}


@dataclass(frozen=True)
class Problem:
    """A failure as the front door reports it."""

    code: grpc.StatusCode
    message: str

    @property
    def http_status(self) -> int:
        """The HTTP status E2B's REST and ``/files`` clients read."""
        return TABLE.get(self.code, (500, Code.INTERNAL))[0]

    def connect_error(self) -> ConnectError:
        """The Connect error envd's clients read."""
        return ConnectError(TABLE.get(self.code, (500, Code.INTERNAL))[1], self.message)


def connect_error_of(exc: BaseException) -> ConnectError:
    """The Connect error for any failure of an envd call.

    A gateway or front-door error keeps its code; anything else is a bug of
    the front door: logged with its traceback and answered INTERNAL with a
    fixed message (never the exception's text, never ``unknown``).
    """
    if isinstance(exc, ConnectError):
        return exc
    problem = problem_of(exc)
    if problem is None:
        log.error("envd call failed", exc_info=exc)
        problem = Problem(_S.INTERNAL, "internal error of the front door")
    return problem.connect_error()


def problem_of(exc: BaseException) -> Problem | None:
    """The problem a gateway or front-door error stands for; None for anything else."""
    if isinstance(exc, aio.AioRpcError):
        code = exc.code()
        detail = exc.details() or code.name
        if code == _S.UNAVAILABLE:
            detail = f"gateway unavailable: {detail}"
        return Problem(code, clip_message(detail))
    if isinstance(exc, ServiceError):
        return Problem(exc.code, clip_message(exc.message))
    return None
