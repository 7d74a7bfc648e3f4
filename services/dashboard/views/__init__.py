"""Views: one module per page and its API group.

Every module exposes ``register(router, ctx)``; :func:`register_all` wires
them in a fixed order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.dashboard.app import Router
from services.dashboard.auth.gate import Gate
from services.dashboard.auth.oidc import OidcClient
from services.dashboard.gateway import GatewayClient
from services.dashboard.pages import Pages
from services.dashboard.streams import StreamHub


@dataclass
class ViewContext:
    """What views share: the gateway client, the gate, page rendering, streams.

    Attributes:
        gateway: The dashboard's gateway client.
        gate: The auth gate (mode, sessions, cookies).
        pages: Layout renderer.
        hub: Open event streams.
        version: The dashboard's own version.
        oidc: The OIDC client when single sign-on is configured.
        clock: Epoch-seconds clock (tests inject one).
        state: Small in-memory facts (the last dispatcher tick run from here).
    """

    gateway: GatewayClient
    gate: Gate
    pages: Pages
    hub: StreamHub
    version: str
    oidc: OidcClient | None = None
    clock: Callable[[], float] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def register_all(router: Router, ctx: ViewContext) -> None:
    """Register every view module's routes."""
    from services.dashboard.views import board, dispatcher, login, sandboxes, status, tasks

    for module in (status, login, board, tasks, sandboxes, dispatcher):
        module.register(router, ctx)
