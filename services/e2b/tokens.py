"""The envd access token the front door hands an E2B client at create: sealed, not readable.

E2B's SDK sends its API key to the control plane only; envd calls carry the
sandbox's access token instead (``X-Access-Token``). So the token carries what
an envd call needs to act as its caller: the API key, the kanban run that owns
the sandbox and the Longshore sandbox id. Those are sealed with AES-GCM under
the front door's token secret (``e2b.token_secret``): whoever holds a token
(an E2B client may hand it to a browser for direct file transfers, as E2B's
own tokens are) can make envd calls on that one sandbox through this front
door, but cannot read the key out of it, nor change the sandbox or run it
names. The seal proves only that this front door issued the token; the
gateway still checks the key, kanban and the manager the run's holder.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.runtime.errors import Unauthenticated

PREFIX = "lse2."
#: A token longer than this is refused before decoding (keys are ~50 chars).
MAX_TOKEN_CHARS = 2048
#: A token secret shorter than this is refused at start.
MIN_SECRET_CHARS = 32
_NONCE_BYTES = 12
#: Bound into every seal, so a token is no other kind of AES-GCM message.
_CONTEXT = PREFIX.encode()


@dataclass(frozen=True)
class Access:
    """What an envd access token says."""

    api_key: str
    run_id: str
    sandbox_id: str


class Sealer:
    """Seals and opens access tokens under one secret.

    Args:
        secret: The token secret (at least :data:`MIN_SECRET_CHARS`
            characters); empty = a random one for this process only, so its
            tokens die with it and no other replica opens them.

    Raises:
        ValueError: A secret that is set but too short.
    """

    def __init__(self, secret: str = "") -> None:
        if secret and len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"LONGSHORE_E2B_TOKEN_SECRET: at least {MIN_SECRET_CHARS} characters, "
                f"got {len(secret)}"
            )
        self.ephemeral = not secret
        material = secret.encode() if secret else secrets.token_bytes(32)
        key = hashlib.sha256(b"longshore e2b envd access token\x00" + material).digest()
        self._aead = AESGCM(key)

    def seal(self, access: Access) -> str:
        """The access token for ``access``."""
        body = json.dumps(
            {"k": access.api_key, "r": access.run_id, "s": access.sandbox_id},
            separators=(",", ":"),
        ).encode()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, body, _CONTEXT)
        return PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, token: str) -> Access:
        """Reads an access token this front door (or one sharing its secret) issued.

        Raises:
            Unauthenticated: Missing, oversized, malformed or not sealed under
                this secret.
        """
        if not token:
            raise Unauthenticated("X-Access-Token: required (the envdAccessToken of the sandbox)")
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
            raise Unauthenticated("X-Access-Token: not a Longshore envd access token")
        raw = token[len(PREFIX) :]
        try:
            sealed = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError) as exc:
            raise Unauthenticated("X-Access-Token: malformed") from exc
        if len(sealed) <= _NONCE_BYTES:
            raise Unauthenticated("X-Access-Token: malformed")
        try:
            body = self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _CONTEXT)
        except InvalidTag as exc:
            raise Unauthenticated(
                "X-Access-Token: not issued by this front door (or its token secret changed)"
            ) from exc
        try:
            fields = json.loads(body)
            access = Access(
                api_key=str(fields["k"]), run_id=str(fields["r"]), sandbox_id=str(fields["s"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise Unauthenticated("X-Access-Token: malformed") from exc
        if not (access.api_key and access.run_id and access.sandbox_id):
            raise Unauthenticated("X-Access-Token: malformed")
        return access
