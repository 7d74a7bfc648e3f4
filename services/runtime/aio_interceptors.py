"""The server interceptors of :mod:`services.runtime.interceptors`, for ``grpc.aio``.

Same behaviours, same tables: typed errors map through
:func:`~services.runtime.interceptors.status_of` (downstream codes pass
through, anything else is INTERNAL), malformed request bytes are
INVALID_ARGUMENT, every response carries ``longshore-version`` (and health
checks ``longshore-health-detail``), and the internal credential is checked
when asked. A wrapped behaviour keeps its shape: a coroutine stays a
coroutine, an async generator stays an async generator (the health service's
``Watch`` writes with ``context.write`` and returns nothing).
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from services.runtime.interceptors import (
    HEALTH_CHECK_METHOD,
    HEALTH_DETAIL_KEY,
    INTERNAL_TOKEN_KEY,
    VERSION_KEY,
    Malformed,
    is_open_method,
    status_of,
    tolerant_deserializer,
)

AsyncBehavior = Callable[..., Any]
#: Runs before a behaviour (may abort the call); None to let it proceed.
Before = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[None]]
#: Turns an exception that escaped a behaviour into an abort (always raises).
OnError = Callable[[Exception, aio.ServicerContext[Any, Any]], Awaitable[None]]
# Quoted: the gRPC handler type is generic only in its stubs.
Continuation = Callable[
    [grpc.HandlerCallDetails], "Awaitable[grpc.RpcMethodHandler[Any, Any] | None]"
]


def _wrapped(
    behavior: AsyncBehavior, before: Before | None, on_error: OnError | None
) -> AsyncBehavior:
    """Returns ``behavior`` with ``before`` run first and ``on_error`` catching."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if before is not None:
                await before(request, context)
            try:
                async for item in behavior(request, context):
                    yield item
            except aio.AbortError:
                raise  # the behaviour chose its status already
            except Exception as exc:
                if on_error is None:
                    raise
                await on_error(exc, context)

        return stream

    async def single(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        if before is not None:
            await before(request, context)
        try:
            return await behavior(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            if on_error is None:
                raise
            await on_error(exc, context)

    return single


def _replace(
    handler: grpc.RpcMethodHandler[Any, Any],
    before: Before | None,
    on_error: OnError | None,
    *,
    tolerant: bool = False,
) -> grpc.RpcMethodHandler[Any, Any]:
    """Returns ``handler`` with its behaviour wrapped, its cardinality kept.

    With ``tolerant``, the request deserializer returns
    :class:`~services.runtime.interceptors.Malformed` instead of raising, so
    ``before`` can answer INVALID_ARGUMENT instead of gRPC's INTERNAL.
    """
    parse = handler.request_deserializer
    if tolerant:
        parse = tolerant_deserializer(parse)
    serialize = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _wrapped(handler.unary_unary, before, on_error), parse, serialize
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _wrapped(handler.unary_stream, before, on_error), parse, serialize
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _wrapped(handler.stream_unary, before, on_error), parse, serialize
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        _wrapped(handler.stream_stream, before, on_error), parse, serialize
    )


class AioErrorInterceptor(aio.ServerInterceptor):
    """Maps exceptions escaping handlers to precise codes; malformed bytes → INVALID_ARGUMENT."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        async def refuse_malformed(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)

        async def on_error(exc: Exception, context: aio.ServicerContext[Any, Any]) -> None:
            code, message = status_of(exc, method)
            await context.abort(code, message)

        return _replace(handler, refuse_malformed, on_error, tolerant=True)


class AioVersionInterceptor(aio.ServerInterceptor):
    """Adds ``longshore-version`` trailing metadata (and the health detail on checks)."""

    def __init__(self, version: str, health_detail: Callable[[], str] | None = None) -> None:
        self._metadata = ((VERSION_KEY, version),)
        self._health_detail = health_detail

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        metadata = self._metadata
        is_check = handler_call_details.method == HEALTH_CHECK_METHOD
        detail = self._health_detail if is_check else None

        async def tag(_request: Any, context: aio.ServicerContext[Any, Any]) -> None:
            text = detail() if detail is not None else ""
            if text:
                context.set_trailing_metadata((*metadata, (HEALTH_DETAIL_KEY, text[:500])))
            else:
                context.set_trailing_metadata(metadata)

        return _replace(handler, tag, None)


class AioInternalTokenInterceptor(aio.ServerInterceptor):
    """Refuses calls without the internal credential, except health and reflection."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("LONGSHORE_INTERNAL_TOKEN: must not be empty")
        self._token = token.encode()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_open_method(method):
            return handler
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == INTERNAL_TOKEN_KEY:
                presented = str(value)
                break
        if hmac.compare_digest(presented.encode(), self._token):
            return handler

        async def refuse(_request: Any, context: aio.ServicerContext[Any, Any]) -> None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method}: missing or wrong internal credential "
                f"({INTERNAL_TOKEN_KEY}); call the gateway instead",
            )

        return _replace(handler, refuse, None)
