"""What the server interceptor and its clients share: metadata keys, the one
error mapping, and the tolerant request deserializer.

* :func:`status_of` maps typed :class:`ServiceError` subclasses to their
  status codes, passes a downstream ``grpc.RpcError`` through with its code
  and details, and turns anything else into INTERNAL, so no client ever sees
  UNKNOWN.
* :func:`tolerant_deserializer` makes malformed request bytes a
  :class:`Malformed` marker, which the interceptor answers with
  INVALID_ARGUMENT instead of gRPC's INTERNAL.
* :func:`is_open_method` names what needs no internal credential (health and
  reflection).

The interceptor itself is
:class:`services.runtime.aio_interceptors.AioServingInterceptor`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from services.runtime.errors import ServiceError, clip_message

log = logging.getLogger(__name__)

INTERNAL_TOKEN_KEY = "longshore-internal-token"  # noqa: S105 (a metadata key, not a secret)
# Trailing metadata on every response: which release answered (version skew checks).
VERSION_KEY = "longshore-version"
# On health checks: why the server is not serving (the health protocol carries only a status).
HEALTH_DETAIL_KEY = "longshore-health-detail"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

# Services anyone may call: probes and tooling must work without credentials.
OPEN_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def is_open_method(method: str) -> bool:
    """Returns whether ``method`` (``/pkg.Service/Method``) needs no credential."""
    return method.startswith(OPEN_SERVICE_PREFIXES)


class CallMetadata(Protocol):
    """A call's server context as far as its metadata goes (``grpc.aio``'s, or a stand-in)."""

    def invocation_metadata(self) -> Iterable[tuple[str, str | bytes]] | None:
        """The call's invocation metadata."""


def metadata_value(context: CallMetadata, key: str) -> str:
    """Returns the first value of invocation metadata ``key``, or ``""``."""
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


@dataclass(frozen=True)
class Malformed:
    """Stands for request bytes the method's deserializer could not parse."""

    message: str


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "name", "") or "request")


def tolerant_deserializer(
    deserializer: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """Returns ``deserializer`` made to return :class:`Malformed` instead of raising.

    gRPC answers a deserializer's exception with INTERNAL "Exception
    deserializing request!"; bad bytes are the caller's fault, so the wrapped
    handler (the serving interceptor) turns the marker into INVALID_ARGUMENT instead.
    """
    if deserializer is None or getattr(deserializer, "_longshore_tolerant", False):
        return deserializer
    name = _message_name(deserializer)

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or a message nested too deep to parse
            return Malformed(f"request: malformed {name} bytes")

    parse._longshore_tolerant = True  # type: ignore[attr-defined]
    return parse


def status_of(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """Returns the status (code, capped message) a client sees for ``exc``.

    The one mapping every server applies: a typed
    :class:`ServiceError` keeps its code, a failed downstream call keeps its
    code and message (UNKNOWN becomes INTERNAL), anything else is logged with
    its traceback and becomes INTERNAL naming ``method``.
    """
    if isinstance(exc, ServiceError):
        # Capped: a message quoting a huge value must not overflow the trailers.
        return exc.code, clip_message(exc.message)
    code_of = getattr(exc, "code", None)
    if isinstance(exc, grpc.RpcError) and callable(code_of):
        # A downstream call failed (sync grpc.Call or grpc.aio.AioRpcError):
        # keep its code and message for the caller.
        code = code_of()
        if not isinstance(code, grpc.StatusCode) or code == grpc.StatusCode.UNKNOWN:
            code = grpc.StatusCode.INTERNAL
        details = exc.details() if callable(getattr(exc, "details", None)) else ""
        return code, clip_message(details or code.name)
    if isinstance(exc, NotImplementedError):
        # The generated servicer base raises it for an RPC of the contract
        # this server does not serve (yet): the caller asked for a method,
        # not for a crash.
        return grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this server"
    log.error(
        "unhandled exception in %s",
        method,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"rpc_method": method},
    )
    return grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}"
