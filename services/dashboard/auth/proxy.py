"""Login by a trusted reverse proxy's user header (explicit opt-in).

The header (e.g. ``X-Forwarded-User``) is believed only when the connecting
socket's address is in the allowlist: anyone else could set it. Behind such a
proxy ``X-Forwarded-Proto`` from the same proxy decides the cookie's
``Secure`` flag.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from services.dashboard.web import Request

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyAuth:
    """Trusts one header from an allowlist of proxy addresses.

    Args:
        header: The header carrying the authenticated user's name.
        trusted: Addresses or networks (CIDR) of the proxies.
    """

    def __init__(self, header: str, trusted: Sequence[str]) -> None:
        self.header = header.lower()
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in trusted
        )

    def trusts(self, peer: str) -> bool:
        """Whether the connecting address is one of the trusted proxies."""
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def user(self, request: Request) -> str | None:
        """The user the proxy vouches for, or None (absent, or untrusted peer)."""
        value = (request.header(self.header) or "").strip()
        if not value:
            return None
        if not self.trusts(request.peer):
            log.warning(
                "ignored a user header from an untrusted address", extra={"peer": request.peer}
            )
            return None
        return value[:200]
