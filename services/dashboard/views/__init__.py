"""Views: one module per page and its API group.

Every module exposes ``register(router, ctx)``; :func:`register_all` wires
them in a fixed order. A view reaches the gateway only through
:meth:`ViewContext.gateway_for`, which carries the key of the person the
request runs as (never the dashboard's own key for a logged-in session).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.dashboard.app import Router
from services.dashboard.auth.gate import Gate, Identity
from services.dashboard.auth.oidc import OidcClient
from services.dashboard.auth.throttle import LoginThrottle
from services.dashboard.gateway import GatewayClient, ScopeCache
from services.dashboard.pages import Pages
from services.dashboard.streams import StreamHub
from services.dashboard.web import Request


@dataclass
class ViewContext:
    """What views share: the gateway client, the gate, page rendering, streams.

    Attributes:
        gateway: The dashboard's gateway client (its own key).
        gate: The auth gate (mode, sessions, cookies).
        pages: Layout renderer.
        hub: Open event streams.
        version: The dashboard's own version.
        scope_cache: Scopes of the configured keys.
        throttle: Wrong-key login throttle, per client address.
        end_session: Ends the session of an identity whose key was refused.
        oidc: The OIDC client when single sign-on is configured.
        clock: Epoch-seconds clock (tests inject one).
        state: Small in-memory facts (the last dispatcher tick run from here).
    """

    gateway: GatewayClient
    gate: Gate
    pages: Pages
    hub: StreamHub
    version: str
    scope_cache: ScopeCache
    throttle: LoginThrottle
    end_session: Callable[[Identity | None], None]
    oidc: OidcClient | None = None
    clock: Callable[[], float] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gateway_for(self, request: Request) -> GatewayClient:
        """The gateway client acting as the request's identity (its key, its scopes)."""
        identity: Identity | None = request.identity
        if identity is None or not identity.api_key:
            return self.gateway
        return self.gateway.with_key(identity.api_key)

    def scopes_of(self, identity: Identity | None) -> frozenset[str]:
        """The scopes the identity's key holds (a session's from login, else asked)."""
        return self.scope_cache.scopes_of(identity)


def register_all(router: Router, ctx: ViewContext) -> None:
    """Register every view module's routes."""
    from services.dashboard.views import board, dispatcher, login, sandboxes, status, tasks

    for module in (status, login, board, tasks, sandboxes, dispatcher):
        module.register(router, ctx)
