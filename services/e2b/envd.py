"""What every envd call (``E2B_SANDBOX_URL``) starts with: who is calling, on what.

envd's Connect services and ``/files`` carry the sandbox's access token
(``X-Access-Token``, see :mod:`services.e2b.tokens`); from it the front door
knows the key, the run and the Longshore sandbox, and gets the run's sandbox
token for this key (kept, or renewed by a heartbeat that kanban refuses to
any key but the run's holder).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.e2b.gateway import Caller
from services.e2b.sandboxes import Sandboxes

ACCESS_TOKEN_HEADER = "x-access-token"  # noqa: S105 (a header name, not a secret)


@dataclass(frozen=True)
class Target:
    """An envd call's caller and sandbox."""

    caller: Caller
    sandbox_id: str


async def target_of(sandboxes: Sandboxes, headers: Mapping[str, str]) -> Target:
    """The caller and sandbox of an envd call.

    Raises:
        Unauthenticated: No access token, or one this front door did not seal.
        grpc.aio.AioRpcError: The run is not the key's, or it ended.
    """
    access = sandboxes.sealer.open(headers.get(ACCESS_TOKEN_HEADER, ""))
    token = await sandboxes.token(access.api_key, access.run_id)
    return Target(Caller(access.api_key, token), access.sandbox_id)
