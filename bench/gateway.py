"""Gateway benchmarks, with sandbox, kanban and gateway as real processes.

- added latency: GetTask through the gateway vs directly on the kanban
  service (target: <= 1 ms added at p50);
- forwarded requests per second with 16 concurrent clients, next to the same
  load sent straight to the kanban service (target: >= 1,500/s); and the
  same against a trivial kanban-shaped backend process (``python -m
  bench.gateway echo ADDR``), which isolates the gateway's own cost;
- end to end: 200 tasks running `true` over 4 sandbox profiles, created
  through the gateway and run by the dispatcher, time per task next to the
  raw Docker cost of one task (create + exec + remove; target <= 1.5x).

``--quick`` cuts samples and the task count (40 tasks).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import kanban_service_pb2_grpc, profile_pb2, task_pb2
from longshore.sandbox.v1 import sandbox_pb2

from bench import Context, Result, Stats, measure
from bench.latency import interleaved
from services.gateway.auth import key_entry, new_key

CLIENTS = 16
PROFILES = 4
PER_PROFILE_CAP = 3


@dataclass
class Stack:
    gateway: str
    kanban: str
    token: str
    key: str


def _start(ctx: Context, home: Path) -> Stack:
    token = uuid.uuid4().hex
    key = new_key()
    ports = {n: f"127.0.0.1:{ctx.free_port()}" for n in ("sandbox", "kanban", "gateway")}
    common = {
        "LONGSHORE_HOME": str(home),
        "LONGSHORE_DEPLOYMENT": ctx.deployment(),
        "LONGSHORE_INTERNAL_TOKEN": token,
        "LONGSHORE_LOG_LEVEL": "WARNING",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
        "LONGSHORE_SANDBOX_ADDR": ports["sandbox"],
        "LONGSHORE_KANBAN_ADDR": ports["kanban"],
    }
    ctx.service(
        ["python", "-m", "services.sandbox"],
        env={
            **common,
            "LONGSHORE_SANDBOX_LISTEN": ports["sandbox"],
            "LONGSHORE_SANDBOX_DEFAULT_IMAGE": ctx.sandbox_image(),
        },
        health_addr=ports["sandbox"],
        name="bench-gw-sandbox",
        timeout=60,
    )
    ctx.service(
        ["python", "-m", "services.kanban"],
        env={
            **common,
            "LONGSHORE_KANBAN_LISTEN": ports["kanban"],
            "LONGSHORE_KANBAN_DISPATCH_INTERVAL_SECONDS": "0.2",
        },
        health_addr=ports["kanban"],
        name="bench-gw-kanban",
        timeout=60,
    )
    ctx.service(
        ["python", "-m", "services.gateway"],
        env={
            **common,
            "LONGSHORE_GATEWAY_LISTEN": ports["gateway"],
            "LONGSHORE_GATEWAY_API_KEYS": key_entry("bench", ["admin"], key),
            "LONGSHORE_GATEWAY_RATE_LIMIT_RPS": "0",
        },
        health_addr=ports["gateway"],
        name="bench-gw-gateway",
        timeout=60,
    )
    return Stack(ports["gateway"], ports["kanban"], token, key)


def _added_latency(ctx: Context, stack: Stack, task_id: str) -> Result:
    request = pb.GetTaskRequest(task_id=task_id)
    auth = (("authorization", f"Bearer {stack.key}"),)
    internal = (("longshore-internal-token", stack.token),)
    with grpc.insecure_channel(stack.gateway) as gw, grpc.insecure_channel(stack.kanban) as kb:
        via = kanban_service_pb2_grpc.KanbanServiceStub(gw)
        direct = kanban_service_pb2_grpc.KanbanServiceStub(kb)
        raw, ours = interleaved(
            lambda: direct.GetTask(request, timeout=5, metadata=internal),
            lambda: via.GetTask(request, timeout=5, metadata=auth),
            chunks=ctx.repeat(10),
        )
    added = ours.median - raw.median
    return Result.from_stats(
        "GetTask via gateway vs direct (added p50)",
        ours,
        raw,
        target="<= +1 ms p50",
        met=added <= 1.0,
        extra={"added_ms": round(added, 3), "note": "median of 50-call medians"},
    )


def _throughput(call: Callable[[], object], seconds: float) -> tuple[float, Stats]:
    stop = threading.Event()
    counts = [0] * CLIENTS
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]

    def client(i: int) -> None:
        while not stop.is_set():
            start = time.perf_counter_ns()
            call()
            latencies[i].append((time.perf_counter_ns() - start) / 1e6)
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return sum(counts) / elapsed, Stats.from_samples([x for xs in latencies for x in xs])


def _rps(ctx: Context, stack: Stack, task_id: str) -> Result:
    request = pb.GetTaskRequest(task_id=task_id)
    auth = (("authorization", f"Bearer {stack.key}"),)
    internal = (("longshore-internal-token", stack.token),)
    seconds = 2.0 if ctx.quick else 6.0
    with grpc.insecure_channel(stack.gateway) as gw, grpc.insecure_channel(stack.kanban) as kb:
        via = kanban_service_pb2_grpc.KanbanServiceStub(gw)
        direct = kanban_service_pb2_grpc.KanbanServiceStub(kb)
        raw_rps, raw = _throughput(
            lambda: direct.GetTask(request, timeout=10, metadata=internal), seconds
        )
        ours_rps, ours = _throughput(
            lambda: via.GetTask(request, timeout=10, metadata=auth), seconds
        )
    return Result(
        scenario=f"forwarded GetTask, {CLIENTS} clients (ms = per-call p50)",
        ours_ms=ours.median,
        raw_ms=raw.median,
        target=">= 1500 req/s",
        met=ours_rps >= 1500,
        samples=ours.n,
        extra={"rps": round(ours_rps, 1), "direct_rps": round(raw_rps, 1)},
    )


class _EchoKanban(kanban_service_pb2_grpc.KanbanServiceServicer):
    """GetTask answers a constant task: a backend that costs (almost) nothing."""

    async def GetTask(  # type: ignore[override]
        self, request: pb.GetTaskRequest, context: object
    ) -> pb.GetTaskResponse:
        return pb.GetTaskResponse(task=task_pb2.Task(task_id=request.task_id, title="echo"))


def _serve_echo(listen: str, token: str) -> None:
    from services.runtime.aio_serving import AioService, build_aio_server

    servicer = _EchoKanban()
    server = build_aio_server(
        [
            AioService(
                "longshore.kanban.v1.KanbanService",
                lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(servicer, s),
            )
        ],
        listen=listen,
        internal_token=token,
    )
    server.serve_until_signal(grace=0)


def _echo_rps(ctx: Context, token: str) -> Result:
    """The gateway's forwarding capacity with a backend that does no work."""
    echo = f"127.0.0.1:{ctx.free_port()}"
    gateway = f"127.0.0.1:{ctx.free_port()}"
    key = new_key()
    ctx.service(
        ["python", "-m", "bench.gateway", "echo", echo],
        env={"LONGSHORE_INTERNAL_TOKEN": token, "LONGSHORE_LOG_LEVEL": "WARNING"},
        health_addr=echo,
        name="bench-gw-echo",
    )
    ctx.service(
        ["python", "-m", "services.gateway"],
        env={
            "LONGSHORE_INTERNAL_TOKEN": token,
            "LONGSHORE_LOG_LEVEL": "WARNING",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
            "LONGSHORE_GATEWAY_LISTEN": gateway,
            "LONGSHORE_KANBAN_ADDR": echo,
            "LONGSHORE_GATEWAY_API_KEYS": key_entry("bench", ["admin"], key),
            "LONGSHORE_GATEWAY_RATE_LIMIT_RPS": "0",
        },
        health_addr=gateway,
        name="bench-gw-gateway-echo",
    )
    request = pb.GetTaskRequest(task_id="t-echo")
    auth = (("authorization", f"Bearer {key}"),)
    internal = (("longshore-internal-token", token),)
    seconds = 2.0 if ctx.quick else 6.0
    with grpc.insecure_channel(gateway) as gw, grpc.insecure_channel(echo) as kb:
        via = kanban_service_pb2_grpc.KanbanServiceStub(gw)
        direct = kanban_service_pb2_grpc.KanbanServiceStub(kb)
        raw_lat = measure(lambda: direct.GetTask(request, timeout=5, metadata=internal), 300, 20)
        ours_lat = measure(lambda: via.GetTask(request, timeout=5, metadata=auth), 300, 20)
        raw_rps, _ = _throughput(
            lambda: direct.GetTask(request, timeout=10, metadata=internal), seconds
        )
        ours_rps, _ = _throughput(lambda: via.GetTask(request, timeout=10, metadata=auth), seconds)
    return Result.from_stats(
        f"echo backend: GetTask via gateway vs direct; {CLIENTS}-client rps in extra",
        ours_lat,
        raw_lat,
        target="<= +1 ms p50; >= 1500 req/s",
        met=ours_lat.median - raw_lat.median <= 1.0 and ours_rps >= 1500,
        extra={
            "added_ms": round(ours_lat.median - raw_lat.median, 3),
            "rps": round(ours_rps, 1),
            "direct_rps": round(raw_rps, 1),
        },
    )


def _raw_docker_task(ctx: Context) -> Stats:
    client = ctx.docker
    image = ctx.sandbox_image()

    def one() -> None:
        container = client.containers.run(image, detach=True, labels=ctx.labels, init=True)
        container.exec_run(["true"])
        container.remove(force=True)

    return measure(one, repeat=ctx.repeat(15), warmup=1)


def _end_to_end(ctx: Context, stack: Stack) -> Result:
    n = 40 if ctx.quick else 200
    auth = (("authorization", f"Bearer {stack.key}"),)
    image = ctx.sandbox_image()
    with grpc.insecure_channel(stack.gateway) as gw:
        kanban = kanban_service_pb2_grpc.KanbanServiceStub(gw)
        board = f"e2e-{uuid.uuid4().hex[:8]}"
        kanban.CreateBoard(pb.CreateBoardRequest(board=_board(board)), timeout=10, metadata=auth)
        names = [f"bench-p{i}-{board}" for i in range(PROFILES)]
        for name in names:
            kanban.CreateProfile(
                pb.CreateProfileRequest(
                    profile=profile_pb2.Profile(
                        name=name,
                        executor=profile_pb2.EXECUTOR_SANDBOX,
                        sandbox_spec=sandbox_pb2.SandboxSpec(image=image),
                        max_in_progress=PER_PROFILE_CAP,
                    )
                ),
                timeout=10,
                metadata=auth,
            )
        started = time.perf_counter()
        for i in range(n):
            kanban.CreateTask(
                pb.CreateTaskRequest(
                    task=task_pb2.Task(
                        board_id=board,
                        title=f"t{i}",
                        assignee=names[i % PROFILES],
                        command=["true"],
                    )
                ),
                timeout=10,
                metadata=auth,
            )
        done: list[Any] = []
        deadline = time.monotonic() + 60 + n * 2
        while time.monotonic() < deadline:
            done = _list(kanban, board, auth, task_pb2.TASK_STATUS_DONE)
            if len(done) >= n:
                break
            time.sleep(0.25)
        wall = time.perf_counter() - started
    per_task = [(t.update_time.ToNanoseconds() - t.create_time.ToNanoseconds()) / 1e6 for t in done]
    raw = _raw_docker_task(ctx)
    ours_per_task = wall * 1000 / n
    latency = Stats.from_samples(per_task) if per_task else None
    return Result(
        scenario=f"{n} tasks `true` over {PROFILES} profiles: wall time per task",
        ours_ms=ours_per_task,
        raw_ms=raw.median,
        target="<= 1.5x raw docker create+exec+rm",
        met=len(done) >= n and ours_per_task <= 1.5 * raw.median,
        samples=len(done),
        extra={
            "tasks_done": len(done),
            "wall_s": round(wall, 2),
            "tasks_per_s": round(len(done) / wall, 2),
            "task_latency_p50_ms": None if latency is None else round(latency.median, 1),
            "task_latency_p90_ms": None if latency is None else round(latency.p90, 1),
            "concurrency": PROFILES * PER_PROFILE_CAP,
        },
    )


def _board(board_id: str) -> Any:
    from longshore.kanban.v1 import board_pb2

    return board_pb2.Board(board_id=board_id, display_name=board_id)


def _list(
    kanban: kanban_service_pb2_grpc.KanbanServiceStub,
    board: str,
    auth: tuple[tuple[str, str], ...],
    status: int,
) -> list[Any]:
    out: list[Any] = []
    request = pb.ListTasksRequest(board_id=board, statuses=[status], page_size=1000)
    while True:
        reply = kanban.ListTasks(request, timeout=10, metadata=auth)
        out.extend(reply.tasks)
        if not reply.next_page_token:
            return out
        request.page_token = reply.next_page_token


def run(ctx: Context) -> list[Result]:
    """All gateway scenarios (see the module docstring)."""
    home = ctx.temp_dir("longshore-bench-gw-")
    stack = _start(ctx, home)
    auth = (("authorization", f"Bearer {stack.key}"),)
    with grpc.insecure_channel(stack.gateway) as gw:
        task = (
            kanban_service_pb2_grpc.KanbanServiceStub(gw)
            .CreateTask(
                pb.CreateTaskRequest(
                    task=task_pb2.Task(title="bench", status=task_pb2.TASK_STATUS_TRIAGE)
                ),
                timeout=10,
                metadata=auth,
            )
            .task
        )
    return [
        _added_latency(ctx, stack, task.task_id),
        _rps(ctx, stack, task.task_id),
        _echo_rps(ctx, stack.token),
        _end_to_end(ctx, stack),
    ]


if __name__ == "__main__":
    # `python -m bench.gateway echo HOST:PORT`: the trivial backend (token from env).
    import os

    if len(sys.argv) == 3 and sys.argv[1] == "echo":
        _serve_echo(sys.argv[2], os.environ["LONGSHORE_INTERNAL_TOKEN"])
    else:
        sys.stderr.write("usage: python -m bench.gateway echo HOST:PORT\n")
        sys.exit(2)
