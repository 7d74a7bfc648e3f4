"""The envd access token the front door hands an E2B client at create.

E2B's SDK sends its API key to the control plane only; envd calls carry the
sandbox's access token instead (``X-Access-Token``). So the token carries what
an envd call needs to act as its caller: the API key, the kanban run that owns
the sandbox and the Longshore sandbox id. It is as secret as the key inside it
(E2B's own envd token is a secret too) and proves nothing by itself: the
gateway checks the key, kanban and the manager check the run's holder.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from services.runtime.errors import Unauthenticated

PREFIX = "lse1."
#: A token longer than this is refused before decoding (keys are ~50 chars).
MAX_TOKEN_CHARS = 2048


@dataclass(frozen=True)
class Access:
    """What an envd access token says."""

    api_key: str
    run_id: str
    sandbox_id: str


def encode(access: Access) -> str:
    """The access token for ``access``."""
    body = json.dumps(
        {"k": access.api_key, "r": access.run_id, "s": access.sandbox_id}, separators=(",", ":")
    )
    return PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode(token: str) -> Access:
    """Reads an access token.

    Raises:
        Unauthenticated: Missing, oversized or malformed.
    """
    if not token:
        raise Unauthenticated("X-Access-Token: required (the envdAccessToken of the sandbox)")
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
        raise Unauthenticated("X-Access-Token: not a Longshore envd access token")
    raw = token[len(PREFIX) :]
    try:
        body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        access = Access(api_key=str(body["k"]), run_id=str(body["r"]), sandbox_id=str(body["s"]))
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise Unauthenticated("X-Access-Token: malformed") from exc
    if not (access.api_key and access.run_id and access.sandbox_id):
        raise Unauthenticated("X-Access-Token: malformed")
    return access
