"""The dashboard as a Starlette application (served by uvicorn, see :mod:`.listener`).

One catch-all endpoint adapts Starlette's request to :class:`~.web.Request`,
runs :meth:`Dashboard.handle` on a worker thread (views make blocking gRPC
calls) and sends the answer back: a plain body, or an event stream relayed
live by :func:`~.streams.relay`. Limits are enforced here, before the gate
or any view sees a byte of the body: at most :data:`MAX_BODY_BYTES` (declared
or chunked), read within :data:`BODY_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.dashboard.app import SECURITY_HEADERS, Dashboard
from services.dashboard.streams import EventStream, relay
from services.dashboard.web import Request, Response

log = logging.getLogger(__name__)

#: Largest request body accepted (the JSON API's bodies are small).
MAX_BODY_BYTES = 1 << 20

#: A body must arrive within this many seconds (slow-body clients are cut).
BODY_TIMEOUT_SECONDS = 30.0

#: Request line and headers together, at most. h11 enforces this only on a
#: request still incomplete in its buffer; a whole one read at once is
#: checked here, so the limit holds either way.
MAX_HEADER_BYTES = 16 * 1024

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class BodyRefused(Exception):
    """The request body broke a limit; ``response`` says which."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


async def read_body(request: StarletteRequest) -> bytes:
    """The body, within the size and time limits.

    Raises:
        BodyRefused: Too large (413, declared or streamed) or too slow (408).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyRefused(_limit_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large"))
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(BODY_TIMEOUT_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise BodyRefused(
                        _limit_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large")
                    )
                chunks.append(chunk)
    except TimeoutError as exc:
        raise BodyRefused(_limit_error(HTTPStatus.REQUEST_TIMEOUT, "body_timeout")) from exc
    return b"".join(chunks)


BODY_LIMITS = f"request body: at most {MAX_BODY_BYTES} bytes within {BODY_TIMEOUT_SECONDS:.0f} s"


def _limit_error(status: HTTPStatus, error: str, message: str = BODY_LIMITS) -> Response:
    response = Response.error(status, error, message)
    response.headers.extend(SECURITY_HEADERS)
    # The rest of an over-long body is never read: close the connection.
    return response.add_header("Connection", "close")


class EventStreamResponse(StreamingResponse):
    """A streaming response that always closes its relay, even when cancelled.

    Starlette cancels the response when the browser disconnects; closing the
    async generator then runs its ``finally``, which cancels the gRPC call.
    """

    def __init__(self, stream: EventStream, dashboard: Dashboard, **kwargs: Any) -> None:
        self._frames = relay(stream, dashboard.hub)
        super().__init__(self._frames, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._frames.aclose()


def to_starlette(response: Response, dashboard: Dashboard, *, head: bool) -> StarletteResponse:
    """Convert a dashboard response (body or event stream) for Starlette to send."""
    if response.stream is not None and not head:
        result: StarletteResponse = EventStreamResponse(
            response.stream, dashboard, status_code=response.status
        )
    else:
        result = StarletteResponse(b"" if head else response.body, status_code=response.status)
        if head:
            result.headers["content-length"] = str(len(response.body))
    for name, value in response.headers:
        if name.lower() == "content-type":
            result.headers["content-type"] = value
        else:
            result.headers.append(name, value)
    return result


def build_asgi(dashboard: Dashboard) -> Starlette:
    """The Starlette application serving ``dashboard``."""

    async def endpoint(request: StarletteRequest) -> StarletteResponse:
        head = request.method == "HEAD"
        header_bytes = sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
        if header_bytes + len(request.scope.get("raw_path", b"")) > MAX_HEADER_BYTES:
            refused = _limit_error(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                f"request line and headers: at most {MAX_HEADER_BYTES} bytes",
            )
            return to_starlette(refused, dashboard, head=head)
        try:
            body = await read_body(request)
        except BodyRefused as refused:
            return to_starlette(refused.response, dashboard, head=head)
        except ClientDisconnect:
            return StarletteResponse(b"", status_code=HTTPStatus.BAD_REQUEST)
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        target = raw_path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        client = request.client
        ours = Request.build(
            request.method,
            target,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            body,
            peer=client.host if client else "",
        )
        # The views block on gRPC: run them on Starlette's worker threads so
        # the event loop keeps serving streams and other requests meanwhile.
        answer = await run_in_threadpool(dashboard.handle, ours)
        return to_starlette(answer, dashboard, head=head)

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=METHODS)])
