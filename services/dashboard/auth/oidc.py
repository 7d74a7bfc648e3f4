"""OpenID Connect login: authorization code flow with PKCE (S256).

The flow's secrets (state, nonce, code verifier, where to return) travel in a
short-lived signed cookie scoped to ``/auth/oidc/``, so a login in flight
needs no server state (the session it ends in does: see :mod:`.store`). The ID token comes straight
from the token endpoint over the back channel, so its claims (issuer,
audience, expiry, nonce) are checked and its signature is not (OpenID Connect
Core 1.0, section 3.1.3.7, step 6: TLS to the token endpoint authenticates
the issuer; use an https issuer in production).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.dashboard.auth.sessions import SessionCodec

log = logging.getLogger(__name__)

FLOW_COOKIE = "longshore_oidc"
FLOW_TTL_SECONDS = 600
HTTP_TIMEOUT_SECONDS = 10.0


class OidcError(Exception):
    """The login could not be completed; the message is safe to show."""


@dataclass(frozen=True)
class OidcConfig:
    """The provider and this client's registration."""

    issuer: str
    client_id: str
    client_secret: str = ""
    redirect_url: str = ""
    scopes: str = "openid email profile"


@dataclass(frozen=True)
class OidcStart:
    """Where to send the browser, and the flow cookie to set."""

    authorize_url: str
    flow_cookie: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a verifier (RFC 7636)."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _http_json(url: str, data: dict[str, str] | None = None) -> dict[str, Any]:
    if not url.startswith(("https://", "http://")):
        raise OidcError(f"provider URL {url!r} is not http(s)")
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - checked
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
            result = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise OidcError(f"identity provider answered {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise OidcError("identity provider unreachable or answered garbage") from exc
    if not isinstance(result, dict):
        raise OidcError("identity provider answered garbage")
    return result


class OidcClient:
    """Runs the authorization code + PKCE flow against one provider.

    Args:
        config: Provider and client registration.
        signer: Signs the flow cookie (the session codec's key).
        clock: Epoch-seconds clock.
    """

    def __init__(
        self, config: OidcConfig, *, signer: SessionCodec, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self._signer = signer
        self._clock = clock
        self._discovery: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def discovery(self) -> dict[str, Any]:
        """The provider's metadata, fetched once."""
        with self._lock:
            if self._discovery is None:
                url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
                document = _http_json(url)
                if document.get("issuer", "").rstrip("/") != self.config.issuer.rstrip("/"):
                    raise OidcError("provider metadata names another issuer")
                self._discovery = document
            return self._discovery

    def begin(self, *, next_target: str, redirect_uri: str) -> OidcStart:
        """Start a login: the authorize URL and the signed flow cookie."""
        metadata = self.discovery()
        state = secrets.token_urlsafe(24)
        nonce = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        flow = {
            "state": state,
            "nonce": nonce,
            "verifier": verifier,
            "next": next_target,
            "redirect_uri": redirect_uri,
            "exp": self._clock() + FLOW_TTL_SECONDS,
        }
        body = _b64(json.dumps(flow, separators=(",", ":")).encode())
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.config.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = str(metadata["authorization_endpoint"])
        separator = "&" if "?" in endpoint else "?"
        return OidcStart(
            authorize_url=f"{endpoint}{separator}{query}",
            flow_cookie=f"{body}.{self._signer.sign('oidc-flow', body)}",
        )

    def _flow(self, cookie: str) -> dict[str, Any]:
        body, _, signature = cookie.partition(".")
        if not body or not hmac.compare_digest(signature, self._signer.sign("oidc-flow", body)):
            raise OidcError("login flow cookie missing or tampered: start again")
        try:
            flow: dict[str, Any] = json.loads(_unb64(body))
        except (ValueError, binascii.Error) as exc:
            raise OidcError("login flow cookie unreadable: start again") from exc
        if self._clock() >= float(flow.get("exp", 0)):
            raise OidcError("login took too long: start again")
        return flow

    def finish(self, *, code: str, state: str, flow_cookie: str) -> tuple[str, str]:
        """Complete a login from the provider's callback.

        Returns:
            ``(subject, next target)`` for the new session.

        Raises:
            OidcError: Any check failed; the message is safe to show.
        """
        flow = self._flow(flow_cookie)
        if not state or not hmac.compare_digest(state, str(flow["state"])):
            raise OidcError("state mismatch: start again")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": str(flow["redirect_uri"]),
            "client_id": self.config.client_id,
            "code_verifier": str(flow["verifier"]),
        }
        if self.config.client_secret:
            form["client_secret"] = self.config.client_secret
        tokens = _http_json(str(self.discovery()["token_endpoint"]), form)
        claims = self._claims(str(tokens.get("id_token", "")))
        if not hmac.compare_digest(str(claims.get("nonce", "")), str(flow["nonce"])):
            raise OidcError("nonce mismatch")
        email = claims.get("email")
        subject = str(email) if email and claims.get("email_verified", True) else claims["sub"]
        return str(subject), str(flow["next"])

    def _claims(self, id_token: str) -> dict[str, Any]:
        parts = id_token.split(".")
        if len(parts) != 3:
            raise OidcError("the provider sent no ID token")
        try:
            claims: dict[str, Any] = json.loads(_unb64(parts[1]))
        except (ValueError, binascii.Error) as exc:
            raise OidcError("unreadable ID token") from exc
        issuer = str(claims.get("iss", "")).rstrip("/")
        if issuer != self.config.issuer.rstrip("/"):
            raise OidcError("ID token from another issuer")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.config.client_id not in audiences:
            raise OidcError("ID token for another client")
        if float(claims.get("exp", 0)) <= self._clock():
            raise OidcError("ID token expired")
        if not claims.get("sub"):
            raise OidcError("ID token without a subject")
        return claims
