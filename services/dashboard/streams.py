"""Server-sent events from gRPC server streams (WatchEvents, run output).

A reader thread drains the gRPC stream into a queue; the request thread
writes events and a heartbeat comment every few seconds, which is how a
vanished browser is noticed (the write fails) and the gRPC call cancelled.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import grpc

from services.dashboard.web import Response

log = logging.getLogger(__name__)

#: Converts one stream message to ``(event name, event id, JSON data)``.
Converter = Callable[[Any], tuple[str, str, Any]]

HEARTBEAT_SECONDS = 10.0


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
        """Cancel every open call (shutdown)."""
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


def sse_response(
    hub: StreamHub,
    start: Callable[[], Any],
    convert: Converter,
    *,
    heartbeat: float = HEARTBEAT_SECONDS,
) -> Response:
    """A streaming response relaying a gRPC server stream as SSE.

    The stream ends with an ``end`` event when the upstream ends, or an
    ``error`` event (``{"code", "message"}``) when it fails.
    """

    def run(write: Callable[[bytes], None]) -> None:
        call = start()
        hub.add(call)
        items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1000)

        def reader() -> None:
            try:
                for message in call:
                    items.put(("message", message))
                items.put(("end", None))
            except grpc.RpcError as exc:
                items.put(("error", exc))
            except Exception as exc:  # never leave the writer waiting forever
                items.put(("error", exc))

        threading.Thread(target=reader, name="sse-reader", daemon=True).start()
        try:
            write(b"retry: 2000\n\n")
            while True:
                try:
                    kind, item = items.get(timeout=heartbeat)
                except queue.Empty:
                    write(b": ping\n\n")
                    continue
                if kind == "message":
                    write(format_event(*convert(item)))
                elif kind == "end":
                    write(format_event("end", "", {}))
                    return
                else:
                    code = item.code().name if isinstance(item, grpc.Call) else "INTERNAL"
                    if code == "CANCELLED":
                        return
                    message = item.details() if isinstance(item, grpc.Call) else "stream failed"
                    write(format_event("error", "", {"code": code, "message": message}))
                    return
        finally:
            call.cancel()
            hub.discard(call)

    return Response(
        200,
        headers=[
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-store"),
            ("X-Accel-Buffering", "no"),
        ],
        stream=run,
    )
