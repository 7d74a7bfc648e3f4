"""The dashboard's request path, independent of the HTTP server.

``Dashboard.handle`` is the whole path of one request: gate, route, view,
error mapping, security headers. :mod:`.asgi` runs it under Starlette (on a
worker thread: views make blocking gRPC calls).
"""

from __future__ import annotations

import logging
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import grpc

from services.dashboard.auth import public_paths
from services.dashboard.auth.gate import Gate, Identity
from services.dashboard.pages import Pages
from services.dashboard.streams import StreamHub
from services.dashboard.web import Request, Response

log = logging.getLogger(__name__)

View = Callable[[Request], Response]

STATIC_DIR = Path(__file__).parent / "static"

SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)

#: gRPC codes from the gateway mapped to HTTP. PERMISSION_DENIED is the
#: gateway refusing the caller's scopes: a 403 carrying its own message.
#: UNAUTHENTICATED is decided by :func:`grpc_error_response` (who held the key).
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (HTTPStatus.BAD_REQUEST, "invalid_argument"),
    grpc.StatusCode.OUT_OF_RANGE: (HTTPStatus.BAD_REQUEST, "out_of_range"),
    grpc.StatusCode.NOT_FOUND: (HTTPStatus.NOT_FOUND, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (HTTPStatus.CONFLICT, "already_exists"),
    grpc.StatusCode.FAILED_PRECONDITION: (HTTPStatus.CONFLICT, "failed_precondition"),
    grpc.StatusCode.ABORTED: (HTTPStatus.CONFLICT, "aborted"),
    grpc.StatusCode.PERMISSION_DENIED: (HTTPStatus.FORBIDDEN, "permission_denied"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (HTTPStatus.TOO_MANY_REQUESTS, "resource_exhausted"),
    grpc.StatusCode.UNAVAILABLE: (HTTPStatus.SERVICE_UNAVAILABLE, "gateway_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (HTTPStatus.GATEWAY_TIMEOUT, "deadline_exceeded"),
}


def grpc_error_response(exc: grpc.RpcError, identity: Identity | None = None) -> Response:
    """Map a gateway error to a JSON error response.

    The gateway refusing a *configured* key (the dashboard's own, or the
    single sign-on key) is a server problem (502), never a 401: a 401 sends
    the browser to the login page, which cannot fix it.
    """
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        sso = identity is not None and identity.method in ("oidc", "proxy")
        error = "gateway_rejected_sso_key" if sso else "gateway_rejected_dashboard_key"
        status = HTTPStatus.BAD_GATEWAY
    else:
        status, error = GRPC_TO_HTTP.get(code, (HTTPStatus.BAD_GATEWAY, "gateway_error"))
    return Response.error(status, error, details or code.name, grpc_code=code.name)


@dataclass
class Route:
    """One route: a method, a compiled path pattern and its view."""

    method: str
    pattern: re.Pattern[str]
    view: View


@dataclass
class Router:
    """Maps ``(method, path)`` to a view; ``{name}`` segments become params."""

    routes: list[Route] = field(default_factory=list)

    def add(self, method: str, path: str, view: View) -> None:
        """Register a view for ``path`` (e.g. ``/api/tasks/{task_id}/move``)."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
        self.routes.append(Route(method.upper(), re.compile(f"^{regex}$"), view))

    def resolve(self, request: Request) -> tuple[View | None, bool]:
        """Find the view; the flag says whether the path exists for another method."""
        path_known = False
        method = "GET" if request.method == "HEAD" else request.method
        for route in self.routes:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            path_known = True
            if route.method == method:
                request.params = match.groupdict()
                return route.view, True
        return None, path_known


class Dashboard:
    """Gate, router and error handling for every request.

    Args:
        gate: The auth gate.
        router: Views registered by :mod:`services.dashboard.views`.
        hub: Open event streams, cancelled at shutdown.
        pages: Renders the HTML error page.
    """

    def __init__(self, gate: Gate, router: Router, hub: StreamHub, pages: Pages) -> None:
        self.gate = gate
        self.router = router
        self.hub = hub
        self.pages = pages

    def handle(self, request: Request) -> Response:
        """Answer one request (never raises)."""
        verdict = self.gate.check(request)
        if verdict.denial is not None:
            return self._finish(verdict.denial)
        request.identity = verdict.identity
        try:
            response = self._dispatch(request)
        except grpc.RpcError as exc:
            response = self._gateway_error(request, exc)
        except ValueError as exc:
            response = Response.error(HTTPStatus.BAD_REQUEST, "bad_request", str(exc)[:200])
        except Exception:
            log.exception("view failed", extra={"path": request.path})
            response = Response.error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal")
        for cookie in verdict.cookies:
            response.add_header("Set-Cookie", cookie)
        return self._finish(response)

    def end_session(self, identity: Identity | None) -> None:
        """Delete the session whose own key the gateway refused (a rotated key)."""
        if identity is None or not identity.ends_with_its_key or self.gate.store is None:
            return
        ended = self.gate.store.delete_key(identity.api_key)
        log.info("dashboard sessions ended: the gateway refused their key", extra={"n": ended})

    def _gateway_error(self, request: Request, exc: grpc.RpcError) -> Response:
        identity: Identity | None = request.identity
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code is grpc.StatusCode.UNAUTHENTICATED and identity and identity.ends_with_its_key:
            # The session's own key is no longer known (rotated or revoked):
            # end the session so the browser lands on the login page once.
            self.end_session(identity)
            return self.gate.session_ended(request)
        response = grpc_error_response(exc, identity)
        if public_paths.is_api(request.path):
            return response
        return self.pages.error(
            identity=identity,
            status=response.status,
            title="Gateway error",
            message=f"{code.name if code else 'UNKNOWN'}: "
            + (exc.details() if isinstance(exc, grpc.Call) else str(exc)),
        )

    def _dispatch(self, request: Request) -> Response:
        if request.path.startswith("/assets/"):
            return static_file(request.path.removeprefix("/assets/"))
        view, path_known = self.router.resolve(request)
        if view is not None:
            return view(request)
        if path_known:
            return Response.error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed")
        if public_paths.is_api(request.path):
            return Response.error(HTTPStatus.NOT_FOUND, "not_found", request.path[:100])
        return self.pages.error(
            identity=request.identity,
            status=HTTPStatus.NOT_FOUND,
            title="Not found",
            message=request.path[:100],
        )

    @staticmethod
    def _finish(response: Response) -> Response:
        response.headers.extend(SECURITY_HEADERS)
        return response


def static_file(name: str) -> Response:
    """Serve one file from ``static/`` (no sub-directories, no traversal)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+\.[a-z]+", name):
        return Response.error(HTTPStatus.NOT_FOUND, "not_found")
    path = STATIC_DIR / name
    if not path.is_file():
        return Response.error(HTTPStatus.NOT_FOUND, "not_found")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    return Response(
        HTTPStatus.OK,
        path.read_bytes(),
        [("Content-Type", content_type), ("Cache-Control", "no-cache")],
    )
