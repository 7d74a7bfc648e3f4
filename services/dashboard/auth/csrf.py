"""CSRF protection for state-changing requests.

Pages hold a token (the per-start token in LOOPBACK mode, a token derived
from the session otherwise) and send it in ``X-Longshore-Token`` (or a form's
``csrf_token`` field). A cross-site page can neither read the token nor set a
custom header without a CORS preflight, which the dashboard never answers.
Without a token (INSECURE mode) the ``Origin`` header, when sent, must name
this site. The login form uses a double-submit cookie instead (see
:func:`form_token_matches`).
"""

from __future__ import annotations

import hmac
from http import HTTPStatus
from urllib.parse import urlsplit

from services.dashboard.web import STATE_CHANGING_METHODS, Request, Response

TOKEN_HEADER = "x-longshore-token"  # noqa: S105 - a header name
FORM_FIELD = "csrf_token"
LOGIN_COOKIE = "longshore_login"


def _same(a: str, b: str) -> bool:
    return bool(a) and hmac.compare_digest(a.encode(), b.encode())


def presented_token(request: Request) -> str:
    """The token a request carries, from the header or a urlencoded form."""
    header = request.header(TOKEN_HEADER)
    if header:
        return header
    content_type = request.header("content-type") or ""
    if content_type.startswith("application/x-www-form-urlencoded"):
        return request.form().get(FORM_FIELD, "")
    return ""


def origin_matches(request: Request) -> bool:
    """True when ``Origin`` is absent or names the host the request was sent to."""
    origin = request.header("origin")
    if origin is None:
        return True
    netloc = urlsplit(origin).netloc.lower()
    hosts = {(request.header("host") or "").lower(), (request.header("x-forwarded-host") or "")}
    return bool(netloc) and netloc in {host.lower() for host in hosts if host}


def check(request: Request, *, expected_token: str) -> Response | None:
    """Return a 403 response when a state-changing request fails CSRF checks."""
    if request.method not in STATE_CHANGING_METHODS:
        return None
    if expected_token:
        if _same(presented_token(request), expected_token):
            return None
        return Response.error(HTTPStatus.FORBIDDEN, "csrf", "missing or wrong X-Longshore-Token")
    if origin_matches(request):
        return None
    return Response.error(HTTPStatus.FORBIDDEN, "csrf", "cross-site request refused")


def form_token_matches(request: Request) -> bool:
    """Double-submit check for the login form: cookie and field must agree."""
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    return _same(cookie, request.form().get(FORM_FIELD, ""))
