"""E2B's REST control plane (``E2B_API_URL``), as the pinned SDK calls it.

Paths, bodies and status codes follow the SDK's generated API client:
``POST /sandboxes`` and ``/v2/sandboxes`` (201), ``GET /sandboxes`` and
``/v2/sandboxes`` (metadata and state filters), ``GET``/``DELETE
/sandboxes/{id}`` (200/204), ``POST /sandboxes/{id}/timeout`` (204),
``/pause`` (204), ``/resume`` and ``/connect`` (201; ``/v2/.../connect``).
The caller's ``X-API-Key`` is the Longshore key every gateway call carries.
Calls E2B has and Longshore does not answer 501 with a message naming them.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.e2b.errors import Problem, problem_of
from services.e2b.sandboxes import Sandboxes
from services.runtime.errors import InvalidArgument, Unauthenticated

#: Largest JSON body a control-plane call may send.
MAX_BODY_BYTES = 256 * 1024
MAX_KEY_CHARS = 256
#: Every method, for the routes that refuse whatever is asked.
ANY = ["GET", "POST", "PUT", "PATCH", "DELETE"]
Handler = Callable[[Request], Awaitable[Response]]
log = logging.getLogger(__name__)


def error_response(problem: Problem) -> JSONResponse:
    """E2B's error body; ``Should-Retry`` keeps the SDK from retrying a refusal."""
    retry = "true" if problem.code == grpc.StatusCode.UNAVAILABLE else "false"
    return JSONResponse(
        {"code": problem.http_status, "message": problem.message},
        status_code=problem.http_status,
        headers={"Should-Retry": retry},
    )


def guarded(handler: Handler) -> Handler:
    """``handler`` with every failure answered in E2B's error body.

    A gateway or front-door error keeps its code; anything else is a bug of
    the front door: logged with its traceback, answered 500 with a JSON body
    the SDK can read (never a bare text page), and marked not to retry.
    """

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            problem = problem_of(exc)
            if problem is None:
                log.exception("e2b request failed", extra={"path": request.url.path})
                problem = Problem(grpc.StatusCode.INTERNAL, "internal error of the front door")
            return error_response(problem)

    return run


def api_key(request: Request) -> str:
    """The caller's key (``X-API-Key``, or ``Authorization: Bearer``).

    Raises:
        Unauthenticated: Missing or oversized.
    """
    key = request.headers.get("x-api-key", "")
    if not key:
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else ""
    if not key or len(key) > MAX_KEY_CHARS:
        raise Unauthenticated("X-API-Key: a Longshore API key is required")
    return key


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (empty body: ``{}``).

    Raises:
        InvalidArgument: Oversized, not JSON, or not an object.
    """
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise InvalidArgument(f"body: at most {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument("body: not JSON") from exc
    if not isinstance(body, dict):
        raise InvalidArgument("body: a JSON object")
    return body


def _string_map(body: dict[str, Any], name: str) -> dict[str, str]:
    value = body.get(name) or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidArgument(f"{name}: an object of strings")
    return value


def _metadata_query(request: Request) -> dict[str, str]:
    # The SDK sends `metadata=k%3Dv%26k2%3Dv2`: one url-encoded query string.
    raw = request.query_params.get("metadata", "")
    if len(raw) > 8192:
        raise InvalidArgument("metadata: at most 8192 characters")
    pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True)
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}


def _states(request: Request) -> set[str]:
    raw = request.query_params.get("state", "")
    states = {s for s in raw.split(",") if s}
    unknown = states - {"running", "paused"}
    if unknown:
        raise InvalidArgument(f"state: unknown {sorted(unknown)}; running or paused")
    return states


class ControlPlane:
    """The REST routes over :class:`~services.e2b.sandboxes.Sandboxes`."""

    def __init__(self, sandboxes: Sandboxes) -> None:
        self._sandboxes = sandboxes

    def routes(self) -> list[Route]:
        """Every control-plane route."""
        g = self._guarded
        return [
            Route("/sandboxes", g(self.create), methods=["POST"]),
            Route("/v2/sandboxes", g(self.create), methods=["POST"]),
            Route("/sandboxes", g(self.list), methods=["GET"]),
            Route("/v2/sandboxes", g(self.list), methods=["GET"]),
            Route("/sandboxes/{sandbox_id}", g(self.get), methods=["GET"]),
            Route("/sandboxes/{sandbox_id}", g(self.kill), methods=["DELETE"]),
            Route("/sandboxes/{sandbox_id}/timeout", g(self.timeout), methods=["POST"]),
            Route("/sandboxes/{sandbox_id}/pause", g(self.pause), methods=["POST"]),
            Route("/sandboxes/{sandbox_id}/resume", g(self.connect), methods=["POST"]),
            Route("/sandboxes/{sandbox_id}/connect", g(self.connect), methods=["POST"]),
            Route("/v2/sandboxes/{sandbox_id}/connect", g(self.connect), methods=["POST"]),
            Route("/sandboxes/{sandbox_id}/{rest:path}", self.unsupported, methods=ANY),
            Route("/v2/sandboxes/{sandbox_id}/{rest:path}", self.unsupported, methods=ANY),
            Route("/templates{rest:path}", self.unsupported, methods=ANY),
            Route("/snapshots{rest:path}", self.unsupported, methods=ANY),
            Route("/volumes{rest:path}", self.unsupported, methods=ANY),
            Route("/secrets{rest:path}", self.unsupported, methods=ANY),
        ]

    @staticmethod
    def _guarded(handler: Handler) -> Handler:
        return guarded(handler)

    async def unsupported(self, request: Request) -> Response:
        """E2B calls with no Longshore counterpart: 501 naming the call."""
        return error_response(
            Problem(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{request.method} {request.url.path}: not supported by Longshore's E2B "
                "front door (see docs/e2b.md)",
            )
        )

    async def create(self, request: Request) -> Response:
        """``POST /sandboxes``: a new sandbox of the template's profile."""
        key = api_key(request)
        body = await json_body(request)
        template = body.get("templateID", "")
        if not isinstance(template, str) or len(template) > 63:
            raise InvalidArgument("templateID: a profile name of at most 63 characters")
        timeout = self._sandboxes.timeout_of(body.get("timeout"))
        created = await self._sandboxes.create(
            key,
            template,
            timeout=timeout,
            metadata=_string_map(body, "metadata"),
            env=_string_map(body, "envVars"),
        )
        return JSONResponse(created, status_code=201)

    async def list(self, request: Request) -> Response:
        """``GET /v2/sandboxes``: running sandboxes, filtered by metadata and state."""
        key = api_key(request)
        listed = await self._sandboxes.list(key, _metadata_query(request), _states(request))
        return JSONResponse(listed)

    async def get(self, request: Request) -> Response:
        """``GET /sandboxes/{id}``."""
        key = api_key(request)
        return JSONResponse(await self._sandboxes.get(key, request.path_params["sandbox_id"]))

    async def kill(self, request: Request) -> Response:
        """``DELETE /sandboxes/{id}``: 204."""
        key = api_key(request)
        await self._sandboxes.kill(key, request.path_params["sandbox_id"])
        return Response(status_code=204)

    async def timeout(self, request: Request) -> Response:
        """``POST /sandboxes/{id}/timeout``: the lease from now; 204."""
        key = api_key(request)
        body = await json_body(request)
        seconds = self._sandboxes.timeout_of(body.get("timeout", 0) or -1)
        await self._sandboxes.set_timeout(key, request.path_params["sandbox_id"], seconds)
        return Response(status_code=204)

    async def pause(self, request: Request) -> Response:
        """``POST /sandboxes/{id}/pause``: 204."""
        key = api_key(request)
        await self._sandboxes.pause(key, request.path_params["sandbox_id"])
        return Response(status_code=204)

    async def connect(self, request: Request) -> Response:
        """``POST /sandboxes/{id}/connect`` (and ``/resume``): resumes if paused; 201."""
        key = api_key(request)
        body = await json_body(request)
        timeout = body.get("timeout")
        seconds = None if timeout is None else self._sandboxes.timeout_of(timeout)
        found = await self._sandboxes.connect(key, request.path_params["sandbox_id"], seconds)
        return JSONResponse(found, status_code=201)
