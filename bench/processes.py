"""Process benchmarks, each beside the raw engine operation in the same run.

Scenarios (the manager runs in-process behind a real gRPC server; "ours" is
the RPC through the generated stub, "raw" the Docker SDK calls it wraps):

- RunProcess of ``true``, from the start message to the exit event, vs a raw
  ``exec_create`` + ``exec_start`` + ``exec_inspect`` (the exit code) of
  ``true`` (target: ours <= raw + 10 ms at the median);
- a stdin → output round trip on a running ``cat`` through one open
  RunProcess stream (target: p50 <= 5 ms), beside the same round trip on a
  raw exec's attached socket.

Samples are interleaved (raw, ours, raw, ours, ...) so engine load drifts hit
both sides alike. p99 is reported beside the medians.
"""

from __future__ import annotations

import contextlib
import math
import queue
import socket
from collections.abc import Iterator

from docker.utils.socket import next_frame_header, read_exactly
from longshore.sandbox.v1 import process_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from bench import Context, Result, Stats, stopwatch
from services.runtime.testing import serve_in_process
from services.sandbox.docker_client import create_client
from services.sandbox.manager import SandboxManager
from services.sandbox.reaper import Reaper, StartupGuard
from services.sandbox.server import SandboxServicer, grpc_service
from services.sandbox.settings import SandboxSection

T = 300
OVERHEAD_TARGET_MS = 10.0
ROUND_TRIP_TARGET_MS = 5.0


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(0.99 * len(ordered))) - 1]


@contextlib.contextmanager
def _served(ctx: Context) -> Iterator[tuple[SandboxServiceStub, str]]:
    client = create_client(pool_size=16)
    section = SandboxSection(
        default_image=ctx.sandbox_image(), reaper_enabled=False, stop_timeout_seconds=1
    )
    manager = SandboxManager(client, section, deployment=ctx.deployment())
    servicer = SandboxServicer(manager, Reaper(manager, guard=StartupGuard()))
    try:
        with serve_in_process([grpc_service(servicer)], max_workers=8) as running:
            stub = SandboxServiceStub(running.channel())
            request = sandbox_service_pb2.AcquireSandboxRequest(task_id="procs", profile="bench")
            yield stub, stub.AcquireSandbox(request, timeout=T).sandbox.sandbox_id
    finally:
        manager.close(15)
        client.close()


class _Session:
    """One RunProcess call driven from this thread: requests in a queue, events read on demand."""

    def __init__(self, stub: SandboxServiceStub, cid: str, config: process_pb2.ProcessConfig):
        self._requests: queue.Queue[process_pb2.RunProcessRequest | None] = queue.Queue()
        start = process_pb2.RunProcessStart(sandbox_id=cid, config=config)
        self._requests.put(process_pb2.RunProcessRequest(start=start))
        self.events = stub.RunProcess(iter(self._requests.get, None), timeout=T)

    def send(self, request: process_pb2.RunProcessRequest) -> None:
        self._requests.put(request)

    def half_close(self) -> None:
        self._requests.put(None)

    def until_exit(self) -> process_pb2.ProcessExit:
        for reply in self.events:
            if reply.event.HasField("exit"):
                return reply.event.exit
        raise RuntimeError("RunProcess ended without an exit")

    def close(self) -> None:
        self.half_close()
        self.events.cancel()


def _time_to_exit(ctx: Context, stub: SandboxServiceStub, cid: str) -> Result:
    api = ctx.docker.api
    config = process_pb2.ProcessConfig(argv=["true"])

    def ours() -> None:
        session = _Session(stub, cid, config)
        session.half_close()  # no input
        if session.until_exit().exit_code != 0:
            raise RuntimeError("true failed")

    def raw() -> None:
        exec_id = api.exec_create(cid, ["true"])["Id"]
        api.exec_start(exec_id)
        if api.exec_inspect(exec_id)["ExitCode"] != 0:
            raise RuntimeError("true failed")

    ours_ms: list[float] = []
    raw_ms: list[float] = []
    for i in range(3 + ctx.repeat(60)):
        for fn, samples in ((raw, raw_ms), (ours, ours_ms)):
            if i < 3:
                fn()
                continue
            with stopwatch(samples):
                fn()
    ours_stats, raw_stats = Stats.from_samples(ours_ms), Stats.from_samples(raw_ms)
    overhead = ours_stats.median - raw_stats.median
    return Result.from_stats(
        "RunProcess true, start to exit (gRPC) vs raw exec create+start+inspect",
        ours_stats,
        raw_stats,
        target=f"<= raw + {OVERHEAD_TARGET_MS:g} ms",
        met=overhead <= OVERHEAD_TARGET_MS,
        extra={
            "overhead_ms": round(overhead, 3),
            "ours_p99_ms": round(_p99(ours_ms), 3),
            "raw_p99_ms": round(_p99(raw_ms), 3),
        },
    )


def _round_trip(ctx: Context, stub: SandboxServiceStub, cid: str) -> Result:
    api = ctx.docker.api
    session = _Session(stub, cid, process_pb2.ProcessConfig(argv=["cat"], stdin=True))
    replies = iter(session.events)

    def ours(data: bytes) -> None:
        session.send(process_pb2.RunProcessRequest(stdin=data))
        got = b""
        while len(got) < len(data):
            event = next(replies).event
            if event.HasField("exit"):
                raise RuntimeError("cat exited")
            got += event.output.chunk.data

    exec_id = api.exec_create(cid, ["cat"], stdin=True)["Id"]
    raw_socket = api.exec_start(exec_id, socket=True)
    sock: socket.socket = raw_socket._sock

    def raw(data: bytes) -> None:
        sock.sendall(data)
        got = 0
        while got < len(data):
            _, size = next_frame_header(raw_socket)
            got += len(read_exactly(raw_socket, size))

    ours_ms: list[float] = []
    raw_ms: list[float] = []
    try:
        # The first event is `started`: consume it before timing.
        next(replies)
        for i in range(5 + ctx.repeat(200)):
            data = f"ping {i}\n".encode()
            for fn, samples in ((raw, raw_ms), (ours, ours_ms)):
                if i < 5:
                    fn(data)
                    continue
                with stopwatch(samples):
                    fn(data)
    finally:
        session.close()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        raw_socket.close()
    ours_stats, raw_stats = Stats.from_samples(ours_ms), Stats.from_samples(raw_ms)
    return Result.from_stats(
        "stdin -> output round trip on a running cat (RunProcess) vs raw exec socket",
        ours_stats,
        raw_stats,
        target=f"p50 <= {ROUND_TRIP_TARGET_MS:g} ms",
        max_ms=ROUND_TRIP_TARGET_MS,
        extra={
            "overhead_ms": round(ours_stats.median - raw_stats.median, 3),
            "ours_p99_ms": round(_p99(ours_ms), 3),
            "raw_p99_ms": round(_p99(raw_ms), 3),
        },
    )


def run(ctx: Context) -> list[Result]:
    """All process scenarios (see the module docstring)."""
    with _served(ctx) as (stub, cid):
        return [_time_to_exit(ctx, stub, cid), _round_trip(ctx, stub, cid)]
