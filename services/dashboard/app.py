"""The dashboard's HTTP application: a small router behind the auth gate.

``Dashboard.handle`` is the whole request path: gate, route, view, error
mapping, security headers. ``serve`` runs it on the standard library's
``ThreadingHTTPServer`` (one thread per connection; event streams hold theirs).
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc

from services.dashboard.auth import public_paths
from services.dashboard.auth.gate import Gate
from services.dashboard.streams import StreamHub
from services.dashboard.web import Request, Response

log = logging.getLogger(__name__)

View = Callable[[Request], Response]

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20

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

#: gRPC codes from the gateway mapped to HTTP. The gateway refusing the
#: dashboard's *own* key is a server problem (502), never a 401: a 401 sends
#: the browser to the login page, which cannot fix it.
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (HTTPStatus.BAD_REQUEST, "invalid_argument"),
    grpc.StatusCode.OUT_OF_RANGE: (HTTPStatus.BAD_REQUEST, "out_of_range"),
    grpc.StatusCode.NOT_FOUND: (HTTPStatus.NOT_FOUND, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (HTTPStatus.CONFLICT, "already_exists"),
    grpc.StatusCode.FAILED_PRECONDITION: (HTTPStatus.CONFLICT, "failed_precondition"),
    grpc.StatusCode.ABORTED: (HTTPStatus.CONFLICT, "aborted"),
    grpc.StatusCode.UNAUTHENTICATED: (HTTPStatus.BAD_GATEWAY, "gateway_rejected_dashboard_key"),
    grpc.StatusCode.PERMISSION_DENIED: (HTTPStatus.BAD_GATEWAY, "gateway_permission_denied"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (HTTPStatus.TOO_MANY_REQUESTS, "resource_exhausted"),
    grpc.StatusCode.UNAVAILABLE: (HTTPStatus.SERVICE_UNAVAILABLE, "gateway_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (HTTPStatus.GATEWAY_TIMEOUT, "deadline_exceeded"),
}


def grpc_error_response(exc: grpc.RpcError) -> Response:
    """Map a gateway error to a JSON error response."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
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
    """

    def __init__(self, gate: Gate, router: Router, hub: StreamHub) -> None:
        self.gate = gate
        self.router = router
        self.hub = hub

    def handle(self, request: Request) -> Response:
        """Answer one request (never raises)."""
        verdict = self.gate.check(request)
        if verdict.denial is not None:
            return self._finish(verdict.denial)
        request.identity = verdict.identity
        try:
            response = self._dispatch(request)
        except grpc.RpcError as exc:
            response = grpc_error_response(exc)
            if not public_paths.is_api(request.path):
                response = Response.html(
                    f"<h1>Gateway error</h1><p>{response.body.decode()}</p>", response.status
                )
        except ValueError as exc:
            response = Response.error(HTTPStatus.BAD_REQUEST, "bad_request", str(exc))
        except Exception:
            log.exception("view failed", extra={"path": request.path})
            response = Response.error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal")
        for cookie in verdict.cookies:
            response.add_header("Set-Cookie", cookie)
        return self._finish(response)

    def _dispatch(self, request: Request) -> Response:
        if request.path.startswith("/assets/"):
            return static_file(request.path.removeprefix("/assets/"))
        view, path_known = self.router.resolve(request)
        if view is not None:
            return view(request)
        if path_known:
            return Response.error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed")
        if public_paths.is_api(request.path):
            return Response.error(HTTPStatus.NOT_FOUND, "not_found", request.path)
        return Response.html("<h1>Not found</h1>", HTTPStatus.NOT_FOUND)

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


class _Handler(BaseHTTPRequestHandler):
    """Adapts ``BaseHTTPRequestHandler`` to :class:`Dashboard`."""

    protocol_version = "HTTP/1.1"
    server: DashboardServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send(Response.error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large"))
            return
        body = self.rfile.read(length) if length else b""
        request = Request.build(
            self.command, self.path, self.headers.items(), body, peer=self.client_address[0]
        )
        self._send(self.server.app.handle(request))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.stream is not None:
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            # OSError: the browser went away; the stream cancelled its call.
            with contextlib.suppress(OSError):
                response.stream(self._write)
            return
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        """Access log through ``logging`` (no query strings: they may carry codes)."""
        log.debug("http %s", self.command, extra={"path": self.path.split("?", 1)[0]})


class DashboardServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one :class:`Dashboard`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: Dashboard | None = None) -> None:
        # Bound before the app exists so the gate learns the real port (port 0 in tests).
        self._app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def app(self) -> Dashboard:
        """The application serving requests."""
        if self._app is None:
            raise RuntimeError("DashboardServer has no app yet")
        return self._app

    @app.setter
    def app(self, value: Dashboard) -> None:
        self._app = value

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.server_address[1])

    def start(self) -> threading.Thread:
        """Serve on a background thread and return it."""
        thread = threading.Thread(target=self.serve_forever, name="dashboard-http", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop accepting, cancel open event streams, close the socket."""
        self.shutdown()
        self.app.hub.cancel_all()
        self.server_close()
