"""Sandbox tokens: proof that a caller holds a task's live run.

Kanban mints one when a worker claims a run (and renews it on heartbeats);
the sandbox manager checks it before a non-operator may acquire, use or release
the task's sandbox. A token names the deployment, task, profile and run, the
digest of the run's sandbox spec (so the holder gets the profile's spec and
nothing wider) and an expiry, and is signed with HMAC-SHA256 under a key
derived from the internal credential, which only Longshore's services hold.

Format: ``lst1.<base64url(JSON claims)>.<base64url(signature)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

from longshore.sandbox.v1 import sandbox_pb2

from services.runtime.errors import PermissionDenied

SANDBOX_TOKEN_KEY = "longshore-sandbox-token"  # noqa: S105 (a metadata key, not a secret)
_PREFIX = "lst1"
_KEY_LABEL = b"longshore sandbox token v1"
#: Longest token accepted (a token is a few hundred bytes).
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True)
class SandboxGrant:
    """What a sandbox token allows: the sandbox of one task's run, until ``expires``."""

    deployment: str
    task_id: str
    profile: str
    run_id: str
    spec_digest: str
    expires: float  # Unix seconds
    #: Key name that holds the run: the sandbox manager refuses the token from
    #: any other key, so a leaked token is useless without its holder's key.
    holder: str = ""


def spec_digest(spec: sandbox_pb2.SandboxSpec) -> str:
    """SHA-256 of the spec's deterministic serialization (env values included)."""
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SandboxTokens:
    """Mints and verifies sandbox tokens under the internal credential."""

    def __init__(self, internal_token: str) -> None:
        if not internal_token:
            raise ValueError("LONGSHORE_INTERNAL_TOKEN: must not be empty")
        self._key = hmac.new(internal_token.encode(), _KEY_LABEL, hashlib.sha256).digest()

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, f"{_PREFIX}.{body}".encode(), hashlib.sha256).digest())

    def mint(self, grant: SandboxGrant) -> str:
        """Return the signed token for ``grant``."""
        claims = json.dumps(asdict(grant), separators=(",", ":"), sort_keys=True)
        body = _b64(claims.encode())
        return f"{_PREFIX}.{body}.{self._sign(body)}"

    def verify(self, token: str, *, now: float) -> SandboxGrant:
        """Return the grant a token carries.

        Raises:
            PermissionDenied: Missing, malformed, forged or expired token; the
                message says which, never echoing the token.
        """
        if not token:
            raise PermissionDenied(
                f"sandbox token required: send the run's token as metadata {SANDBOX_TOKEN_KEY!r}"
            )
        if len(token) > MAX_TOKEN_CHARS:
            raise PermissionDenied("sandbox token: malformed (too long)")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise PermissionDenied("sandbox token: malformed")
        _, body, signature = parts
        if not hmac.compare_digest(self._sign(body), signature):
            raise PermissionDenied("sandbox token: bad signature")
        try:
            raw: Any = json.loads(_unb64(body))
            grant = SandboxGrant(
                deployment=str(raw["deployment"]),
                task_id=str(raw["task_id"]),
                profile=str(raw["profile"]),
                run_id=str(raw["run_id"]),
                spec_digest=str(raw["spec_digest"]),
                expires=float(raw["expires"]),
                holder=str(raw.get("holder", "")),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise PermissionDenied("sandbox token: malformed claims") from exc
        if grant.expires <= now:
            raise PermissionDenied(
                f"sandbox token for run {grant.run_id!r} expired; renew it with Heartbeat"
            )
        return grant
