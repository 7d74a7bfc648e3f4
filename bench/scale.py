"""Scale benchmarks of issue 12 (first step: the gateway on ``grpc.aio``).

Both scenarios put the gateway (a real process) in front of a no-work
backend process on ``grpc.aio`` (``python -m bench.scale backend ADDR``), so
the figures are the gateway's own cost, not kanban's:

- forwarded unary: ``GetTask`` through the gateway vs straight to the backend
  in the same run: added p50 (target <= 0.3 ms) and calls/s with 16 client
  threads (target >= 2,000/s and >= 0.6x the direct rate);
- held calls: idle ``ClaimTask`` long polls (10,000; 1,000 with ``--quick``)
  and 1,000 ``WatchEvents`` streams held open through one gateway; meanwhile
  ``GetTask`` through the gateway p99 vs its idle p99 (target <= 2x, no call
  times out) and the gateway's memory per held call (target <= 50 KB, for
  gateway + kanban in the issue; here the gateway alone, kanban still serves
  on the sync server with one thread per held call).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import (
    kanban_service_pb2_grpc,
    task_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

from bench import Context, Result, Stats, measure, stopwatch
from bench.gateway import CLIENTS, _throughput
from services.gateway.auth import key_entry, new_key

WATCHES = 1000
TOKEN_ENV = "LONGSHORE_INTERNAL_TOKEN"


class _Held:
    """How many calls the no-work backend holds right now (GetTask reports it)."""

    count = 0


class _NoWorkKanban(kanban_service_pb2_grpc.KanbanServiceServicer):
    """GetTask answers at once (its title is the held-call count); WatchEvents never sends."""

    async def GetTask(self, request: pb.GetTaskRequest, context: Any) -> pb.GetTaskResponse:
        return pb.GetTaskResponse(
            task=task_pb2.Task(task_id=request.task_id, title=str(_Held.count))
        )

    async def WatchEvents(  # type: ignore[override]
        self, request: pb.WatchEventsRequest, context: Any
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        _Held.count += 1
        try:
            await asyncio.Event().wait()  # until the caller cancels
        finally:
            _Held.count -= 1
        yield pb.WatchEventsResponse()


class _NoWorkWorker(worker_service_pb2_grpc.WorkerServiceServicer):
    """ClaimTask holds until the caller cancels: an idle long poll."""

    async def ClaimTask(
        self, request: worker_service_pb2.ClaimTaskRequest, context: Any
    ) -> worker_service_pb2.ClaimTaskResponse:
        _Held.count += 1
        try:
            await asyncio.Event().wait()
        finally:
            _Held.count -= 1
        return worker_service_pb2.ClaimTaskResponse()


def _serve_backend(listen: str, token: str) -> None:
    from services.runtime.aio_serving import AioService, build_aio_server

    kanban, worker = _NoWorkKanban(), _NoWorkWorker()
    server = build_aio_server(
        [
            AioService(
                "longshore.kanban.v1.KanbanService",
                lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(kanban, s),
            ),
            AioService(
                "longshore.kanban.v1.WorkerService",
                lambda s: worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(worker, s),
            ),
        ],
        listen=listen,
        internal_token=token,
    )
    server.serve_until_signal(grace=0)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _timed(fn: Callable[[], object], n: int) -> list[float]:
    """Milliseconds of each of ``n`` calls of ``fn`` (after 20 untimed ones)."""
    for _ in range(20):
        fn()
    samples: list[float] = []
    for _ in range(n):
        with stopwatch(samples):
            fn()
    return samples


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _start(ctx: Context) -> tuple[str, str, str, str, int]:
    """Starts the backend and a gateway in front of it; returns addresses, key, token, pid."""
    token = new_key()
    key = new_key()
    backend = f"127.0.0.1:{ctx.free_port()}"
    gateway = f"127.0.0.1:{ctx.free_port()}"
    ctx.service(
        ["python", "-m", "bench.scale", "backend", backend],
        env={TOKEN_ENV: token, "LONGSHORE_LOG_LEVEL": "WARNING"},
        health_addr=backend,
        name="bench-scale-backend",
    )
    proc = ctx.service(
        ["python", "-m", "services.gateway"],
        env={
            TOKEN_ENV: token,
            "LONGSHORE_LOG_LEVEL": "WARNING",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
            "LONGSHORE_GATEWAY_LISTEN": gateway,
            "LONGSHORE_KANBAN_ADDR": backend,
            "LONGSHORE_GATEWAY_API_KEYS": key_entry("bench", ["admin"], key),
            "LONGSHORE_GATEWAY_RATE_LIMIT_RPS": "0",
        },
        health_addr=gateway,
        name="bench-scale-gateway",
    )
    return gateway, backend, key, token, proc.pid


def _forwarded_unary(ctx: Context, gateway: str, backend: str, key: str, token: str) -> Result:
    request = pb.GetTaskRequest(task_id="t-echo")
    auth = (("authorization", f"Bearer {key}"),)
    internal = (("longshore-internal-token", token),)
    seconds = 2.0 if ctx.quick else 6.0
    with grpc.insecure_channel(gateway) as gw, grpc.insecure_channel(backend) as kb:
        via = kanban_service_pb2_grpc.KanbanServiceStub(gw)
        direct = kanban_service_pb2_grpc.KanbanServiceStub(kb)
        # Interleaved chunks, so machine noise hits both alike.
        raw_samples: list[float] = []
        ours_samples: list[float] = []
        for _ in range(ctx.repeat(10)):
            raw_samples.append(
                measure(lambda: direct.GetTask(request, timeout=5, metadata=internal), 50, 5).median
            )
            ours_samples.append(
                measure(lambda: via.GetTask(request, timeout=5, metadata=auth), 50, 5).median
            )
        raw_rps, _ = _throughput(
            lambda: direct.GetTask(request, timeout=10, metadata=internal), seconds
        )
        ours_rps, _ = _throughput(lambda: via.GetTask(request, timeout=10, metadata=auth), seconds)
    raw, ours = Stats.from_samples(raw_samples), Stats.from_samples(ours_samples)
    added = ours.median - raw.median
    return Result.from_stats(
        f"forwarded unary, no-work backend: added p50; {CLIENTS}-client calls/s in extra",
        ours,
        raw,
        target="<= +0.3 ms p50; >= 2000/s and >= 0.6x direct",
        met=added <= 0.3 and ours_rps >= 2000 and ours_rps >= 0.6 * raw_rps,
        extra={
            "added_ms": round(added, 3),
            "rps": round(ours_rps, 1),
            "direct_rps": round(raw_rps, 1),
            "rps_ratio": round(ours_rps / raw_rps, 2) if raw_rps else None,
            "previous": "+0.78 ms p50, 823 req/s (sync gateway, 2026-11-20)",
        },
    )


def _held_calls(ctx: Context, gateway: str, backend: str, key: str, token: str, pid: int) -> Result:
    polls = 1000 if ctx.quick else 10000
    request = pb.GetTaskRequest(task_id="t-echo")
    auth = (("authorization", f"Bearer {key}"),)
    internal = (("longshore-internal-token", token),)
    with (
        grpc.insecure_channel(gateway) as held_channel,
        grpc.insecure_channel(gateway) as gw,
        grpc.insecure_channel(backend) as kb,
    ):
        via = kanban_service_pb2_grpc.KanbanServiceStub(gw)
        direct = kanban_service_pb2_grpc.KanbanServiceStub(kb)
        samples = ctx.repeat(300)
        idle = _timed(lambda: via.GetTask(request, timeout=10, metadata=auth), samples)
        rss_before = _rss_kib(pid)
        worker = worker_service_pb2_grpc.WorkerServiceStub(held_channel)
        watcher = kanban_service_pb2_grpc.KanbanServiceStub(held_channel)
        claim = worker_service_pb2.ClaimTaskRequest(profile="idle", worker_id="w")
        calls: list[Any] = [
            worker.ClaimTask.future(claim, timeout=600, metadata=auth) for _ in range(polls)
        ]
        calls += [
            watcher.WatchEvents(pb.WatchEventsRequest(), timeout=600, metadata=auth)
            for _ in range(WATCHES)
        ]
        try:
            deadline = time.monotonic() + 300
            held = 0
            while time.monotonic() < deadline:
                held = int(direct.GetTask(request, timeout=10, metadata=internal).task.title)
                if held >= polls + WATCHES:
                    break
                time.sleep(0.5)
            rss_held = _rss_kib(pid)
            busy = _timed(lambda: via.GetTask(request, timeout=10, metadata=auth), samples)
        finally:
            for call in calls:
                call.cancel()
    per_call_kib = (rss_held - rss_before) / max(1, held)
    idle_p99, busy_p99 = _p99(idle), _p99(busy)
    return Result.from_stats(
        f"GetTask via gateway with {polls} ClaimTask polls + {WATCHES} WatchEvents held "
        "(raw = idle)",
        Stats.from_samples(busy),
        Stats.from_samples(idle),
        target="p99 <= 2x idle p99; <= 50 KB per held call; all held",
        met=busy_p99 <= 2 * idle_p99 and per_call_kib <= 50 and held >= polls + WATCHES,
        extra={
            "held_at_backend": held,
            "idle_p99_ms": round(idle_p99, 3),
            "busy_p99_ms": round(busy_p99, 3),
            "gateway_rss_kib_before": rss_before,
            "gateway_rss_kib_held": rss_held,
            "gateway_kib_per_held_call": round(per_call_kib, 1),
        },
    )


def run(ctx: Context) -> list[Result]:
    """Both scenarios (see the module docstring)."""
    gateway, backend, key, token, pid = _start(ctx)
    return [
        _forwarded_unary(ctx, gateway, backend, key, token),
        _held_calls(ctx, gateway, backend, key, token, pid),
    ]


if __name__ == "__main__":
    # `python -m bench.scale backend HOST:PORT`: the no-work aio backend (token from env).
    import os

    if len(sys.argv) == 3 and sys.argv[1] == "backend":
        _serve_backend(sys.argv[2], os.environ[TOKEN_ENV])
    else:
        sys.stderr.write("usage: python -m bench.scale backend HOST:PORT\n")
        sys.exit(2)
