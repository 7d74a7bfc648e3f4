"""Keeps the runs of E2B sandboxes alive until their E2B timeout.

An E2B client never heartbeats: it sets a timeout and expects the sandbox to
live that long. Kanban reclaims a run whose lease is not renewed, so the
front door heartbeats each run it created, with its creator's key, until the
timeout; then it completes the task (the sandbox's own lease removes the
container at the same moment). The latest sandbox token is kept too, so an
envd call by the same key costs no extra round trip.

What is kept lives in memory: after a restart of the front door, a run is
renewed again at the next call that names it (one heartbeat), and a run
nobody calls is reclaimed by kanban at its lease, as any lost worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc import aio
from longshore.kanban.v1 import worker_service_pb2 as wpb

from services.e2b.gateway import Caller, Gateway
from services.runtime.errors import ResourceExhausted

log = logging.getLogger(__name__)

#: Most runs one front door keeps (each is a few hundred bytes).
MAX_KEPT = 10_000
#: Longest sleep of the loop between checks, in seconds.
MAX_NAP = 5.0


@dataclass
class Kept:
    """One kept run."""

    api_key: str
    token: str
    end: float
    next_beat: float


class Keeper:
    """Heartbeats kept runs and completes them at their end.

    Args:
        gateway: The gateway client.
        clock: Unix time in seconds, injectable for tests.
    """

    def __init__(self, gateway: Gateway, *, clock: Callable[[], float] = time.time) -> None:
        self._gw = gateway
        self._clock = clock
        self._kept: dict[str, Kept] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._kept)

    def check_room(self) -> None:
        """Refuses a create before it makes anything once :data:`MAX_KEPT` runs are kept.

        Asked before the create's first write, so a full front door leaves
        no run or sandbox behind; :meth:`keep` then never refuses, and the
        creates in flight meanwhile (bounded by the listener's connections)
        are all the table can exceed it by.

        Raises:
            ResourceExhausted: :data:`MAX_KEPT` runs are kept already.
        """
        if len(self._kept) >= MAX_KEPT:
            raise ResourceExhausted(f"the front door keeps {MAX_KEPT} sandboxes already")

    def keep(
        self, run_id: str, *, api_key: str, token: str, lease_expire: float, end: float
    ) -> None:
        """Starts keeping ``run_id`` until ``end`` (Unix seconds); see :meth:`check_room`."""
        self._kept[run_id] = Kept(api_key, token, end, self._beat_time(lease_expire))
        self._start()
        self._wake.set()

    def extend(self, run_id: str, end: float) -> None:
        """Moves the end of a kept run (set_timeout, connect)."""
        kept = self._kept.get(run_id)
        if kept is not None:
            kept.end = end
            self._wake.set()

    def drop(self, run_id: str) -> None:
        """Stops keeping ``run_id`` (killed)."""
        self._kept.pop(run_id, None)

    def token_for(self, run_id: str, api_key: str) -> str:
        """The kept sandbox token of ``run_id`` if ``api_key`` created it, else ""."""
        kept = self._kept.get(run_id)
        if kept is None or not hmac.compare_digest(kept.api_key, api_key):
            return ""
        return kept.token

    def _beat_time(self, lease_expire: float) -> float:
        # A third of the remaining lease: two beats may fail before it lapses.
        now = self._clock()
        return now + max(1.0, (lease_expire - now) / 3)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="e2b-keeper")

    async def close(self) -> None:
        """Stops the loop (the runs are left to their leases)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self._kept:
            await self.tick()
            now = self._clock()
            due = min((min(k.next_beat, k.end) for k in self._kept.values()), default=now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, min(MAX_NAP, due - now)))

    async def tick(self) -> None:
        """Beats or completes every run that is due (one pass)."""
        now = self._clock()
        for run_id, kept in list(self._kept.items()):
            if now >= kept.end:
                self._kept.pop(run_id, None)
                await self._complete(run_id, kept)
            elif now >= kept.next_beat:
                await self._beat(run_id, kept)

    async def _beat(self, run_id: str, kept: Kept) -> None:
        try:
            beat = await self._gw.worker.Heartbeat(
                wpb.HeartbeatRequest(run_id=run_id), metadata=Caller(kept.api_key).metadata()
            )
        except aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                kept.next_beat = self._clock() + 1.0  # the gateway is away: retry soon
                return
            # The run ended (killed elsewhere, cancelled by an operator): let go.
            log.info("e2b run no longer kept", extra={"run_id": run_id, "code": exc.code().name})
            self._kept.pop(run_id, None)
            return
        kept.token = beat.sandbox_token
        kept.next_beat = self._beat_time(beat.lease_expire_time.ToNanoseconds() / 1e9)

    async def _complete(self, run_id: str, kept: Kept) -> None:
        try:
            await self._gw.worker.CompleteTask(
                wpb.CompleteTaskRequest(run_id=run_id, summary="E2B timeout reached"),
                metadata=Caller(kept.api_key).metadata(),
            )
        except aio.AioRpcError as exc:
            log.info(
                "e2b run ended before its timeout",
                extra={"run_id": run_id, "code": exc.code().name},
            )
