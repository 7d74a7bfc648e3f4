"""Server-rendered page shells (Jinja2, autoescaped); pages fill themselves from ``/api/*``.

Pages carry no inline script (the Content-Security-Policy forbids it): the
per-page configuration travels in ``<meta>`` tags and ``data-`` attributes.
Every value reaches the HTML through Jinja2's autoescaping; no view builds
markup by hand.

Write controls are rendered only for a key that may write (``write`` or
``admin``), operator controls only for ``admin``: a read-only key gets a
read-only dashboard. That is presentation only: the gateway still decides
every call, and refuses a write from a read key with its own error.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import jinja2

from services.dashboard.auth.gate import Identity
from services.dashboard.auth.modes import Mode
from services.dashboard.gateway import can_admin, can_write
from services.dashboard.web import Response

TEMPLATES = Path(__file__).parent / "templates"

#: The one template environment: autoescaping on for every template.
ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=False,
)

#: Looks up the scopes an identity's key holds.
ScopeLookup = Callable[[Identity | None], frozenset[str]]


def render_template(name: str, **context: Any) -> str:
    """Render one template from ``templates/`` with autoescaping."""
    return ENVIRONMENT.get_template(name).render(**context)


class Pages:
    """Renders page templates inside the layout.

    Args:
        mode: The gate's mode, shown to scripts (the 401 policy depends on it).
        scopes: The scopes of the identity a page is rendered for.
    """

    def __init__(self, mode: Mode, scopes: ScopeLookup) -> None:
        self.mode = mode
        self.scopes = scopes

    def render(
        self,
        *,
        identity: Identity | None,
        page: str,
        title: str,
        template: str,
        scripts: tuple[str, ...] = (),
        status: int = HTTPStatus.OK,
        scopes: frozenset[str] | None = None,
        **context: Any,
    ) -> Response:
        """A full page from ``template`` (which extends ``layout.html``).

        ``scopes`` overrides the lookup (an error page asks the gateway nothing).
        """
        if scopes is None:
            scopes = self.scopes(identity)
        html = render_template(
            template,
            token=identity.token if identity else "",
            mode=self.mode.value,
            title=title,
            page=page,
            user=identity.subject if identity else "",
            show_logout=identity is not None and identity.method in ("api_key", "oidc"),
            can_write=can_write(scopes),
            can_admin=can_admin(scopes),
            scripts=scripts,
            **context,
        )
        return Response.html(html, status)

    def error(
        self, *, identity: Identity | None, status: int, title: str, message: str
    ) -> Response:
        """An error page inside the layout (the message is escaped)."""
        return self.render(
            identity=identity,
            page="error",
            title=title,
            template="error.html",
            status=status,
            scopes=frozenset(),
            message=message[:300],
        )
