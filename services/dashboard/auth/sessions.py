"""Signed, expiring session cookies (HMAC-SHA256).

A cookie only *names* a session: the gate also requires the server-side
record of ``sid`` in :class:`~.store.SessionStore`, which holds the key the
session acts with, so logout and key rotation end a session for good.

A cookie value is ``<payload>.<signature>`` where the payload is base64url
JSON ``{"sub", "sid", "method", "auth", "exp"}``. The signature covers the
payload with the dashboard's session secret, so a tampered or foreign cookie
is rejected; ``exp`` bounds idle time and is pushed forward ("refreshed")
once less than half the TTL remains, up to ``max_lifetime`` after the login.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

COOKIE_NAME = "longshore_session"


class SessionState(Enum):
    """What a presented cookie turned out to be."""

    MISSING = "missing"
    INVALID = "invalid"
    EXPIRED = "expired"
    VALID = "valid"


@dataclass(frozen=True)
class Session:
    """A logged-in user's session.

    Attributes:
        subject: Who logged in (``apikey:<fingerprint>``, an OIDC email/sub).
        session_id: Random id; the CSRF token is derived from it.
        method: How the user logged in: ``api_key`` or ``oidc``.
        auth_time: When the user logged in (epoch seconds).
        expires: When the cookie stops being accepted (epoch seconds).
    """

    subject: str
    session_id: str
    method: str
    auth_time: float
    expires: float


@dataclass(frozen=True)
class SessionCheck:
    """The verdict on a presented cookie; ``session`` is set when VALID."""

    state: SessionState
    session: Session | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Issues and checks session cookies.

    Args:
        secret: Signing key (at least 32 characters; checked by the settings).
        ttl_seconds: Idle lifetime of a cookie.
        max_lifetime_seconds: Hard limit after login; refresh never passes it.
        clock: Returns the current epoch time; injected by tests.
    """

    def __init__(
        self,
        secret: str,
        *,
        ttl_seconds: float,
        max_lifetime_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._key = hashlib.sha256(b"longshore-dashboard-session\0" + secret.encode()).digest()
        self._ttl = ttl_seconds
        self._max = max_lifetime_seconds
        self._clock = clock

    @property
    def ttl_seconds(self) -> float:
        """Idle lifetime of a cookie, in seconds."""
        return self._ttl

    @property
    def max_lifetime_seconds(self) -> float:
        """Hard limit of a session after login, in seconds."""
        return self._max

    def sign(self, purpose: str, value: str) -> str:
        """Return a hex HMAC of ``value`` for one purpose (e.g. CSRF tokens)."""
        message = f"{purpose}\0{value}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def issue(self, subject: str, method: str) -> Session:
        """Create a new session for a user who just logged in."""
        now = self._clock()
        return Session(
            subject=subject,
            session_id=secrets.token_urlsafe(18),
            method=method,
            auth_time=now,
            expires=min(now + self._ttl, now + self._max),
        )

    def encode(self, session: Session) -> str:
        """Serialise and sign a session into a cookie value."""
        payload = json.dumps(
            {
                "sub": session.subject,
                "sid": session.session_id,
                "method": session.method,
                "auth": session.auth_time,
                "exp": session.expires,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        body = _b64(payload)
        return f"{body}.{self.sign('cookie', body)}"

    def decode(self, value: str | None) -> SessionCheck:
        """Check a cookie value: signature first, then expiry."""
        if not value:
            return SessionCheck(SessionState.MISSING)
        body, _, signature = value.partition(".")
        if not body or not hmac.compare_digest(signature, self.sign("cookie", body)):
            return SessionCheck(SessionState.INVALID)
        try:
            data = json.loads(_unb64(body))
            session = Session(
                subject=str(data["sub"]),
                session_id=str(data["sid"]),
                method=str(data["method"]),
                auth_time=float(data["auth"]),
                expires=float(data["exp"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return SessionCheck(SessionState.INVALID)
        if self._clock() >= session.expires:
            return SessionCheck(SessionState.EXPIRED, session)
        return SessionCheck(SessionState.VALID, session)

    def refreshed(self, session: Session) -> Session | None:
        """Return a session with a later expiry when it is due, else None.

        A cookie is refreshed once less than half its TTL remains, never past
        ``auth_time + max_lifetime``.
        """
        now = self._clock()
        if session.expires - now > self._ttl / 2:
            return None
        new_expiry = min(now + self._ttl, session.auth_time + self._max)
        if new_expiry <= session.expires:
            return None
        return replace(session, expires=new_expiry)

    def csrf_token(self, session: Session) -> str:
        """The CSRF token the page must echo for this session."""
        return self.sign("csrf", session.session_id)
