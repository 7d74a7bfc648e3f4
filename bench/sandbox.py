"""Sandbox manager benchmarks: each figure paired in one run with the raw Docker SDK call.

Scenarios (the manager runs in-process behind a real gRPC server; "ours" is
measured through the generated stub, "raw" is the Docker SDK call it wraps):

- acquire of an existing running sandbox vs a raw labelled list (target <= 10 ms);
- cold acquire vs a raw ``containers.run`` (target <= 1.3x raw);
- exec of ``true`` vs a raw ``exec_run`` (target: <= 10 ms over raw);
- reaping 50 and 200 old exited sandboxes vs a raw sequential inspect-and-remove
  loop (target for 200: <= 0.5x raw);
- listing 1,000 sandboxes (target <= 100 ms; they are created, never started);
- writing and reading a 1 MB and a 100 MB file (WriteFiles / ReadFile through
  the stub) vs the raw ``put_archive`` of a ready tar / ``get_archive`` drained
  (target <= 1.2x raw; ``LONGSHORE_BENCH_SANDBOX_FILE_MB``, default ``1,100``).
  Here the manager runs as its own process, as deployed: in-process, the
  client's and the server's copies of every byte share one GIL, which the raw
  call (one client) does not pay.

Paired samples are interleaved (raw, ours, raw, ours, ...) so engine load drifts
hit both sides alike. Sizes: ``LONGSHORE_BENCH_SANDBOX_REAP`` (default ``50,200``),
``LONGSHORE_BENCH_SANDBOX_LIST`` (default ``1000``); ``--quick`` scales them down.
Each reap sample consumes its containers and an exited container costs a real
start (~0.25 s on this loaded 2-core machine), so reaping runs once per size by
default (``LONGSHORE_BENCH_SANDBOX_REAP_REPS`` for more).
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import docker
import grpc
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from bench import Context, Result, Stats, stopwatch
from services.runtime.interceptors import INTERNAL_TOKEN_KEY
from services.runtime.testing import serve_in_process
from services.sandbox import labels
from services.sandbox.docker_client import create_client
from services.sandbox.manager import SandboxManager
from services.sandbox.reaper import Reaper, StartupGuard, parse_docker_time
from services.sandbox.server import SandboxServicer, grpc_service
from services.sandbox.settings import SandboxSection

T = 120
KEEPALIVE = ["sleep", "infinity"]


def _sizes(var: str, default: str, quick: bool, divisor: int) -> list[int]:
    raw = os.environ.get(var, default)
    sizes = [int(part) for part in raw.split(",") if part.strip()]
    return [max(5, n // divisor) for n in sizes] if quick else sizes


def _remove_all(client: docker.DockerClient, label_filter: list[str], workers: int = 8) -> None:
    rows = client.api.containers(all=True, filters={"label": label_filter})

    def rm(cid: str) -> None:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_container(cid, force=True)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(rm, [r["Id"] for r in rows]))


def _make_containers(
    client: docker.DockerClient,
    image: str,
    lbl: dict[str, str],
    n: int,
    *,
    exited: bool,
    workers: int = 6,
) -> list[str]:
    """Creates ``n`` labelled containers; started and exited when ``exited``."""

    def one(_: int) -> str:
        # No network: the engine skips veth/bridge setup, the slow part of a start.
        host_config = client.api.create_host_config(network_mode="none")
        cid = str(
            client.api.create_container(
                image, command=["true"], labels=lbl, host_config=host_config
            )["Id"]
        )
        if exited:
            client.api.start(cid)
        return cid

    with ThreadPoolExecutor(workers) as pool:
        ids = list(pool.map(one, range(n)))
    if exited:
        for cid in ids:
            client.api.wait(cid, timeout=T)
    return ids


def _interleaved(
    ours: Callable[[], object], raw: Callable[[], object], repeat: int, warmup: int = 2
) -> tuple[Stats, Stats]:
    for _ in range(warmup):
        raw()
        ours()
    ours_ms: list[float] = []
    raw_ms: list[float] = []
    for _ in range(repeat):
        with stopwatch(raw_ms):
            raw()
        with stopwatch(ours_ms):
            ours()
    return Stats.from_samples(ours_ms), Stats.from_samples(raw_ms)


@contextlib.contextmanager
def _served(ctx: Context) -> Iterator[tuple[SandboxServiceStub, SandboxManager, str]]:
    deployment = ctx.deployment()
    client = create_client(pool_size=48)
    section = SandboxSection(
        default_image=ctx.sandbox_image(), reaper_enabled=False, stop_timeout_seconds=1
    )
    manager = SandboxManager(client, section, deployment=deployment)
    servicer = SandboxServicer(manager, Reaper(manager, guard=StartupGuard()))
    try:
        with serve_in_process([grpc_service(servicer)], max_workers=16) as running:
            yield SandboxServiceStub(running.channel()), manager, deployment
    finally:
        manager.close(15)
        _remove_all(client, [f"{labels.DEPLOYMENT}={deployment}"])
        client.close()


def _acquire(stub: SandboxServiceStub, task: str, persist: bool = True) -> str:
    req = sandbox_service_pb2.AcquireSandboxRequest(
        task_id=task, profile="bench", persist_across_processes=persist
    )
    return stub.AcquireSandbox(req, timeout=T).sandbox.sandbox_id


def _reuse_and_exec(ctx: Context, stub: SandboxServiceStub, deployment: str) -> list[Result]:
    client = ctx.docker
    cid = _acquire(stub, "reuse")
    filters = {"label": labels.key_filters(deployment, "bench", "reuse")}
    ours, raw = _interleaved(
        lambda: _acquire(stub, "reuse"),
        lambda: client.containers.list(all=True, filters=filters, sparse=True),
        ctx.repeat(50),
    )
    results = [
        Result.from_stats(
            "acquire: reuse running (gRPC) vs raw labelled list",
            ours,
            raw,
            target="<= 10 ms",
            max_ms=10.0,
        )
    ]
    container = client.containers.get(cid)
    req = sandbox_service_pb2.ExecRequest(sandbox_id=cid, argv=["true"])
    ours, raw = _interleaved(
        lambda: list(stub.Exec(req, timeout=T)),
        lambda: container.exec_run(["true"]),
        ctx.repeat(40),
    )
    results.append(
        Result.from_stats(
            "exec true (gRPC stream) vs raw exec_run",
            ours,
            raw,
            target="<= raw + 10 ms",
            met=ours.median - raw.median <= 10.0,
            extra={"overhead_ms": round(ours.median - raw.median, 3)},
        )
    )
    return results


def _cold(ctx: Context, stub: SandboxServiceStub) -> Result:
    client = ctx.docker
    image = ctx.sandbox_image()
    counter = iter(range(10**6))
    raw_lbl = {**ctx.labels, "bench": "cold-raw"}

    def raw() -> None:
        client.containers.run(image, KEEPALIVE, detach=True, labels=raw_lbl)

    def ours() -> None:
        _acquire(stub, f"cold-{next(counter)}")

    try:
        ours_stats, raw_stats = _interleaved(ours, raw, ctx.repeat(15), warmup=1)
    finally:
        _remove_all(client, [f"{k}={v}" for k, v in raw_lbl.items()])
    return Result.from_stats(
        "acquire: cold create+start (gRPC) vs raw containers.run",
        ours_stats,
        raw_stats,
        target="<= 1.3x raw",
        max_ratio=1.3,
    )


def _raw_reap(client: docker.DockerClient, label_filter: list[str]) -> int:
    """What the anchor does: list, then inspect and remove one at a time."""
    removed = 0
    for row in client.api.containers(all=True, filters={"label": label_filter}):
        info = client.api.inspect_container(row["Id"])
        if info["State"]["Status"] != "exited":
            continue
        if parse_docker_time(info["State"]["FinishedAt"]) is None:
            continue
        client.api.remove_container(row["Id"])
        removed += 1
    return removed


def _reap(ctx: Context, stub: SandboxServiceStub, deployment: str) -> list[Result]:
    client = ctx.docker
    image = ctx.sandbox_image()
    ours_lbl = {**ctx.labels, labels.MANAGED: "1", labels.DEPLOYMENT: deployment}
    raw_dep = ctx.deployment()
    raw_lbl = {**ctx.labels, labels.MANAGED: "1", labels.DEPLOYMENT: raw_dep}
    raw_filter = [f"{labels.MANAGED}=1", f"{labels.DEPLOYMENT}={raw_dep}"]
    zero = duration_pb2.Duration()
    zero.FromTimedelta(timedelta(0))
    req = sandbox_service_pb2.ReapOrphansRequest(max_age=zero)
    results = []
    sizes = _sizes("LONGSHORE_BENCH_SANDBOX_REAP", "50,200", ctx.quick, 5)
    for n in sizes:
        reps = int(os.environ.get("LONGSHORE_BENCH_SANDBOX_REAP_REPS", "1"))
        ours_ms: list[float] = []
        raw_ms: list[float] = []
        counts: list[tuple[int, int]] = []
        try:
            for _ in range(reps):
                _make_containers(client, image, raw_lbl, n, exited=True)
                with stopwatch(raw_ms):
                    raw_removed = _raw_reap(client, raw_filter)
                _make_containers(client, image, ours_lbl, n, exited=True)
                with stopwatch(ours_ms):
                    resp = stub.ReapOrphans(req, timeout=T)
                counts.append((len(resp.removed), raw_removed))
        finally:
            _remove_all(client, raw_filter)
        ours, raw = Stats.from_samples(ours_ms), Stats.from_samples(raw_ms)
        big = n == max(sizes)
        results.append(
            Result.from_stats(
                f"reap {n} old exited (gRPC) vs raw sequential inspect+remove",
                ours,
                raw,
                target="<= 0.5x raw" if big else "- (target is on the largest size)",
                max_ratio=0.5 if big else None,
                extra={"removed_ours_raw": counts, "reps": reps},
            )
        )
    return results


def _list(ctx: Context, stub: SandboxServiceStub, deployment: str) -> Result:
    client = ctx.docker
    (n,) = _sizes("LONGSHORE_BENCH_SANDBOX_LIST", "1000", ctx.quick, 5)[:1]
    lbl = {
        **ctx.labels,
        **labels.sandbox_labels(
            deployment=deployment,
            profile="many",
            task_id="x",
            persist=False,
            owner="bench",
            config_hash="0" * 16,
        ),
    }
    started = time.monotonic()
    _make_containers(client, ctx.sandbox_image(), lbl, n, exited=False, workers=8)
    setup_s = time.monotonic() - started
    req = sandbox_service_pb2.ListSandboxesRequest(profile="many", page_size=1000)
    filters = {"label": labels.deployment_filters(deployment, "many")}
    seen: dict[str, Any] = {}

    def ours() -> None:
        seen["n"] = len(stub.ListSandboxes(req, timeout=T).sandboxes)

    ours_stats, raw_stats = _interleaved(
        ours, lambda: client.api.containers(all=True, filters=filters), ctx.repeat(15)
    )
    return Result.from_stats(
        f"list {n} sandboxes (gRPC) vs raw labelled list",
        ours_stats,
        raw_stats,
        target="<= 100 ms",
        max_ms=100.0,
        extra={"listed": seen.get("n"), "setup_seconds": round(setup_s, 1)},
    )


def _write_requests(
    cid: str, path: str, data: bytes
) -> Iterator[sandbox_service_pb2.WriteFilesRequest]:
    yield sandbox_service_pb2.WriteFilesRequest(sandbox_id=cid)
    yield sandbox_service_pb2.WriteFilesRequest(
        header=sandbox_service_pb2.WriteFileHeader(path=path, size=len(data))
    )
    view = memoryview(data)
    for start in range(0, len(data), FILE_CHUNK):
        yield sandbox_service_pb2.WriteFilesRequest(data=bytes(view[start : start + FILE_CHUNK]))


FILE_CHUNK = 1024 * 1024


@contextlib.contextmanager
def _manager_process(ctx: Context) -> Iterator[tuple[SandboxServiceStub, Any]]:
    """The sandbox manager as a process; a stub and the internal-credential metadata."""
    token = uuid.uuid4().hex
    addr = f"127.0.0.1:{ctx.free_port()}"
    deployment = ctx.deployment()
    ctx.service(
        ["python", "-m", "services.sandbox"],
        env={
            "LONGSHORE_HOME": str(ctx.temp_dir("bench-files")),
            "LONGSHORE_DEPLOYMENT": deployment,
            "LONGSHORE_INTERNAL_TOKEN": token,
            "LONGSHORE_LOG_LEVEL": "WARNING",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
            "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
            "LONGSHORE_SANDBOX_LISTEN": addr,
            "LONGSHORE_SANDBOX_ADDR": addr,
            "LONGSHORE_SANDBOX_DEFAULT_IMAGE": ctx.sandbox_image(),
            "LONGSHORE_SANDBOX_REAPER_ENABLED": "false",
        },
        health_addr=addr,
        name="bench-files-sandbox",
        timeout=60,
    )
    options = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]
    with grpc.insecure_channel(addr, options=options) as channel:
        yield SandboxServiceStub(channel), ((INTERNAL_TOKEN_KEY, token),)


def _files(ctx: Context) -> list[Result]:
    with _manager_process(ctx) as (stub, metadata):
        return _files_on(ctx, stub, metadata)


def _files_on(ctx: Context, stub: SandboxServiceStub, metadata: Any) -> list[Result]:
    client = ctx.docker
    cid = stub.AcquireSandbox(
        sandbox_service_pb2.AcquireSandboxRequest(task_id="files", profile="bench"),
        timeout=T,
        metadata=metadata,
    ).sandbox.sandbox_id
    stub.MakeDirectory(
        sandbox_service_pb2.MakeDirectoryRequest(sandbox_id=cid, path="/bench"),
        timeout=T,
        metadata=metadata,
    )
    results = []
    seen: dict[str, int] = {}
    sizes = _sizes("LONGSHORE_BENCH_SANDBOX_FILE_MB", "1,100", False, 1)
    for mb in sizes:
        data = os.urandom(mb * 1024 * 1024)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("raw.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        ready_tar = buffer.getvalue()
        repeat = ctx.repeat(20 if mb <= 10 else 7)

        def ours_write(data: bytes = data) -> None:
            stub.WriteFiles(
                _write_requests(cid, "/bench/ours.bin", data), timeout=T, metadata=metadata
            )

        def raw_write(ready_tar: bytes = ready_tar) -> None:
            client.api.put_archive(cid, "/bench", ready_tar)

        ours, raw = _interleaved(ours_write, raw_write, repeat, warmup=1)
        results.append(
            Result.from_stats(
                f"write a {mb} MB file (WriteFiles stream) vs raw put_archive of a ready tar",
                ours,
                raw,
                target="<= 1.2x raw",
                max_ratio=1.2,
                extra={"ours_mb_per_s": round(mb / (ours.median / 1000), 1)},
            )
        )
        read_req = sandbox_service_pb2.ReadFileRequest(sandbox_id=cid, path="/bench/ours.bin")

        def ours_read(read_req: sandbox_service_pb2.ReadFileRequest = read_req) -> None:
            reply = stub.ReadFile(read_req, timeout=T, metadata=metadata)
            seen["ours"] = sum(len(m.data) for m in reply)

        def raw_read() -> None:
            chunks, _ = client.api.get_archive(cid, "/bench/raw.bin", chunk_size=FILE_CHUNK)
            seen["raw"] = sum(len(c) for c in chunks)

        ours, raw = _interleaved(ours_read, raw_read, repeat, warmup=1)
        results.append(
            Result.from_stats(
                f"read a {mb} MB file (ReadFile stream) vs raw get_archive drained",
                ours,
                raw,
                target="<= 1.2x raw",
                max_ratio=1.2,
                extra={
                    "ours_bytes": seen.get("ours"),
                    "raw_tar_bytes": seen.get("raw"),
                    "ours_mb_per_s": round(mb / (ours.median / 1000), 1),
                },
            )
        )
    return results


def run(ctx: Context) -> list[Result]:
    """All sandbox scenarios (see the module docstring)."""
    results: list[Result] = []
    with _served(ctx) as (stub, _manager, deployment):
        results += _reuse_and_exec(ctx, stub, deployment)
        results.append(_cold(ctx, stub))
        results += _reap(ctx, stub, deployment)
        results.append(_list(ctx, stub, deployment))
    results += _files(ctx)
    return results
