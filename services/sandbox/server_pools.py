"""The warm-pool RPCs of SandboxService: SetWarmPool (operators) and ListWarmPools (a read).

A mixin of :class:`~services.sandbox.server.SandboxServicer`, like
:mod:`.server_lifecycle`. SetWarmPool is refused to anyone but an operator
(an ``admin`` key or another Longshore service) before the spec is even
read; the spec is then admitted under the same policy as an acquire's
(:mod:`.pools`). The handout itself is part of AcquireSandbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from longshore.sandbox.v1 import pool_pb2

from services.runtime.errors import InvalidArgument
from services.sandbox import convert
from services.sandbox.access import SandboxAccess
from services.sandbox.manager import SandboxManager
from services.sandbox.model import WarmPool
from services.sandbox.pools import MAX_PROFILE_CHARS
from services.sandbox.server_files import Context

T = TypeVar("T")


class PoolRpcs:
    """Mixin for :class:`~services.sandbox.server.SandboxServicer`: warm pools."""

    manager: SandboxManager
    access: SandboxAccess

    if TYPE_CHECKING:
        # The servicer's pool runner (defined there, shared with the other RPCs).
        async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def SetWarmPool(
        self, request: pool_pb2.SetWarmPoolRequest, context: Context
    ) -> pool_pb2.SetWarmPoolResponse:
        """See the proto."""
        self.access.require_operator(context, "SetWarmPool")
        spec = convert.checked_spec(request.spec)
        pool = await self._blocking(
            self.manager.pools.set_pool, request.profile, spec, int(request.size)
        )
        return pool_pb2.SetWarmPoolResponse(pool=_pool_to_proto(pool))

    async def ListWarmPools(
        self, request: pool_pb2.ListWarmPoolsRequest, context: Context
    ) -> pool_pb2.ListWarmPoolsResponse:
        """See the proto."""
        if len(request.profile) > MAX_PROFILE_CHARS:
            raise InvalidArgument(f"profile: at most {MAX_PROFILE_CHARS} characters")
        self.manager.require_engine()
        pools = await self._blocking(self.manager.pools.list_pools, request.profile)
        return pool_pb2.ListWarmPoolsResponse(pools=[_pool_to_proto(p) for p in pools])


def _pool_to_proto(pool: WarmPool) -> pool_pb2.WarmPool:
    return pool_pb2.WarmPool(
        profile=pool.profile,
        config_hash=pool.config_hash,
        size=pool.size,
        ready=pool.ready,
        starting=pool.starting,
        image=pool.image,
        reason=pool.reason,
    )
