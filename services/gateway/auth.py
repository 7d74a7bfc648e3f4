"""API keys: parsing, hashing, and the authorization of one call.

Keys are stored hashed: configuration holds the SHA-256 hex digest of each
key, never the key itself. One entry per key, in the form::

    name:scope+scope:sha256hex

e.g. ``ci:read+write:9f86d081...``. In the environment the entries are
comma-separated in ``LONGSHORE_GATEWAY_API_KEYS``; in the YAML config they are
a list under ``gateway.api_keys``. Scopes are ``read``, ``write``, ``worker``
and ``admin`` (admin grants everything). Make an entry with
:func:`key_entry`, e.g. ``python -m services.gateway.auth NAME SCOPES``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import trace

from services.gateway.ratelimit import RateLimiter
from services.gateway.scopes import SCOPES, required_scopes
from services.runtime.errors import PermissionDenied, Unauthenticated

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
KEY_PREFIX = "lsk_"


class ApiKeyFormatError(ValueError):
    """An API key entry in the configuration is malformed."""


@dataclass(frozen=True)
class Principal:
    """Who made a call: the API key's name and the scopes it grants."""

    name: str
    scopes: frozenset[str]

    def allows(self, accepted: Iterable[str]) -> bool:
        """Whether this principal holds any of the accepted scopes (admin holds all)."""
        return "admin" in self.scopes or any(scope in self.scopes for scope in accepted)


def hash_key(key: str) -> str:
    """Return the SHA-256 hex digest under which a key is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """Return a fresh random API key (``lsk_`` + 43 URL-safe characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_entry(name: str, scopes: Sequence[str], key: str) -> str:
    """Return the configuration entry for a key (it holds the hash, not the key)."""
    return f"{name}:{'+'.join(scopes)}:{hash_key(key)}"


def parse_entries(entries: Iterable[str]) -> dict[str, Principal]:
    """Parse configured key entries into a map from key hash to principal.

    Args:
        entries: Entries of the form ``name:scope+scope:sha256hex``.

    Returns:
        The principals by the hex digest of their key.

    Raises:
        ApiKeyFormatError: An entry is malformed, names an unknown scope, or
            repeats a name or a hash. The message names the entry by position
            and name, never its hash.
    """
    by_hash: dict[str, Principal] = {}
    names: set[str] = set()
    for index, raw in enumerate(entries):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ApiKeyFormatError(
                f"gateway.api_keys[{index}]: expected 'name:scope+scope:sha256hex'"
            )
        name, scope_text, digest = parts
        if not _NAME.match(name):
            raise ApiKeyFormatError(f"gateway.api_keys[{index}]: bad key name {name!r}")
        scopes = frozenset(s for s in scope_text.split("+") if s)
        unknown = sorted(scopes - SCOPES)
        if not scopes or unknown:
            raise ApiKeyFormatError(
                f"gateway.api_keys[{index}] ({name}): unknown or missing scopes {unknown}; "
                f"expected some of {sorted(SCOPES)}"
            )
        digest = digest.lower()
        if not _HEX.match(digest):
            raise ApiKeyFormatError(
                f"gateway.api_keys[{index}] ({name}): hash must be 64 hex characters (sha256)"
            )
        if name in names or digest in by_hash:
            raise ApiKeyFormatError(f"gateway.api_keys[{index}] ({name}): duplicate key")
        names.add(name)
        by_hash[digest] = Principal(name=name, scopes=scopes)
    return by_hash


class KeyRing:
    """The configured API keys; authenticates and authorizes calls."""

    def __init__(self, principals_by_hash: Mapping[str, Principal]) -> None:
        """Create a key ring.

        Args:
            principals_by_hash: As returned by :func:`parse_entries`.
        """
        self._by_hash = dict(principals_by_hash)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> KeyRing:
        """Build a key ring from configuration entries (see :func:`parse_entries`)."""
        return cls(parse_entries(entries))

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        """Return the principal whose key the call presents.

        Raises:
            Unauthenticated: No ``authorization: Bearer`` metadata, or an unknown key.
        """
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
        # Hashed on every call, not cached: one SHA-256 of a 47-character key
        # costs ~3 us, under 1% of a forwarded call (measured with py-spy and
        # timeit), and a cache would be a second place a key lives.
        principal = self._by_hash.get(hash_key(token))
        if principal is None:
            raise Unauthenticated("unknown API key")
        return principal

    def authorize(self, metadata: Iterable[tuple[str, str | bytes]], method: str) -> Principal:
        """Authenticate the call and check its key may call ``method``.

        Args:
            metadata: The call's invocation metadata.
            method: Full method name, e.g. ``/longshore.kanban.v1.KanbanService/GetTask``.

        Raises:
            Unauthenticated: As :meth:`authenticate`.
            PermissionDenied: The key lacks every scope the method accepts; the
                message names the scopes needed.
        """
        principal = self.authenticate(metadata)
        accepted = required_scopes(method)
        if not principal.allows(accepted):
            needed = " or ".join(repr(s) for s in accepted)
            raise PermissionDenied(
                f"{method} needs scope {needed}; key {principal.name!r} has "
                f"{'+'.join(sorted(principal.scopes))}"
            )
        return principal


class Gate:
    """Admits a call: a known key, with the method's scope, within its rate."""

    def __init__(self, keys: KeyRing, limiter: RateLimiter) -> None:
        """Create the gate from the key ring and the per-key rate limiter."""
        self._keys = keys
        self._limiter = limiter

    def admit(self, metadata: Iterable[tuple[str, str | bytes]], method: str) -> Principal:
        """Authenticate, authorize and rate-limit one call.

        Raises:
            Unauthenticated: No or unknown key.
            PermissionDenied: The key lacks the scope ``method`` needs.
            ResourceExhausted: The key is over its rate limit.
        """
        principal = self._keys.authorize(metadata, method)
        self._limiter.admit(principal.name)
        span = trace.get_current_span()
        span.set_attribute("longshore.principal", principal.name)
        return principal


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """Return the bearer token of an ``authorization`` metadata entry, if any."""
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Print a fresh key and its configuration entry: ``NAME SCOPE+SCOPE``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        sys.stderr.write("usage: python -m services.gateway.auth NAME read+write+worker+admin\n")
        return 2
    key = new_key()
    entry = key_entry(args[0], args[1].split("+"), key)
    parse_entries([entry])
    sys.stdout.write(f"key:   {key}\nentry: {entry}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
