"""Process benchmarks, each beside the raw engine operation in the same run.

Scenarios (the manager runs in-process behind a real gRPC server; "ours" is
the RPC through the generated stub, "raw" the Docker SDK calls it wraps):

- RunProcess of ``true``, from the start message to the exit event, vs a raw
  ``exec_create`` + ``exec_start`` + ``exec_inspect`` (the exit code) of
  ``true`` (target: ours <= raw + 10 ms at the median);
- a stdin → output round trip on a running ``cat`` through one open
  RunProcess stream (target: p50 <= 5 ms), beside the same round trip on a
  raw exec's attached socket;
- RunProcess of ``true`` with a spare (an exec started ahead, see
  docs/sandbox-processes.md "Spares"), and StartProcess + ConnectProcess of
  ``true`` with a spare (how the E2B front door runs a command), each beside
  the same raw exec (target: below the raw exec at the median). Each sample
  waits, untimed, until the manager's spare is ready again.

The first two run on a manager with spares off (the normal exec path), the
spare rows on one with a spare per sandbox.

Samples are interleaved (raw, ours, raw, ours, ...) so engine load drifts hit
both sides alike. p99 is reported beside the medians.
"""

from __future__ import annotations

import contextlib
import math
import queue
import socket
import time
from collections.abc import Callable, Iterator

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
def _served(
    ctx: Context, *, spares: int
) -> Iterator[tuple[SandboxServiceStub, str, SandboxManager]]:
    client = create_client(pool_size=16)
    section = SandboxSection(
        default_image=ctx.sandbox_image(),
        reaper_enabled=False,
        stop_timeout_seconds=1,
        spare_processes_per_sandbox=spares,
    )
    manager = SandboxManager(client, section, deployment=ctx.deployment())
    servicer = SandboxServicer(manager, Reaper(manager, guard=StartupGuard()))
    try:
        with serve_in_process([grpc_service(servicer)], max_workers=8) as running:
            stub = SandboxServiceStub(running.channel())
            task = f"procs-spares-{spares}"
            request = sandbox_service_pb2.AcquireSandboxRequest(task_id=task, profile="bench")
            yield stub, stub.AcquireSandbox(request, timeout=T).sandbox.sandbox_id, manager
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


def _with_spare(
    ctx: Context,
    manager: SandboxManager,
    cid: str,
    name: str,
    ours: Callable[[], None],
) -> Result:
    """``ours`` (a start that takes a spare) beside the raw exec of ``true``, interleaved."""
    api = ctx.docker.api

    def raw() -> None:
        exec_id = api.exec_create(cid, ["true"])["Id"]
        api.exec_start(exec_id)
        if api.exec_inspect(exec_id)["ExitCode"] != 0:
            raise RuntimeError("true failed")

    def spare_ready() -> None:
        deadline = time.monotonic() + T
        while manager.processes.spares.count(cid) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("no spare was made again")
            time.sleep(0.002)

    ours_ms: list[float] = []
    raw_ms: list[float] = []
    taken_before = manager.metrics.snapshot().get("process_start.spare", 0)
    rounds = ctx.repeat(60)
    for i in range(3 + rounds):
        spare_ready()
        if i < 3:
            raw()
            ours()
            continue
        with stopwatch(raw_ms):
            raw()
        spare_ready()
        with stopwatch(ours_ms):
            ours()
    taken = manager.metrics.snapshot().get("process_start.spare", 0) - taken_before
    if taken != 3 + rounds:
        raise RuntimeError(f"{taken} of {3 + rounds} starts took a spare")
    ours_stats, raw_stats = Stats.from_samples(ours_ms), Stats.from_samples(raw_ms)
    return Result.from_stats(
        name,
        ours_stats,
        raw_stats,
        target="< raw exec",
        met=ours_stats.median < raw_stats.median,
        extra={
            "ratio_to_raw": round(ours_stats.median / raw_stats.median, 3),
            "ours_p99_ms": round(_p99(ours_ms), 3),
            "raw_p99_ms": round(_p99(raw_ms), 3),
        },
    )


def _spare_rows(
    ctx: Context, stub: SandboxServiceStub, cid: str, manager: SandboxManager
) -> list[Result]:
    config = process_pb2.ProcessConfig(argv=["true"])

    def run_process() -> None:
        session = _Session(stub, cid, config)
        session.half_close()
        if session.until_exit().exit_code != 0:
            raise RuntimeError("true failed")

    def start_connect() -> None:
        started = stub.StartProcess(
            process_pb2.StartProcessRequest(sandbox_id=cid, config=config), timeout=T
        ).process
        selector = process_pb2.ProcessSelector(process_id=started.process_id)
        request = process_pb2.ConnectProcessRequest(sandbox_id=cid, process=selector)
        for reply in stub.ConnectProcess(request, timeout=T):
            if reply.event.HasField("exit"):
                if reply.event.exit.exit_code != 0:
                    raise RuntimeError("true failed")
                return
        raise RuntimeError("ConnectProcess ended without an exit")

    return [
        _with_spare(
            ctx,
            manager,
            cid,
            "RunProcess true with a spare vs raw exec create+start+inspect",
            run_process,
        ),
        _with_spare(
            ctx,
            manager,
            cid,
            "StartProcess+ConnectProcess true with a spare vs raw exec create+start+inspect",
            start_connect,
        ),
    ]


def run(ctx: Context) -> list[Result]:
    """All process scenarios (see the module docstring)."""
    with _served(ctx, spares=0) as (stub, cid, _manager):
        results = [_time_to_exit(ctx, stub, cid), _round_trip(ctx, stub, cid)]
    with _served(ctx, spares=1) as (stub, cid, manager):
        results += _spare_rows(ctx, stub, cid, manager)
    return results
