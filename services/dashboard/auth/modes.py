"""How the gate decides its mode, and which configurations refuse to start.

The mode is decided once at start from the bind address and two explicit
settings; it is never changed by a request:

* ``INSECURE`` only when ``LONGSHORE_DASHBOARD_INSECURE`` is exactly ``1``,
  ``true`` or ``yes`` (any case). ``0``, typos and empty keep the gate. It is
  never inferred from the bind address.
* ``LOOPBACK`` when the dashboard binds 127.0.0.0/8, ``localhost`` or ``::1``
  and ``require_login`` is off: no login, a per-start token on ``/api/*`` and
  a ``Host`` check against DNS rebinding.
* ``GATED`` for every other bind (and for loopback with ``require_login``, the
  setting for a reverse proxy on the same host): login required.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

TRUTHY = frozenset({"1", "true", "yes"})
MIN_SECRET_LENGTH = 32


class Mode(Enum):
    """The gate's mode for the whole life of the process."""

    LOOPBACK = "loopback"
    GATED = "gated"
    INSECURE = "insecure"


class GateConfigError(ValueError):
    """The auth settings cannot be served safely; the message says why."""


def is_truthy(raw: str) -> bool:
    """Strict truthiness: exactly ``1``, ``true`` or ``yes`` in any case."""
    return raw.lower() in TRUTHY


def split_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:8080`` for IPv6) into host and port.

    Raises:
        GateConfigError: The address has no valid port.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise GateConfigError(f"dashboard.listen={listen!r}: expected host:port")
    host = host.strip("[]")
    return host, int(port_text)


def is_loopback_host(host: str) -> bool:
    """Say whether a bind host only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_mode(*, listen_host: str, insecure: str, require_login: bool) -> Mode:
    """Decide the gate's mode from the bind host and the explicit settings."""
    if is_truthy(insecure):
        return Mode.INSECURE
    if is_loopback_host(listen_host) and not require_login:
        return Mode.LOOPBACK
    return Mode.GATED


@dataclass(frozen=True)
class LoginMethods:
    """Which login methods are configured (only consulted in GATED mode)."""

    api_key: bool
    oidc: bool
    proxy: bool

    def names(self) -> list[str]:
        """Names of the configured methods, for logs and the status page."""
        flags = (("api_key", self.api_key), ("oidc", self.oidc), ("proxy", self.proxy))
        return [name for name, on in flags if on]


def check_login_methods(
    *,
    mode: Mode,
    listen: str,
    session_secret: str,
    api_key_login: bool,
    oidc_issuer: str,
    oidc_client_id: str,
    proxy_header: str,
    trusted_proxies: tuple[str, ...],
) -> LoginMethods:
    """Work out the login methods and refuse unsafe or empty configurations.

    Raises:
        GateConfigError: A method is half configured, or GATED mode has none.
    """
    if session_secret and len(session_secret) < MIN_SECRET_LENGTH:
        raise GateConfigError(
            "LONGSHORE_DASHBOARD_SESSION_SECRET is too short: use at least "
            f"{MIN_SECRET_LENGTH} random characters"
        )
    if bool(oidc_issuer) != bool(oidc_client_id):
        raise GateConfigError(
            "OIDC needs both LONGSHORE_DASHBOARD_OIDC_ISSUER and LONGSHORE_DASHBOARD_OIDC_CLIENT_ID"
        )
    if oidc_issuer and not session_secret:
        raise GateConfigError("OIDC login needs LONGSHORE_DASHBOARD_SESSION_SECRET to sign cookies")
    if proxy_header and not trusted_proxies:
        raise GateConfigError(
            "LONGSHORE_DASHBOARD_TRUSTED_PROXY_HEADER is set but "
            "LONGSHORE_DASHBOARD_TRUSTED_PROXIES is empty: list the proxy addresses "
            "allowed to assert a user"
        )
    for entry in trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise GateConfigError(
                f"LONGSHORE_DASHBOARD_TRUSTED_PROXIES: {entry!r} is not an address or network"
            ) from exc
    methods = LoginMethods(
        api_key=bool(session_secret) and api_key_login,
        oidc=bool(oidc_issuer),
        proxy=bool(proxy_header),
    )
    if mode is Mode.GATED and not methods.names():
        raise GateConfigError(
            f"login is required (dashboard.listen={listen} is not a loopback address, or "
            "dashboard.require_login is set) but no login method is configured. "
            "Set LONGSHORE_DASHBOARD_SESSION_SECRET "
            "(API-key login), LONGSHORE_DASHBOARD_OIDC_ISSUER + _OIDC_CLIENT_ID, or "
            "LONGSHORE_DASHBOARD_TRUSTED_PROXY_HEADER + _TRUSTED_PROXIES; or bind "
            "127.0.0.1; or set LONGSHORE_DASHBOARD_INSECURE=1 to disable the gate (unsafe)"
        )
    return methods
