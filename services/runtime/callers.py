"""Who made a call: the principal and scopes the gateway vouches for, or a peer service.

Backends accept calls only with the internal credential (see
:class:`services.runtime.aio_interceptors.AioServingInterceptor`), which only
Longshore's own services hold. The gateway adds the caller's API key name
(``longshore-principal``) and scopes (``longshore-scopes``) and strips any a
client sent; a call without a principal therefore comes from another Longshore
service (kanban's executor calling the sandbox manager) and is trusted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc

PRINCIPAL_KEY = "longshore-principal"
SCOPES_KEY = "longshore-scopes"
#: Principal recorded on runs the dispatcher executes itself.
DISPATCHER = "dispatcher"


@dataclass(frozen=True)
class Caller:
    """The party behind one call.

    Attributes:
        principal: API key name as the gateway forwarded it; ``""`` for a peer
            service calling directly.
        scopes: Scopes of that key (empty for a peer service).
    """

    principal: str
    scopes: frozenset[str]

    @property
    def is_service(self) -> bool:
        """A Longshore service calling directly (trusted like an operator)."""
        return not self.principal

    @property
    def is_operator(self) -> bool:
        """An ``admin`` key or a peer service: full access to every resource."""
        return self.is_service or "admin" in self.scopes

    def describe(self) -> str:
        """How messages name the caller, e.g. ``key 'ci'``."""
        return "a Longshore service" if self.is_service else f"key {self.principal!r}"


def caller_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
    """Read the caller out of invocation metadata (first value of each key wins)."""
    principal = ""
    scopes = ""
    seen: set[str] = set()
    for key, value in metadata or ():
        if key in seen or key not in (PRINCIPAL_KEY, SCOPES_KEY):
            continue
        seen.add(key)
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if key == PRINCIPAL_KEY:
            principal = text
        else:
            scopes = text
    return Caller(principal=principal, scopes=frozenset(s for s in scopes.split("+") if s))


def caller(context: grpc.ServicerContext) -> Caller:
    """The caller of the call ``context`` serves."""
    return caller_from_metadata(context.invocation_metadata())


def caller_metadata(principal: str, scopes: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Metadata the gateway adds to vouch for a caller."""
    return ((PRINCIPAL_KEY, principal), (SCOPES_KEY, "+".join(sorted(scopes))))
