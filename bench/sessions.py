"""Shell session benchmarks through the gateway, beside a raw ``docker exec`` in the same run.

Sandbox, kanban and gateway run as real processes (``ctx.service``); every
session call goes client → gateway → sandbox manager → the session's shell.

- ``true`` in a session: per-command latency, p50 and p99 (targets: p50 <=
  5 ms, p99 <= 20 ms), next to a raw Docker SDK ``exec_run(["true"])`` on the
  same sandbox (create + start + output);
- commands per second, one after another in one session (target: >= 200/s),
  next to raw execs per second;
- first output byte of ``echo x``: from the call to the first output message
  (target: <= 5 ms), next to a raw exec's first streamed frame;
- where the time goes (reported): ``true`` through the sessions domain API of
  an in-process manager, no gRPC at all, next to a bare gRPC unary call
  (ListSessions) through the gateway in the same run.

Samples of the two sides are interleaved in chunks (raw, ours, raw, ...), so
engine load drifts hit both alike. ``--quick`` cuts the samples.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable

import grpc
from longshore.sandbox.v1 import sandbox_service_pb2, session_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from bench import Context, Result, Stats
from services.gateway.auth import key_entry, new_key
from services.sandbox.docker_client import create_client
from services.sandbox.manager import SandboxManager
from services.sandbox.model import OutputChunk, Spec
from services.sandbox.sessions import SessionCommand, SessionExit
from services.sandbox.settings import SandboxSection

T = 60
Auth = tuple[tuple[str, str], ...]


def _start(ctx: Context) -> tuple[str, str]:
    """Sandbox, kanban and gateway processes; returns (gateway address, admin key)."""
    home = ctx.temp_dir("longshore-bench-sessions-")
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
    services = {
        "sandbox": {
            "LONGSHORE_SANDBOX_LISTEN": ports["sandbox"],
            "LONGSHORE_SANDBOX_DEFAULT_IMAGE": ctx.sandbox_image(),
        },
        "kanban": {"LONGSHORE_KANBAN_LISTEN": ports["kanban"]},
        "gateway": {
            "LONGSHORE_GATEWAY_LISTEN": ports["gateway"],
            "LONGSHORE_GATEWAY_API_KEYS": key_entry("bench", ["admin"], key),
            "LONGSHORE_GATEWAY_RATE_LIMIT_RPS": "0",
        },
    }
    for name, env in services.items():
        ctx.service(
            ["python", "-m", f"services.{name}"],
            env={**common, **env},
            health_addr=ports[name],
            name=f"bench-sessions-{name}",
            timeout=60,
        )
    return ports["gateway"], key


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(0.99 * len(ordered))) - 1]


def _interleaved(
    raw: Callable[[], object], ours: Callable[[], object], *, chunks: int, raw_n: int, ours_n: int
) -> tuple[list[float], list[float]]:
    """Samples (ms) of both, in alternating chunks after a warm-up of each."""
    raw_ms: list[float] = []
    ours_ms: list[float] = []
    for fn in (raw, ours, ours, ours):
        fn()
    for _ in range(chunks):
        for fn, n, out in ((raw, raw_n, raw_ms), (ours, ours_n, ours_ms)):
            for _ in range(n):
                start = time.perf_counter_ns()
                fn()
                out.append((time.perf_counter_ns() - start) / 1e6)
    return raw_ms, ours_ms


def run(ctx: Context) -> list[Result]:
    """All session scenarios (see the module docstring)."""
    gateway, key = _start(ctx)
    auth: Auth = (("authorization", f"Bearer {key}"),)
    api = ctx.docker.api
    with grpc.insecure_channel(gateway) as channel:
        stub = SandboxServiceStub(channel)
        box = stub.AcquireSandbox(
            sandbox_service_pb2.AcquireSandboxRequest(task_id="bench-sessions", profile="bench"),
            timeout=T,
            metadata=auth,
        ).sandbox.sandbox_id
        session = stub.OpenSession(
            session_pb2.OpenSessionRequest(sandbox_id=box), timeout=T, metadata=auth
        ).session

        def ours(command: str) -> Callable[[], object]:
            request = session_pb2.RunSessionCommandRequest(
                sandbox_id=box, session_id=session.session_id, command=command
            )
            return lambda: list(stub.RunSessionCommand(request, timeout=T, metadata=auth))

        def raw_true() -> None:
            api.exec_start(api.exec_create(box, ["true"])["Id"])

        def ours_first_byte() -> None:
            request = session_pb2.RunSessionCommandRequest(
                sandbox_id=box, session_id=session.session_id, command="echo x"
            )
            call = stub.RunSessionCommand(request, timeout=T, metadata=auth)
            next(call)
            first_ms.append((time.perf_counter_ns() - started[0]) / 1e6)
            for _ in call:
                pass

        chunks = 3 if ctx.quick else 10
        raw_ms, ours_ms = _interleaved(raw_true, ours("true"), chunks=chunks, raw_n=5, ours_n=50)
        latency = Stats.from_samples(ours_ms)
        raw = Stats.from_samples(raw_ms)
        p99 = _p99(ours_ms)

        seconds = 1.0 if ctx.quick else 3.0
        rate = _rate(ours("true"), seconds)
        raw_rate = _rate(raw_true, seconds / 3)

        first_ms: list[float] = []
        raw_first: list[float] = []
        started = [0]

        def timed_ours() -> None:
            started[0] = time.perf_counter_ns()
            ours_first_byte()

        def timed_raw() -> None:
            begin = time.perf_counter_ns()
            stream = api.exec_start(api.exec_create(box, ["echo", "x"])["Id"], stream=True)
            iterator = iter(stream)
            next(iterator)
            raw_first.append((time.perf_counter_ns() - begin) / 1e6)
            for _ in iterator:
                pass

        for _ in range(chunks):
            for _ in range(5):
                timed_raw()
            for _ in range(50):
                timed_ours()
        first = Stats.from_samples(first_ms)
        raw_first_stats = Stats.from_samples(raw_first)
        list_request = session_pb2.ListSessionsRequest(sandbox_id=box)
        unary = _samples(
            lambda: stub.ListSessions(list_request, timeout=T, metadata=auth), ctx.repeat(300)
        )
        stub.CloseSession(
            session_pb2.CloseSessionRequest(sandbox_id=box, session_id=session.session_id),
            timeout=T,
            metadata=auth,
        )
    domain = _domain_true(ctx)
    return [
        Result.from_stats(
            "`true` in a session via the gateway vs raw docker exec `true`",
            latency,
            raw,
            target="p50 <= 5 ms, p99 <= 20 ms",
            met=latency.median <= 5.0 and p99 <= 20.0,
            extra={"ours_p99_ms": round(p99, 3), "raw_p99_ms": round(_p99(raw_ms), 3)},
        ),
        Result(
            scenario="commands/s in one session via the gateway (ms = 1000/rate)",
            ours_ms=1000 / rate,
            raw_ms=1000 / raw_rate,
            target=">= 200 commands/s",
            met=rate >= 200,
            samples=int(rate * seconds),
            extra={"commands_per_s": round(rate, 1), "raw_execs_per_s": round(raw_rate, 1)},
        ),
        Result.from_stats(
            "first output byte of `echo x` in a session vs raw exec's first frame",
            first,
            raw_first_stats,
            target="p50 <= 5 ms",
            max_ms=5.0,
            extra={"ours_p99_ms": round(_p99(first_ms), 3)},
        ),
        Result.from_stats(
            "where the time goes: `true` via the sessions API in-process (no gRPC) "
            "vs a ListSessions unary via the gateway",
            Stats.from_samples(domain),
            Stats.from_samples(unary),
            target="reported",
            met=True,
            extra={"domain_p99_ms": round(_p99(domain), 3), "unary_p99_ms": round(_p99(unary), 3)},
        ),
    ]


def _samples(fn: Callable[[], object], n: int) -> list[float]:
    for _ in range(5):
        fn()
    out: list[float] = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


class _Done:
    """A sink that only says when the exit came."""

    def __init__(self) -> None:
        self.ended = threading.Event()

    def put(self, event: OutputChunk, *, give_up: Callable[[], bool]) -> bool:
        return True

    def end(self, event: SessionExit) -> None:
        self.ended.set()


def _domain_true(ctx: Context) -> list[float]:
    """``true`` through an in-process manager's sessions, no gRPC: the floor under the RPC."""
    client = create_client(pool_size=4)
    section = SandboxSection(
        default_image=ctx.sandbox_image(), reaper_enabled=False, stop_timeout_seconds=1
    )
    manager = SandboxManager(client, section, deployment=ctx.deployment())
    try:
        cid = manager.acquire("bench-domain", "bench", Spec()).sandbox.sandbox_id
        opened = manager.sessions.open(cid, shell="/bin/sh", env={}, workdir="", idle_timeout=600)
        command = SessionCommand(source="true", timeout_seconds=T, max_output_bytes=0)

        def one() -> None:
            done = _Done()
            manager.sessions.run(cid, opened.session_id, command, done)
            done.ended.wait(T)

        return _samples(one, ctx.repeat(500))
    finally:
        manager.close(15)
        client.close()


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` one after another for about ``seconds``."""
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - started)
