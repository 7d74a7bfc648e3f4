"""Warm-pool benchmarks: an acquire that takes a warm member, beside the raw engine calls.

The sandbox manager, kanban and the gateway run as real processes; every
acquire goes through the gateway with an admin key. In the same run:

- AcquireSandbox of a new task with a warm pool hit (outcome TAKEN_FROM_POOL)
  through the gateway (target: p50 <= 25 ms), next to a bare engine
  ``rename`` of a running container (the one engine write a handout makes)
  and a bare ``inspect``;
- AcquireSandbox of a new task with no pool (a cold create + start) through
  the gateway, next to a raw ``create`` + ``start`` of the same image.

Samples interleave (raw, ours, raw, ours...) so load drifts hit both alike.
Before each hit the pool is let refill (untimed: the filler runs in the
background), so each timed acquire finds a ready member; a sample that still
missed the pool is counted and reported. Taken sandboxes are removed untimed.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid

import docker
import grpc
from longshore.sandbox.v1 import pool_pb2, sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from bench import Context, Result, Stats, stopwatch
from services.gateway.auth import key_entry, new_key

T = 120
POOL_SIZE = 2


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(0.99 * len(ordered))) - 1]


def _start(ctx: Context) -> tuple[str, str, str]:
    """Starts sandbox, kanban and gateway; returns (gateway addr, admin key, deployment)."""
    home = ctx.temp_dir("longshore-bench-pools-")
    deployment = ctx.deployment()
    token, key = uuid.uuid4().hex, new_key()
    ports = {n: f"127.0.0.1:{ctx.free_port()}" for n in ("sandbox", "kanban", "gateway")}
    common = {
        "LONGSHORE_HOME": str(home),
        "LONGSHORE_DEPLOYMENT": deployment,
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
            "LONGSHORE_SANDBOX_WARM_FILL_INTERVAL_SECONDS": "0.2",
            "LONGSHORE_SANDBOX_REAPER_ENABLED": "false",
        },
        health_addr=ports["sandbox"],
        name="bench-pools-sandbox",
        timeout=60,
    )
    ctx.service(
        ["python", "-m", "services.kanban"],
        env={
            **common,
            "LONGSHORE_KANBAN_LISTEN": ports["kanban"],
            "LONGSHORE_KANBAN_DISPATCHER_ENABLED": "false",
            # The bench's pool belongs to no profile: kanban must not drain it.
            "LONGSHORE_KANBAN_WARM_POOL_SYNC_SECONDS": "0",
        },
        health_addr=ports["kanban"],
        name="bench-pools-kanban",
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
        name="bench-pools-gateway",
        timeout=60,
    )
    return ports["gateway"], key, deployment


def _ready(stub: SandboxServiceStub, auth: tuple[tuple[str, str], ...]) -> int:
    pools = stub.ListWarmPools(
        pool_pb2.ListWarmPoolsRequest(profile="bench"), timeout=T, metadata=auth
    ).pools
    return pools[0].ready if pools else 0


def _wait_ready(stub: SandboxServiceStub, auth: tuple[tuple[str, str], ...]) -> None:
    deadline = time.monotonic() + T
    while _ready(stub, auth) < POOL_SIZE:
        if time.monotonic() > deadline:
            raise RuntimeError("the warm pool did not refill in time")
        time.sleep(0.05)


def run(ctx: Context) -> list[Result]:
    """Runs the warm-pool scenarios."""
    gateway, key, _deployment = _start(ctx)
    auth = (("authorization", f"Bearer {key}"),)
    api = ctx.docker.api
    image = ctx.sandbox_image()
    made: list[str] = []
    ctx.add_cleanup(lambda: _remove(api, made))
    with grpc.insecure_channel(gateway) as channel:
        stub = SandboxServiceStub(channel)
        stub.SetWarmPool(
            pool_pb2.SetWarmPoolRequest(profile="bench", size=POOL_SIZE), timeout=T, metadata=auth
        )
        scratch = _raw_started(api, image, ctx.labels)
        made.append(scratch)
        hits, raw_rename, raw_inspect, misses = _hits(ctx, stub, auth, api, scratch, made)
        cold, raw_cold = _cold(ctx, stub, auth, api, image, made)
    hit = Stats.from_samples(hits)
    return [
        Result.from_stats(
            "AcquireSandbox, new task, warm pool hit (gateway) vs raw rename",
            hit,
            Stats.from_samples(raw_rename),
            target="p50 <= 25 ms",
            max_ms=25.0,
            extra={
                "ours_p99_ms": round(_p99(hits), 3),
                "raw_p99_ms": round(_p99(raw_rename), 3),
                "raw_inspect_p50_ms": round(Stats.from_samples(raw_inspect).median, 3),
                "raw_inspect_p99_ms": round(_p99(raw_inspect), 3),
                "pool_misses": misses,
            },
        ),
        Result.from_stats(
            "AcquireSandbox, new task, no pool (gateway; cold) vs raw create + start",
            Stats.from_samples(cold),
            Stats.from_samples(raw_cold),
            target="reported",
            met=True,
            extra={
                "ours_p99_ms": round(_p99(cold), 3),
                "raw_p99_ms": round(_p99(raw_cold), 3),
                "hit_vs_cold_p50": round(hit.median / Stats.from_samples(cold).median, 4),
            },
        ),
    ]


def _hits(
    ctx: Context,
    stub: SandboxServiceStub,
    auth: tuple[tuple[str, str], ...],
    api: docker.APIClient,
    scratch: str,
    made: list[str],
) -> tuple[list[float], list[float], list[float], int]:
    hits: list[float] = []
    renames: list[float] = []
    inspects: list[float] = []
    misses = 0
    repeat = ctx.repeat(30)
    for i in range(repeat + 2):
        _wait_ready(stub, auth)
        warm = i < 2
        with stopwatch([] if warm else renames):
            api.rename(scratch, f"longshore-bench-rename-{ctx.run_id}-{i}")
        with stopwatch([] if warm else inspects):
            api.inspect_container(scratch)
        request = sandbox_service_pb2.AcquireSandboxRequest(task_id=f"hit-{i}", profile="bench")
        samples: list[float] = []
        with stopwatch(samples):
            reply = stub.AcquireSandbox(request, timeout=T, metadata=auth)
        made.append(reply.sandbox.sandbox_id)
        if reply.outcome != sandbox_pb2.REUSE_OUTCOME_TAKEN_FROM_POOL:
            misses += 1
        elif not warm:
            hits.extend(samples)
    return hits, renames, inspects, misses


def _cold(
    ctx: Context,
    stub: SandboxServiceStub,
    auth: tuple[tuple[str, str], ...],
    api: docker.APIClient,
    image: str,
    made: list[str],
) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    raw: list[float] = []
    for i in range(ctx.repeat(10) + 1):
        warm = i == 0
        with stopwatch([] if warm else raw):
            made.append(_raw_started(api, image, ctx.labels))
        request = sandbox_service_pb2.AcquireSandboxRequest(task_id=f"cold-{i}", profile="cold")
        with stopwatch([] if warm else ours):
            reply = stub.AcquireSandbox(request, timeout=T, metadata=auth)
        made.append(reply.sandbox.sandbox_id)
    return ours, raw


def _raw_started(api: docker.APIClient, image: str, labels: dict[str, str]) -> str:
    host = api.create_host_config(init=True, cap_drop=["ALL"], pids_limit=512)
    cid = str(
        api.create_container(image, command=["sleep", "infinity"], labels=labels, host_config=host)[
            "Id"
        ]
    )
    api.start(cid)
    return cid


def _remove(api: docker.APIClient, cids: list[str]) -> None:
    for cid in cids:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_container(cid, force=True, v=True)
