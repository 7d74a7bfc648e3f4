"""Builds the dashboard from its settings: gate, sessions, gateway client, views, server."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.dashboard.app import Dashboard, Router
from services.dashboard.auth.gate import Gate, GateConfig
from services.dashboard.auth.modes import (
    GateConfigError,
    LoginMethods,
    Mode,
    check_login_methods,
    resolve_mode,
    split_listen,
)
from services.dashboard.auth.oidc import OidcClient, OidcConfig
from services.dashboard.auth.proxy import ProxyAuth
from services.dashboard.auth.sessions import SessionCodec
from services.dashboard.auth.store import SessionStore
from services.dashboard.auth.throttle import LoginThrottle
from services.dashboard.gateway import GatewayClient, ScopeCache
from services.dashboard.listener import DashboardServer, bind
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
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{self.server.port}/"


def check_sso_key(methods: LoginMethods, sso_api_key: str) -> None:
    """Refuse single sign-on without a key of its own to act with.

    OIDC and trusted-proxy users present no gateway key; lending them the
    dashboard's own key would silently give them its scopes.

    Raises:
        GateConfigError: OIDC or trusted-proxy login is on and no key is set.
    """
    if (methods.oidc or methods.proxy) and not sso_api_key:
        raise GateConfigError(
            "OIDC and trusted-proxy logins need LONGSHORE_DASHBOARD_SSO_API_KEY: the "
            "gateway key those users act with (give it the read scope for a read-only "
            "dashboard); the dashboard never lends them its own key"
        )


def build_dashboard(
    settings: DashboardSettings,
    *,
    gateway: GatewayClient | None = None,
    clock: Callable[[], float] = time.time,
) -> Built:
    """Check the auth settings and bind the server (not yet serving).

    Raises:
        GateConfigError: The settings cannot be served safely (says why).
        ListenError: The address cannot be bound (says which).
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
    if mode is Mode.GATED:
        check_sso_key(methods, section.sso_api_key)
    if mode is Mode.INSECURE:
        log.warning("dashboard auth gate disabled by LONGSHORE_DASHBOARD_INSECURE")
        sys.stderr.write(INSECURE_BANNER.format(listen=section.listen))
    elif mode is Mode.LOOPBACK and methods.names():
        log.warning(
            "login methods are configured but the dashboard binds loopback without "
            "require_login: no login is asked (set LONGSHORE_DASHBOARD_REQUIRE_LOGIN=1)"
        )
    sessions = store = None
    if section.session_secret:
        sessions = SessionCodec(
            section.session_secret,
            ttl_seconds=section.session_ttl_seconds,
            max_lifetime_seconds=section.session_max_lifetime_seconds,
            clock=clock,
        )
        store = SessionStore(
            idle_seconds=section.session_ttl_seconds,
            max_lifetime_seconds=section.session_max_lifetime_seconds,
            clock=clock,
            max_sessions=section.max_sessions,
        )
    proxy = None
    if section.trusted_proxy_header:
        proxy = ProxyAuth(section.trusted_proxy_header, section.trusted_proxies)
    sock = bind(host, port)
    try:
        gate = Gate(
            GateConfig(
                mode=mode,
                port=sock.getsockname()[1],
                bind_host=host,
                methods=methods,
                sso_api_key=section.sso_api_key,
            ),
            sessions=sessions,
            store=store,
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
        scope_cache = ScopeCache(client, clock=time.monotonic)
        pages = Pages(mode, scopes=scope_cache.scopes_of)
        router = Router()
        app = Dashboard(gate, router, hub, pages)
        ctx = ViewContext(
            gateway=client,
            gate=gate,
            pages=pages,
            hub=hub,
            version=__version__,
            scope_cache=scope_cache,
            throttle=LoginThrottle(clock=clock),
            end_session=app.end_session,
            oidc=oidc,
        )
        register_all(router, ctx)
        server = DashboardServer(sock, app, keep_alive_seconds=section.keep_alive_seconds)
    except BaseException:
        sock.close()
        raise
    log.info(
        "dashboard ready",
        extra={"listen": section.listen, "mode": mode.value, "login_methods": methods.names()},
    )
    return Built(app=app, server=server, gateway=client)
