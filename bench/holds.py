"""Many idle calls held open at once: ClaimTask long polls and WatchEvents streams.

The calls live on the bench's ``grpc.aio`` event loop (:mod:`bench.loop`, a
background thread: ten thousand calls cost ten thousand coroutines in the
client, not threads), so
the benchmark's own thread stays free to time unary calls meanwhile. A poll
that ends empty (its ``wait`` ran out) is sent again at once, so the number
held stays constant; a poll that gets a task counts it and polls again; a
call that fails is counted by status code and not retried (it was not held).

Calls are opened in batches (:data:`BATCH` every :data:`PACE_S` seconds),
as workers coming up would, not in one burst: ten thousand calls started in
one loop turn were seen cancelled by gRPC in the thousands, which measures
a stampede, not holding.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from concurrent.futures import Future
from typing import Any

import grpc
from google.protobuf import duration_pb2
from grpc import aio
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import kanban_service_pb2_grpc, worker_service_pb2_grpc
from longshore.kanban.v1 import worker_service_pb2 as wpb

from bench import loop

Metadata = tuple[tuple[str, str], ...]
BATCH = 250
PACE_S = 0.25


class Holds:
    """``polls`` ClaimTask long polls and ``watches`` WatchEvents streams on ``target``.

    Counters are written on the loop thread and read from others: each is a
    plain int or Counter read whole, and a figure a moment stale is fine.
    """

    def __init__(
        self,
        target: str,
        metadata: Metadata,
        *,
        polls: int,
        watches: int,
        profile: str,
        since_event_id: int = 0,
    ) -> None:
        self.target = target
        self.polls = polls
        self.watches = watches
        self._metadata = metadata
        self._profile = profile
        self._since = since_event_id
        self.claimed = 0
        self.reissued = 0
        self.active = 0
        self.watchers_reached: set[int] = set()
        self.errors: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        self._issued = threading.Event()
        self._done: Future[None] | None = None
        self._stopping = False

    def start(self) -> Holds:
        """Issue every call (returns once all are sent, not necessarily held yet)."""
        self._done = loop.submit(self._main())
        self._issued.wait(120)
        return self

    def stop(self) -> None:
        """Cancel every call and wait until the channel is closed."""
        if self._done is not None:
            # The cancellations below end calls with CANCELLED: not failures.
            self._stopping = True
            loop.call_soon(self._cancel)
            self._done.result(60)

    def _cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _main(self) -> None:
        channel = aio.insecure_channel(self.target)
        worker = worker_service_pb2_grpc.WorkerServiceStub(channel)
        kanban = kanban_service_pb2_grpc.KanbanServiceStub(channel)
        try:
            await channel.channel_ready()
            starts: list[tuple[Any, Any, int]] = [
                (self._poll, worker, n) for n in range(self.polls)
            ]
            starts += [(self._watch, kanban, n) for n in range(self.watches)]
            for i, (fn, stub, n) in enumerate(starts):
                self._tasks.append(asyncio.create_task(fn(stub, n)))
                if i % BATCH == BATCH - 1:
                    await asyncio.sleep(PACE_S)
            self._issued.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self._issued.set()
            await channel.close()

    async def _poll(self, stub: Any, n: int) -> None:
        request = wpb.ClaimTaskRequest(
            profile=self._profile, worker_id=f"held{n}", wait=duration_pb2.Duration(seconds=60)
        )
        self.active += 1
        try:
            while True:
                reply = await stub.ClaimTask(request, timeout=600, metadata=self._metadata)
                if reply.HasField("task"):
                    self.claimed += 1
                else:
                    self.reissued += 1
        except grpc.RpcError as exc:
            if not self._stopping:
                self.errors[f"ClaimTask {exc.code().name}"] += 1
        finally:
            self.active -= 1

    async def _watch(self, stub: Any, n: int) -> None:
        call = stub.WatchEvents(
            pb.WatchEventsRequest(since_event_id=self._since), timeout=600, metadata=self._metadata
        )
        self.active += 1
        try:
            async for _ in call:
                self.watchers_reached.add(n)
        except grpc.RpcError as exc:
            if not self._stopping:
                self.errors[f"WatchEvents {exc.code().name}"] += 1
        finally:
            self.active -= 1
            call.cancel()
