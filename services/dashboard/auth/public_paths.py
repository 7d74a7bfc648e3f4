"""The one list of paths every gate lets through without credentials.

Every gate (loopback token, session cookie, OIDC, trusted proxy header, CSRF)
asks :func:`is_public` and nothing else, so the list cannot drift between two
copies. Exact paths are matched exactly (``/api/status/`` and
``/api/statusx`` are *not* public) and prefixes end with a slash (so
``/assetsleak`` is not public).
"""

from __future__ import annotations

from typing import Final

#: ``/api/status`` tells a load balancer or a logged-out page whether the
#: gateway is reachable and whether login is required; nothing secret.
PUBLIC_API_PATHS: Final[frozenset[str]] = frozenset({"/api/status"})

#: The login flow itself must be reachable without a session.
LOGIN_PATHS: Final[frozenset[str]] = frozenset(
    {"/login", "/logout", "/auth/oidc/login", "/auth/oidc/callback"}
)

#: Static assets (CSS, JS, icons): never secret, served to the login page.
PUBLIC_PREFIXES: Final[tuple[str, ...]] = ("/assets/",)

#: Path of the login page; ``next`` carries where to go afterwards.
LOGIN_PATH: Final[str] = "/login"


def is_public(path: str) -> bool:
    """Say whether a request path needs no credentials.

    Args:
        path: The URL path only (no query string), as received.

    Returns:
        True for the exact public paths and for paths under a public prefix.
    """
    if path in PUBLIC_API_PATHS or path in LOGIN_PATHS:
        return True
    return any(path.startswith(prefix) and ".." not in path for prefix in PUBLIC_PREFIXES)


def is_api(path: str) -> bool:
    """Say whether a path is part of the JSON API (answers 401, never redirects)."""
    return path == "/api" or path.startswith("/api/")


# Every prefix must end with "/" or a sibling such as "/assetsleak" would match.
assert all(prefix.endswith("/") for prefix in PUBLIC_PREFIXES)
