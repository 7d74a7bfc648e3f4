"""Builds the dashboard from its settings: gate, gateway client, views, server."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.dashboard.app import Dashboard, DashboardServer, Router
from services.dashboard.auth.gate import Gate, GateConfig
from services.dashboard.auth.modes import Mode, check_login_methods, resolve_mode, split_listen
from services.dashboard.auth.oidc import OidcClient, OidcConfig
from services.dashboard.auth.proxy import ProxyAuth
from services.dashboard.auth.sessions import SessionCodec
from services.dashboard.gateway import GatewayClient
from services.dashboard.pages import Pages
from services.dashboard.settings import DashboardSettings
from services.dashboard.streams import StreamHub
from services.dashboard.views import ViewContext, register_all
from services.runtime.version import __version__

log = logging.getLogger(__name__)

INSECURE_BANNER = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!  LONGSHORE_DASHBOARD_INSECURE is set: the dashboard's auth gate is  !!
!!  OFF. Anyone who can reach {listen:<22} can drive Longshore. !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


@dataclass
class Built:
    """A dashboard ready to serve."""

    app: Dashboard
    server: DashboardServer
    gateway: GatewayClient

    @property
    def url(self) -> str:
        """The URL to open."""
        host = str(self.server.server_address[0])
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{self.server.port}/"


def build_dashboard(
    settings: DashboardSettings,
    *,
    gateway: GatewayClient | None = None,
    clock: Callable[[], float] = time.time,
) -> Built:
    """Check the auth settings and bind the server (not yet serving).

    Raises:
        GateConfigError: The settings cannot be served safely (says why).
        OSError: The address cannot be bound.
    """
    section = settings.dashboard
    host, port = split_listen(section.listen)
    mode = resolve_mode(
        listen_host=host, insecure=section.insecure, require_login=section.require_login
    )
    methods = check_login_methods(
        mode=mode,
        listen=section.listen,
        session_secret=section.session_secret,
        api_key_login=section.api_key_login,
        oidc_issuer=section.oidc_issuer,
        oidc_client_id=section.oidc_client_id,
        proxy_header=section.trusted_proxy_header,
        trusted_proxies=section.trusted_proxies,
    )
    if mode is Mode.INSECURE:
        log.warning("dashboard auth gate disabled by LONGSHORE_DASHBOARD_INSECURE")
        sys.stderr.write(INSECURE_BANNER.format(listen=section.listen))
    elif mode is Mode.LOOPBACK and methods.names():
        log.warning(
            "login methods are configured but the dashboard binds loopback without "
            "require_login: no login is asked (set LONGSHORE_DASHBOARD_REQUIRE_LOGIN=1)"
        )
    sessions = None
    if section.session_secret:
        sessions = SessionCodec(
            section.session_secret,
            ttl_seconds=section.session_ttl_seconds,
            max_lifetime_seconds=section.session_max_lifetime_seconds,
            clock=clock,
        )
    proxy = None
    if section.trusted_proxy_header:
        proxy = ProxyAuth(section.trusted_proxy_header, section.trusted_proxies)
    server = DashboardServer((host, port))
    gate = Gate(
        GateConfig(mode=mode, port=server.port, bind_host=host, methods=methods),
        sessions=sessions,
        proxy=proxy,
    )
    oidc = None
    if methods.oidc and sessions is not None:
        oidc = OidcClient(
            OidcConfig(
                issuer=section.oidc_issuer,
                client_id=section.oidc_client_id,
                client_secret=section.oidc_client_secret,
                redirect_url=section.oidc_redirect_url,
                scopes=section.oidc_scopes,
            ),
            signer=sessions,
            clock=clock,
        )
    client = gateway or GatewayClient(
        settings.gateway.addr, api_key=section.api_key, timeout=section.call_timeout_seconds
    )
    if not section.api_key:
        log.warning("LONGSHORE_DASHBOARD_API_KEY is empty: the gateway may refuse every call")
    hub = StreamHub()
    ctx = ViewContext(
        gateway=client, gate=gate, pages=Pages(mode), hub=hub, version=__version__, oidc=oidc
    )
    router = Router()
    register_all(router, ctx)
    app = Dashboard(gate, router, hub)
    server.app = app
    log.info(
        "dashboard ready",
        extra={"listen": section.listen, "mode": mode.value, "login_methods": methods.names()},
    )
    return Built(app=app, server=server, gateway=client)
