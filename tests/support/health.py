"""The gateway's own health probe, called from synchronous tests."""

from __future__ import annotations

import asyncio

from grpc import aio

from services.gateway.status import Probe, probe


def probe_address(address: str, timeout: float = 5.0) -> Probe:
    """What the gateway's GetStatus would see of the server at ``address``.

    The gateway probes on grpc.aio; this runs one probe on a fresh loop and
    channel, so plain tests can poll it.
    """

    async def once() -> Probe:
        async with aio.insecure_channel(address) as channel:
            return await probe(channel, timeout)

    return asyncio.run(once())
