"""Request and response types shared by the router, the gate and the views.

The HTTP layer is Starlette on uvicorn (:mod:`.asgi`); these small, plain
types keep the views and the auth gate independent of it, so the gate's whole
matrix is tested without sockets or an event loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from services.dashboard.streams import EventStream

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class Request:
    """One HTTP request as the router and the gate see it.

    Attributes:
        method: Upper-case HTTP method.
        path: URL path without the query string.
        query: Query parameters (first value of each name).
        headers: Header values keyed by lower-case name.
        body: Raw request body.
        peer: IP address of the connecting socket (a proxy's, behind one).
        params: Path parameters filled by the router.
        identity: Who the gate let in; set before a view runs.
    """

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    peer: str = "127.0.0.1"
    params: dict[str, str] = field(default_factory=dict)
    identity: Any = None

    @classmethod
    def build(
        cls,
        method: str,
        target: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        peer: str = "127.0.0.1",
    ) -> Request:
        """Build a request from a method, a request target and raw headers."""
        parts = urlsplit(target)
        items = headers.items() if isinstance(headers, Mapping) else headers
        return cls(
            method=method.upper(),
            path=parts.path or "/",
            query=dict(reversed(parse_qsl(parts.query, keep_blank_values=True))),
            headers={name.lower(): value for name, value in items},
            body=body,
            peer=peer,
        )

    def header(self, name: str) -> str | None:
        """Return one header's value, or None."""
        return self.headers.get(name.lower())

    @property
    def target(self) -> str:
        """Path plus query string, for ``next=`` links."""
        if not self.query:
            return self.path

        return f"{self.path}?{urlencode(self.query)}"

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies sent with the request (a malformed header counts as none)."""
        raw = self.header("cookie")
        if not raw:
            return {}
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}

    def json(self) -> dict[str, Any]:
        """Parse the body as a JSON object.

        Raises:
            ValueError: The body is not a JSON object.
        """
        if not self.body:
            return {}
        data = json.loads(self.body)
        if not isinstance(data, dict):
            raise ValueError("request body must be a JSON object")
        return data

    def form(self) -> dict[str, str]:
        """Parse an ``application/x-www-form-urlencoded`` body."""
        text = self.body.decode("utf-8", "replace")
        return dict(reversed(parse_qsl(text, keep_blank_values=True)))


@dataclass
class Response:
    """An HTTP response: a status, headers and a body or an event stream."""

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: EventStream | None = None

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        """A JSON response (never cached)."""
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(
            status,
            body,
            [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
        )

    @classmethod
    def error(cls, status: int, error: str, message: str = "", **extra: Any) -> Response:
        """A JSON error: ``{"error": code, "message": ..., **extra}``."""
        data: dict[str, Any] = {"error": error}
        if message:
            data["message"] = message
        data.update(extra)
        return cls.json(data, status)

    @classmethod
    def event_stream(cls, stream: EventStream) -> Response:
        """A ``text/event-stream`` response relaying ``stream`` (never buffered)."""
        return cls(
            200,
            headers=[
                ("Content-Type", "text/event-stream"),
                ("Cache-Control", "no-store"),
                ("X-Accel-Buffering", "no"),
            ],
            stream=stream,
        )

    @classmethod
    def html(cls, text: str, status: int = 200) -> Response:
        """An HTML page (never cached: it may embed a per-session token)."""
        return cls(
            status,
            text.encode(),
            [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")],
        )

    @classmethod
    def redirect(cls, location: str, status: int = HTTPStatus.SEE_OTHER) -> Response:
        """A redirect to a path on this site (relative, so proxies keep working)."""
        return cls(status, b"", [("Location", location), ("Cache-Control", "no-store")])

    def add_header(self, name: str, value: str) -> Response:
        """Append a header and return self."""
        self.headers.append((name, value))
        return self


def login_url(next_target: str) -> str:
    """The login page URL that returns to ``next_target`` afterwards."""
    return "/login?next=" + quote(safe_next(next_target), safe="/")


def safe_next(target: str | None) -> str:
    """Keep ``next`` on this site: a path starting with one slash, else ``/``."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(char) < 0x20 for char in target):
        return "/"
    return target
