"""Server-sent events relayed from gRPC server streams (WatchEvents, run output).

A view returns an :class:`EventStream`: how to start the upstream call and how
to turn its messages into frames. The HTTP layer relays it with
:func:`relay`, an async generator: a reader thread drains the (blocking) gRPC
iterator into an asyncio queue, and the generator writes frames plus a
heartbeat comment every few seconds. When the browser leaves, Starlette
cancels the response, the generator's ``finally`` cancels the gRPC call, and
the reader thread ends with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

log = logging.getLogger(__name__)

#: Converts one stream message to ``(event name, event id, JSON data)``.
Converter = Callable[[Any], tuple[str, str, Any]]

HEARTBEAT_SECONDS = 10.0

#: Messages read ahead of the browser at most; the reader thread waits beyond
#: this, which holds the gRPC stream's own flow control.
READ_AHEAD = 256


class StreamHub:
    """The open upstream calls, so shutdown can cancel them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: set[Any] = set()

    def add(self, call: Any) -> None:
        """Track a call."""
        with self._lock:
            self._calls.add(call)

    def discard(self, call: Any) -> None:
        """Forget a call."""
        with self._lock:
            self._calls.discard(call)

    def cancel_all(self) -> None:
        """Cancel every open call (shutdown): each relay then ends its response."""
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)


def format_event(name: str, event_id: str, data: Any) -> bytes:
    """One SSE frame."""
    lines = [f"event: {name}"]
    if event_id:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


@dataclass
class EventStream:
    """A server stream to relay as SSE.

    Attributes:
        start: Starts the upstream call; returns a cancellable gRPC call.
        convert: Turns one message into a frame's name, id and data.
        prelude: Frames sent before the first message (e.g. ``hello``).
        on_unauthenticated: Called when the gateway refuses the stream's key
            (ends the session whose key it was).
        heartbeat: Seconds between keep-alive comments.
    """

    start: Callable[[], Any]
    convert: Converter
    prelude: list[bytes] = field(default_factory=list)
    on_unauthenticated: Callable[[], None] | None = None
    heartbeat: float = HEARTBEAT_SECONDS


def _read(
    call: Any,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[Any],
    closed: threading.Event,
) -> None:
    """Reader thread: gRPC messages into the queue, then ``end`` or ``error``."""
    slots = threading.BoundedSemaphore(READ_AHEAD)

    def put(item: tuple[str, Any]) -> None:
        # Wait for the browser to catch up, but never for a relay that is gone.
        while not slots.acquire(timeout=1.0):
            if closed.is_set():
                return
        if closed.is_set():
            return
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, slots))
        except RuntimeError:  # the loop is closed: nobody is reading any more
            call.cancel()

    try:
        for message in call:
            put(("message", message))
        put(("end", None))
    except grpc.RpcError as exc:
        put(("error", exc))
    except Exception as exc:  # never leave the writer waiting forever
        log.warning("event stream reader failed: %s", type(exc).__name__)
        put(("error", exc))


async def relay(stream: EventStream, hub: StreamHub) -> AsyncGenerator[bytes, None]:
    """Frames of ``stream``: prelude, messages, heartbeats, then ``end`` or ``error``."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    closed = threading.Event()
    call = stream.start()
    hub.add(call)
    reader = threading.Thread(
        target=_read, args=(call, loop, queue, closed), name="sse-reader", daemon=True
    )
    reader.start()
    try:
        for frame in stream.prelude:
            yield frame
        yield b"retry: 2000\n\n"
        while True:
            try:
                (kind, item), slots = await asyncio.wait_for(queue.get(), stream.heartbeat)
            except TimeoutError:
                yield b": ping\n\n"
                continue
            slots.release()
            if kind == "message":
                yield format_event(*stream.convert(item))
            elif kind == "end":
                yield format_event("end", "", {})
                return
            else:
                code = item.code() if isinstance(item, grpc.Call) else grpc.StatusCode.INTERNAL
                if code is grpc.StatusCode.CANCELLED:
                    return
                if code is grpc.StatusCode.UNAUTHENTICATED and stream.on_unauthenticated:
                    stream.on_unauthenticated()
                message = item.details() if isinstance(item, grpc.Call) else "stream failed"
                yield format_event("error", "", {"code": code.name, "message": message})
                return
    finally:
        # Runs when the upstream ended, and when the browser left (Starlette
        # cancels the response task): either way the upstream call must stop.
        closed.set()
        call.cancel()
        hub.discard(call)
