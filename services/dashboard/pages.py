"""Server-rendered page shells; the pages fill themselves from ``/api/*``.

Pages carry no inline script (the Content-Security-Policy forbids it): the
per-page configuration travels in ``<meta>`` tags and ``data-`` attributes.
"""

from __future__ import annotations

from functools import cache
from html import escape
from pathlib import Path
from string import Template

from services.dashboard.auth.gate import Identity
from services.dashboard.auth.modes import Mode
from services.dashboard.web import Response

TEMPLATES = Path(__file__).parent / "templates"


@cache
def template(name: str) -> Template:
    """Load a template from ``templates/`` once."""
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


class Pages:
    """Renders the layout around a page body.

    Args:
        mode: The gate's mode, shown to scripts (the 401 policy depends on it).
    """

    def __init__(self, mode: Mode) -> None:
        self.mode = mode

    def render(
        self,
        *,
        identity: Identity | None,
        page: str,
        title: str,
        body: str,
        scripts: tuple[str, ...] = (),
    ) -> Response:
        """A full page; ``body`` is trusted HTML built with :func:`escape`."""
        token = identity.token if identity else ""
        user = identity.subject if identity else ""
        logout = ""
        if identity is not None and identity.method in ("api_key", "oidc"):
            logout = (
                '<form method="post" action="/logout" class="logout">'
                f'<input type="hidden" name="csrf_token" value="{escape(token)}">'
                '<button type="submit">Sign out</button></form>'
            )
        tags = "\n".join(f'<script src="/assets/{escape(s)}" defer></script>' for s in scripts)
        html = template("layout.html").substitute(
            token=escape(token),
            mode=escape(self.mode.value),
            title=escape(title),
            page=escape(page),
            user=escape(user),
            logout=logout,
            scripts=tags,
            body=body,
        )
        return Response.html(html)
