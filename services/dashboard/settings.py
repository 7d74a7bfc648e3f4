"""The dashboard's settings: the ``dashboard`` section and the gateway peer.

``dashboard.insecure`` is read as a *string* on purpose: only ``1``, ``true``
or ``yes`` (any case) disable the gate (see :mod:`.auth.modes`); a typo such
as ``ture`` or ``on`` keeps it, which a general boolean parser would not do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.runtime.config import BaseSettings, PeerSection


@dataclass(frozen=True)
class DashboardSection:
    """Settings of the web UI and its auth gate (``LONGSHORE_DASHBOARD_*``)."""

    listen: str = field(
        default="127.0.0.1:8080",
        metadata={"help": "host:port the dashboard binds; a non-loopback bind requires login."},
    )
    api_key: str = field(
        default="",
        metadata={"help": "The dashboard's own gateway API key.", "secret": True},
    )
    insecure: str = field(
        default="",
        metadata={
            "help": "Exactly 1, true or yes (any case) disables the auth gate (unsafe); "
            "anything else keeps it."
        },
    )
    require_login: bool = field(
        default=False,
        metadata={
            "help": "Require login even on a loopback bind (a reverse proxy on the same host)."
        },
    )
    session_secret: str = field(
        default="",
        metadata={
            "help": "Key (32+ characters) signing session cookies; enables API-key login.",
            "secret": True,
        },
    )
    api_key_login: bool = field(
        default=True,
        metadata={"help": "Offer login with a gateway API key (needs session_secret)."},
    )
    session_ttl_seconds: int = field(
        default=8 * 3600,
        metadata={"help": "Idle lifetime of a session cookie; refreshed at half-life."},
    )
    session_max_lifetime_seconds: int = field(
        default=7 * 24 * 3600,
        metadata={"help": "Hard limit of a session after login, refreshes included."},
    )
    oidc_issuer: str = field(
        default="", metadata={"help": "OIDC issuer URL; enables single sign-on."}
    )
    oidc_client_id: str = field(default="", metadata={"help": "OIDC client id."})
    oidc_client_secret: str = field(
        default="",
        metadata={"help": "OIDC client secret (empty for a public PKCE client).", "secret": True},
    )
    oidc_redirect_url: str = field(
        default="",
        metadata={
            "help": "Callback URL registered at the provider; empty = derived from the request."
        },
    )
    oidc_scopes: str = field(
        default="openid email profile", metadata={"help": "Scopes asked of the provider."}
    )
    trusted_proxy_header: str = field(
        default="",
        metadata={"help": "Header a trusted reverse proxy sets to the logged-in user's name."},
    )
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Addresses or CIDR networks allowed to set trusted_proxy_header."},
    )
    sso_api_key: str = field(
        default="",
        metadata={
            "help": "Gateway API key that OIDC and trusted-proxy logins act with (required "
            "with either); its scopes are theirs, so give it read only for a read-only "
            "dashboard. API-key logins act with their own key.",
            "secret": True,
        },
    )
    max_sessions: int = field(
        default=10_000,
        metadata={
            "help": "Server-side sessions kept at most; beyond, the least recently used ends."
        },
    )
    keep_alive_seconds: int = field(
        default=5,
        metadata={"help": "An idle HTTP connection (or one that sends nothing) closes after this."},
    )
    call_timeout_seconds: float = field(
        default=10.0, metadata={"help": "Deadline of each gateway call the dashboard makes."}
    )


def _default_gateway() -> PeerSection:
    return PeerSection(addr="127.0.0.1:50051")


@dataclass(frozen=True)
class DashboardSettings(BaseSettings):
    """Everything the dashboard process reads at start."""

    dashboard: DashboardSection = field(default_factory=DashboardSection)
    gateway: PeerSection = field(default_factory=_default_gateway)
