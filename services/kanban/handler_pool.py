"""The kanban servicers on ``grpc.aio``: blocking handlers in one bounded thread pool.

Kanban's handlers are SQLAlchemy transactions, which block. Rather than
rewrite each, :meth:`HandlerPool.aio_face` presents a servicer to the aio
server as coroutines: a plain (blocking) unary method runs in the pool, a
method written as a coroutine or an async generator (the long poll and the
streams, which spend their life waiting) runs on the loop as it is. A held
call therefore costs a coroutine; only the work between its waits takes a
thread, and never more threads than the pool has.

A blocking method receives a :class:`ThreadContext`, not the aio context:
the aio context belongs to the loop, so what a handler reads of it (the
caller's metadata, for :func:`services.runtime.callers.caller`) is read on the
loop before the handler is sent to the pool.

A database that cannot be reached is the platform's failure, not the
caller's: whatever runs in the pool and meets one answers UNAVAILABLE
("database unreachable: ..."), which clients retry, never INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from sqlalchemy.exc import OperationalError

from services.runtime.errors import Unavailable

T = TypeVar("T")


class ThreadContext:
    """What a blocking handler may use of its call from a pool thread.

    Args:
        metadata: The call's invocation metadata, read on the loop.
    """

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The call's invocation metadata (as ``grpc.ServicerContext`` has it)."""
        return self._metadata


class HandlerPool:
    """The one bounded pool every blocking kanban handler runs in.

    Args:
        max_workers: Threads (``kanban.max_workers``): the most handlers, long
            poll attempts and stream reads in a transaction at once; more wait
            on the loop for a thread, holding none.
    """

    def __init__(self, max_workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kanban-rpc")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the pool and await its result.

        The caller's context variables go with it: the OpenTelemetry span of
        the call (so SQL spans and the trace parent stored on new tasks stay
        in the call's trace).
        """
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        try:
            return await loop.run_in_executor(self._pool, call)
        except OperationalError as err:
            # Connection refused or dropped, a pool that could not connect,
            # SQLite busy past its timeout: retryable, and said as such.
            first = str(err.orig if err.orig is not None else err).strip().splitlines()
            raise Unavailable(
                f"database unreachable: {first[0] if first else type(err).__name__}"
            ) from err

    def shutdown(self) -> None:
        """Stop taking work; threads finish what they hold."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def aio_face(self, servicer: object, service: ServiceDescriptor) -> Any:
        """An object with one coroutine (or async generator) per RPC of ``service``.

        Pass it to the generated ``add_<Service>Servicer_to_server``.

        Raises:
            TypeError: A streaming method is blocking (a held stream must not
                hold a thread).
        """
        handlers: dict[str, Callable[..., Any]] = {}
        for method in service.methods:
            behavior = getattr(servicer, method.name)
            # Unwrapped: request checks (services.kanban.limits) wrap methods
            # in a plain function that returns the coroutine it calls.
            native = inspect.unwrap(behavior)
            if inspect.isasyncgenfunction(native):
                handlers[method.name] = _stream(behavior)
            elif inspect.iscoroutinefunction(native):
                handlers[method.name] = _unary(behavior)
            elif method.server_streaming or method.client_streaming:
                raise TypeError(f"{service.full_name}.{method.name}: a stream must be async")
            else:
                handlers[method.name] = self._blocking(behavior)
        return SimpleNamespace(**handlers)

    def _blocking(self, behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            metadata = tuple(context.invocation_metadata() or ())
            return await self.run(behavior, request, ThreadContext(metadata))

        return unary


def _unary(behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        return await behavior(request, context)

    return unary


def _stream(behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async for item in behavior(request, context):
            yield item

    return stream
