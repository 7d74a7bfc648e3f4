"""External workers for the cycle benchmarks: claim, heartbeat, complete, repeat.

``cycles`` runs ``workers`` coroutines on the bench's ``grpc.aio`` loop (a
worker costs a coroutine here, not a thread, so the client's own overhead
stays small next to the services'). Worker ``i`` serves profile
``profiles[i % len(profiles)]`` on address ``addresses[i % len(addresses)]``,
so with several kanban replicas every replica sees every profile's workers
and the caps are contended across replicas. A claim waits up to a second
(long poll) when its profile is at its cap or empty, so waiting workers do
not spin.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import duration_pb2
from grpc import aio
from longshore.kanban.v1 import worker_service_pb2 as wpb
from longshore.kanban.v1 import worker_service_pb2_grpc

from bench import loop

Metadata = tuple[tuple[str, str], ...]


@dataclass
class CycleRun:
    """What the workers did."""

    done: int
    seconds: float
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def per_s(self) -> float:
        """Completed cycles per second of wall time."""
        return self.done / self.seconds if self.seconds else 0.0


async def _cycles(
    addresses: Sequence[str],
    metadata: Metadata,
    profiles: Sequence[str],
    workers: int,
    total: int,
    timeout_s: float,
) -> CycleRun:
    channels = [aio.insecure_channel(a) for a in addresses]
    stubs = [worker_service_pb2_grpc.WorkerServiceStub(c) for c in channels]
    done = 0
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    wait = duration_pb2.Duration(seconds=1)

    async def work(n: int) -> None:
        nonlocal done
        stub = stubs[n % len(stubs)]
        claim = wpb.ClaimTaskRequest(
            profile=profiles[n % len(profiles)], worker_id=f"w{n}", wait=wait
        )
        while done < total and time.monotonic() < deadline:
            try:
                reply = await stub.ClaimTask(claim, timeout=10, metadata=metadata)
                if not reply.HasField("task"):
                    continue
                beat = wpb.HeartbeatRequest(run_id=reply.run_id)
                await stub.Heartbeat(beat, timeout=10, metadata=metadata)
                finish = wpb.CompleteTaskRequest(run_id=reply.run_id)
                await stub.CompleteTask(finish, timeout=10, metadata=metadata)
                done += 1  # one event loop: no lock needed
            except grpc.RpcError as exc:
                errors[exc.code().name] += 1
                if sum(errors.values()) > 100:
                    return

    try:
        # Connect first, so the timed part is the cycles, not the handshakes.
        await asyncio.gather(*(c.channel_ready() for c in channels))
        started = time.perf_counter()
        await asyncio.gather(*(work(n) for n in range(workers)))
        seconds = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return CycleRun(done=done, seconds=seconds, errors=errors)


def cycles(
    addresses: Sequence[str],
    metadata: Metadata,
    *,
    profiles: Sequence[str],
    workers: int,
    total: int,
    timeout_s: float = 600.0,
) -> CycleRun:
    """Run ``workers`` external workers until ``total`` cycles are done (or ``timeout_s``).

    Args:
        addresses: Kanban replicas (or one gateway) to spread the workers over.
        metadata: Credential on every call (internal token or API key).
        profiles: External profiles the seeded tasks are assigned to.
        workers: Concurrent workers.
        total: Cycles to complete (the seeded task count).
        timeout_s: Give up after this long.
    """
    return loop.run(_cycles(addresses, metadata, profiles, workers, total, timeout_s))
