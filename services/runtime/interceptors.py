"""Server interceptors every Longshore service installs.

* :class:`ErrorInterceptor` maps typed :class:`ServiceError` subclasses to
  their status codes, passes a downstream ``grpc.RpcError`` through with its
  code and details, and turns anything else into INTERNAL, so no client ever
  sees UNKNOWN.
* Every wrapping interceptor makes the request deserializer tolerant, so
  malformed request bytes are INVALID_ARGUMENT, not gRPC's INTERNAL.
* :class:`InternalTokenInterceptor` makes backends refuse calls that do not
  carry the internal service credential (health and reflection excepted).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from services.runtime.errors import InvalidArgument, ServiceError, clip_message

log = logging.getLogger(__name__)

INTERNAL_TOKEN_KEY = "longshore-internal-token"  # noqa: S105 (a metadata key, not a secret)
# Trailing metadata on every response: which release answered (version skew checks).
VERSION_KEY = "longshore-version"

# Services anyone may call: probes and tooling must work without credentials.
OPEN_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def is_open_method(method: str) -> bool:
    """Returns whether ``method`` (``/pkg.Service/Method``) needs no credential."""
    return method.startswith(OPEN_SERVICE_PREFIXES)


class CallMetadata(Protocol):
    """A call's server context as far as its metadata goes (sync or ``grpc.aio``)."""

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
    behaviour turns the marker into INVALID_ARGUMENT instead.
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


def _refuse_malformed(behavior: Behavior, client_streaming: bool) -> Behavior:
    """Returns ``behavior`` that answers INVALID_ARGUMENT for unparsable requests."""
    if client_streaming:

        def each(requests: Iterator[Any]) -> Iterator[Any]:
            for request in requests:
                if isinstance(request, Malformed):
                    raise InvalidArgument(request.message)
                yield request

        def streamed(request: Any, context: grpc.ServicerContext) -> Any:
            return behavior(each(request), context)

        return streamed

    def single(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return behavior(request, context)

    return single


def _replace_behaviors(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap: Callable[[Behavior, bool], Behavior],
) -> grpc.RpcMethodHandler[Any, Any]:
    """Returns ``handler`` with each behaviour wrapped (keeping its cardinality).

    The request deserializer is made tolerant on the way: malformed request
    bytes reach the client as INVALID_ARGUMENT naming the message, not as
    gRPC's INTERNAL.
    """
    parse = tolerant_deserializer(handler.request_deserializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(_refuse_malformed(handler.unary_unary, False), False),
            request_deserializer=parse,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(_refuse_malformed(handler.unary_stream, False), True),
            request_deserializer=parse,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(_refuse_malformed(handler.stream_unary, True), False),
            request_deserializer=parse,
            response_serializer=handler.response_serializer,
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        wrap(_refuse_malformed(handler.stream_stream, True), True),
        request_deserializer=parse,
        response_serializer=handler.response_serializer,
    )


def status_of(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """Returns the status (code, capped message) a client sees for ``exc``.

    The one mapping of the sync and the async interceptors: a typed
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
    log.error(
        "unhandled exception in %s",
        method,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"rpc_method": method},
    )
    return grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}"


def _abort_for(exc: BaseException, context: grpc.ServicerContext, method: str) -> None:
    """Aborts ``context`` with the status that ``exc`` stands for. Always raises."""
    code, message = status_of(exc, method)
    context.abort(code, message)


def _already_aborted(context: grpc.ServicerContext) -> bool:
    code = context.code()  # type: ignore[attr-defined]
    return code is not None and code != grpc.StatusCode.OK


Wrap = Callable[[Behavior, bool], Behavior]


class _WrappingInterceptor(grpc.ServerInterceptor):
    """Base: wraps a method's behaviour when :meth:`wrapper` returns a wrapper."""

    def wrapper(self, details: grpc.HandlerCallDetails) -> Wrap | None:
        """Returns how to wrap the call's behaviour, or None to leave it as is."""
        raise NotImplementedError

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        wrap = self.wrapper(handler_call_details)
        return handler if wrap is None else _replace_behaviors(handler, wrap)


class ErrorInterceptor(_WrappingInterceptor):
    """Maps exceptions escaping handlers to precise status codes."""

    def wrapper(self, details: grpc.HandlerCallDetails) -> Wrap:
        method = details.method

        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            if streaming:

                def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    try:
                        yield from behavior(request, context)
                    except Exception as exc:
                        if _already_aborted(context):
                            raise
                        _abort_for(exc, context, method)

                return stream

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return behavior(request, context)
                except Exception as exc:
                    if _already_aborted(context):
                        raise
                    _abort_for(exc, context, method)

            return unary

        return wrap


HEALTH_DETAIL_KEY = "longshore-health-detail"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


class VersionInterceptor(_WrappingInterceptor):
    """Adds the server's release as ``longshore-version`` trailing metadata.

    On health checks it also says why the server is not serving
    (``longshore-health-detail``, e.g. "docker engine unreachable: connection
    refused"): the gRPC health protocol carries only a status, and the gateway's
    status and ``longshore status`` show the reason.
    """

    def __init__(self, version: str, health_detail: Callable[[], str] | None = None) -> None:
        self._metadata = ((VERSION_KEY, version),)
        self._health_detail = health_detail

    def wrapper(self, details: grpc.HandlerCallDetails) -> Wrap:
        metadata = self._metadata
        detail = self._health_detail if details.method == HEALTH_CHECK_METHOD else None

        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            def tagged(request: Any, context: grpc.ServicerContext) -> Any:
                text = detail() if detail is not None else ""
                if text:
                    context.set_trailing_metadata((*metadata, (HEALTH_DETAIL_KEY, text[:500])))
                else:
                    context.set_trailing_metadata(metadata)
                return behavior(request, context)

            return tagged

        return wrap


class InternalTokenInterceptor(_WrappingInterceptor):
    """Refuses calls without the internal credential, except health and reflection."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("LONGSHORE_INTERNAL_TOKEN: must not be empty")
        self._token = token.encode()

    def wrapper(self, details: grpc.HandlerCallDetails) -> Wrap | None:
        method = details.method
        if is_open_method(method):
            return None
        presented = ""
        for key, value in details.invocation_metadata or ():
            if key == INTERNAL_TOKEN_KEY:
                presented = str(value)
                break
        if hmac.compare_digest(presented.encode(), self._token):
            return None

        def wrap(behavior: Behavior, streaming: bool) -> Behavior:
            def refuse(request: Any, context: grpc.ServicerContext) -> Any:
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{method}: missing or wrong internal credential "
                    f"({INTERNAL_TOKEN_KEY}); call the gateway instead",
                )

            return refuse

        return wrap
