"""CreateTask under load: 2,000 creates from 8 clients, on SQLite and PostgreSQL.

The kanban service runs in its own process as it does in production: the
dispatcher loop is on and every create wakes it. Two cases per database:
unassigned tasks (ticks plan over the growing backlog and write nothing) and
tasks assigned to a sandbox profile (every tick claims the new tasks; the
executor is a no-op, so runs stay running and the work is all database).
Each client times its own calls; the result is p50 and p99 over all creates
(target p99 <= 100 ms).

PostgreSQL: ``LONGSHORE_BENCH_POSTGRES_URL``, else a throwaway cluster
(``tests.support.postgres``). ``--quick`` cuts the count to 400.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import kanban_service_pb2_grpc, profile_pb2, task_pb2

from bench import Context, Result
from bench.kanban import NoopExecutor, _fresh_pg, _postgres
from services.kanban.service import build_app
from services.kanban.settings import DatabaseSection, KanbanSection, KanbanSettings
from services.runtime.channels import open_channel
from services.runtime.collector import settle_for_serving
from services.runtime.testing import serve_aio_in_process

CLIENTS = 8
CREATES = 2000
TARGET_P99_MS = 100.0


def _serve(url: str, home: str, address: Connection, stop: Event) -> None:
    """Child process: a kanban service as in production (dispatcher on), until ``stop``."""
    settings = KanbanSettings(
        home=Path(home),
        kanban=replace(KanbanSection(), dispatcher_enabled=True),
        database=DatabaseSection(url=url),
    )
    app = build_app(settings, executor=NoopExecutor(), instrument=False)
    app.start()
    app.dispatcher.start()
    settle_for_serving()  # as run_service does before a service serves
    try:
        with serve_aio_in_process(app.grpc_services()) as srv:
            address.send(srv.address)
            stop.wait()
    finally:
        app.close()


@contextlib.contextmanager
def _kanban_process(url: str, home: Path) -> Iterator[str]:
    """Run :func:`_serve` in its own process (clients must not share its GIL)."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(url, str(home), theirs, stop), daemon=True)
    proc.start()
    try:
        if not ours.poll(120):
            raise RuntimeError("the kanban bench process did not start within 120 s")
        yield str(ours.recv())
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def measure_creates(
    url: str, home: Path, total: int, assignee: str = "bench"
) -> tuple[list[float], float]:
    """Run ``total`` creates from :data:`CLIENTS` threads; return latencies (ms) and wall s.

    Args:
        url: Database URL (empty database).
        home: LONGSHORE_HOME of the service.
        total: Creates in all.
        assignee: ``"bench"`` (a sandbox profile: every tick spawns the new
            tasks) or ``""`` (unassigned: ticks plan and write nothing).
    """
    with _kanban_process(url, home) as address:
        channel = open_channel(address)
        stub = kanban_service_pb2_grpc.KanbanServiceStub(channel)
        stub.CreateProfile(
            pb.CreateProfileRequest(
                profile=profile_pb2.Profile(name="bench", executor=profile_pb2.EXECUTOR_SANDBOX)
            ),
            timeout=30,
        )
        for i in range(10):  # warm the pool and the code paths
            stub.CreateTask(pb.CreateTaskRequest(task=task_pb2.Task(title=f"w{i}")), timeout=30)
        samples: list[float] = []
        lock = threading.Lock()
        per_client = total // CLIENTS

        def client(n: int) -> None:
            mine: list[float] = []
            for i in range(per_client):
                request = pb.CreateTaskRequest(
                    task=task_pb2.Task(title=f"c{n}-{i}", assignee=assignee, command=["true"]),
                    request_id=f"bench-{n}-{i}",
                )
                start = time.perf_counter_ns()
                stub.CreateTask(request, timeout=30)
                mine.append((time.perf_counter_ns() - start) / 1e6)
            with lock:
                samples.extend(mine)

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        channel.close()
    return samples, wall


def _result(backend: str, what: str, samples: list[float], wall: float) -> Result:
    ordered = sorted(samples)
    p99 = _percentile(ordered, 0.99)
    return Result(
        scenario=f"[{backend}] CreateTask x{len(ordered)}, {CLIENTS} clients, {what}",
        ours_ms=p99,
        raw_ms=None,
        target=f"p99 <= {TARGET_P99_MS:.0f} ms",
        met=p99 <= TARGET_P99_MS,
        samples=len(ordered),
        extra={
            "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(ordered[-1], 2),
            "per_s": round(len(ordered) / wall, 1),
        },
    )


def run(ctx: Context) -> list[Result]:
    """CreateTask p50/p99 under 8 concurrent clients on SQLite, then PostgreSQL."""
    total = 400 if ctx.quick else CREATES
    results: list[Result] = []
    scenarios = (("unassigned", ""), ("assigned (every tick spawns)", "bench"))
    with tempfile.TemporaryDirectory(prefix="creates-bench-") as tmp:
        home = Path(tmp)
        for n, (what, assignee) in enumerate(scenarios):
            url = f"sqlite:///{home / f'creates{n}.db'}"
            samples, wall = measure_creates(url, home, total, assignee)
            results.append(_result("sqlite", what, samples, wall))
        with _postgres() as (base, cluster):
            for n, (what, assignee) in enumerate(scenarios):
                url = _fresh_pg(cluster, base, f"bench_creates{n}")
                samples, wall = measure_creates(url, home, total, assignee)
                results.append(_result("postgres", what, samples, wall))
    return results


__all__ = ["run"]
