"""E2B time to interactive: ``Sandbox.create`` -> first ``commands.run("true")``.

The real stack (sandbox manager, kanban, gateway) and the front door run as
processes (the test rig of ``tests/integration/e2b``); the client is E2B's
pinned Python SDK. One sample is ``Sandbox.create(template)`` then
``sbx.commands.run("true")``, timed together; the kill that follows is not
timed. Five cases:

- cold, sequential: a template (profile) without a warm pool, one at a time;
- warm, sequential: the profile has a warm pool (``warm_pool_size``), warm
  again (untimed) before each sample: every member running and holding its
  spare (the exec its first command takes), so every create is a pool hit on
  a settled deployment, as a create between an agent fleet's creates is;
- warm, sequential, right after the refill: each sample starts as soon as the
  pool counts its members ready again, while the manager still makes the new
  member's spare (what back-to-back creates see; reported, no target);
- cold and warm, concurrent: batches of ``BATCH`` creates at once (the pool's
  size, ``sandbox.max_warm_per_pool``), the pool warm again between batches.

The raw baseline is what the same interactivity costs on the engine alone:
``docker run -d`` of the template image then ``exec true`` (Docker SDK).
Reported beside E2B's published median (491 ms, sequential) and Daytona's
(186 ms). Target: warm p50 <= 60 ms. ``--quick`` takes a fifth of the samples.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
from e2b import Sandbox
from longshore.sandbox.v1 import pool_pb2

from bench import Context, Result, stopwatch
from services.sandbox import labels
from tests.integration.e2b.rig import E2bRig, build_template_image, e2b_rig
from tests.integration.gateway.stack import auth

E2B_PUBLISHED_MEDIAN_MS = 491.0
DAYTONA_PUBLISHED_MS = 186.0
BATCH = 8
TARGET_WARM_P50_MS = 60.0


def p99(samples: list[float]) -> float:
    """The 99th percentile (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]


class Bench:
    """One stack, its SDK options and the pool controls."""

    def __init__(self, rig: E2bRig, engine: docker.DockerClient) -> None:
        self.rig = rig
        self.engine = engine
        self.opts: dict[str, Any] = {
            "api_key": rig.keys.alice,
            "api_url": rig.url,
            "sandbox_url": rig.url,
        }
        self._reaper = ThreadPoolExecutor(4, thread_name_prefix="bench-e2b-kill")

    def interactive(self, template: str) -> float:
        """One create -> run("true"), in ms; the kill is handed off untimed."""
        samples: list[float] = []
        with stopwatch(samples):
            sbx = Sandbox.create(template, timeout=120, **self.opts)
            sbx.commands.run("true", timeout=60)
        self._reaper.submit(sbx.kill)
        return samples[0]

    def wait_ready(self, profile: str, size: int, bound: float = 120.0) -> None:
        """Until the pool holds ``size`` ready members (bounded; untimed)."""
        deadline = time.monotonic() + bound
        pause = threading.Event()
        while time.monotonic() < deadline:
            pools = self.rig.stubs.sandbox.ListWarmPools(
                pool_pb2.ListWarmPoolsRequest(profile=profile),
                timeout=60,
                metadata=auth(self.rig.keys.admin),
            ).pools
            if pools and pools[0].ready >= size:
                return
            pause.wait(0.05)
        raise RuntimeError(f"warm pool {profile!r} not refilled to {size} in {bound} s")

    def wait_warm(self, profile: str, size: int, bound: float = 120.0) -> None:
        """Until the pool is ready and every member holds its spare (bounded; untimed).

        The spare of a new member is made just after the pool counts it
        ready; it is an exec, seen on the engine as the member's exec.
        """
        self.wait_ready(profile, size, bound)
        filters = {
            "label": labels.pool_filters(self.rig.deployment, labels.sanitize(profile)),
            "status": "running",
        }
        deadline = time.monotonic() + bound
        pause = threading.Event()
        while time.monotonic() < deadline:
            members = self.engine.api.containers(filters=filters)
            untaken = [m for m in members if labels.task_of(m["Labels"], m["Names"][0]) == ""]
            if len(untaken) >= size and all(
                self.engine.api.inspect_container(m["Id"]).get("ExecIDs") for m in untaken
            ):
                return
            pause.wait(0.05)
        raise RuntimeError(f"warm pool {profile!r}: members without spares after {bound} s")

    def drain_kills(self) -> None:
        self._reaper.shutdown(wait=True)
        self._reaper = ThreadPoolExecutor(4, thread_name_prefix="bench-e2b-kill")


def sequential(n: int, sample: Callable[[], float], before: Callable[[], None]) -> list[float]:
    out = []
    for _ in range(n):
        before()
        out.append(sample())
    return out


def concurrent(n: int, sample: Callable[[], float], before: Callable[[], None]) -> list[float]:
    out: list[float] = []
    with ThreadPoolExecutor(BATCH, thread_name_prefix="bench-e2b") as pool:
        for start in range(0, n, BATCH):
            before()
            futures = [pool.submit(sample) for _ in range(min(BATCH, n - start))]
            out.extend(f.result() for f in futures)
    return out


def raw_interactive(ctx: Context, image: str) -> float:
    """``docker run -d`` then ``exec true`` on the engine, in ms (removal untimed)."""
    samples: list[float] = []
    with stopwatch(samples):
        box = ctx.docker.containers.run(image, detach=True, labels=ctx.labels)
        box.exec_run(["true"])
    box.remove(force=True)
    return samples[0]


def result(name: str, ms: list[float], raw: list[float], target: str, met: bool) -> Result:
    return Result(
        scenario=f"e2b: create -> run(true), {name}",
        ours_ms=statistics.median(ms),
        raw_ms=statistics.median(raw),
        target=target,
        met=met,
        samples=len(ms),
        extra={
            "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(p99(ms), 1),
            "raw_p50_ms": round(statistics.median(raw), 1),
            "e2b_published_median_ms": E2B_PUBLISHED_MEDIAN_MS,
            "daytona_published_ms": DAYTONA_PUBLISHED_MS,
        },
    )


def run(ctx: Context) -> list[Result]:
    """The five cases (see the module docstring)."""
    n = ctx.repeat(100)
    image = build_template_image(
        ctx.docker, ctx.sandbox_image(), f"longshore-bench/e2b-template:{ctx.run_id}", ctx.labels
    )
    home = Path(tempfile.mkdtemp(prefix="bench-e2b-"))
    with e2b_rig(home, deployment=ctx.deployment(), image=image) as rig:
        rig.profile("cold")
        # The pool is the profile's (kanban keeps it on the manager).
        rig.profile("warm", warm=BATCH)
        bench = Bench(rig, ctx.docker)
        try:
            for _ in range(3):  # warm-up: imports, channels, the engine's image cache
                bench.interactive("cold")
            raw = [raw_interactive(ctx, image) for _ in range(min(n, 30))]
            cold_seq = sequential(n, lambda: bench.interactive("cold"), lambda: None)
            bench.drain_kills()
            cold_conc = concurrent(n, lambda: bench.interactive("cold"), bench.drain_kills)
            bench.drain_kills()
            warm_seq = sequential(
                n, lambda: bench.interactive("warm"), lambda: bench.wait_warm("warm", BATCH)
            )
            warm_racing = sequential(
                n, lambda: bench.interactive("warm"), lambda: bench.wait_ready("warm", BATCH)
            )
            warm_conc = concurrent(
                n, lambda: bench.interactive("warm"), lambda: bench.wait_warm("warm", BATCH)
            )
        finally:
            with contextlib.suppress(Exception):
                bench.drain_kills()
    warm_p50 = statistics.median(warm_seq)
    return [
        result("cold, sequential", cold_seq, raw, "reported (E2B 491 ms)", True),
        result(f"cold, {BATCH} concurrent", cold_conc, raw, "reported", True),
        result(
            "warm pool hit, sequential",
            warm_seq,
            raw,
            f"p50 <= {TARGET_WARM_P50_MS:.0f} ms",
            warm_p50 <= TARGET_WARM_P50_MS,
        ),
        result(
            "warm pool hit, sequential, right after the refill",
            warm_racing,
            raw,
            "reported",
            True,
        ),
        result(
            f"warm pool hit, {BATCH} concurrent",
            warm_conc,
            raw,
            f"p50 <= {TARGET_WARM_P50_MS:.0f} ms",
            statistics.median(warm_conc) <= TARGET_WARM_P50_MS,
        ),
    ]
