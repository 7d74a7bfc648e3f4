"""Kanban-dispatch benchmarks, on SQLite and on PostgreSQL.

- tick latency with 10,000 ready tasks over 50 profiles with a cap of 2, dry
  run and real (the executor is a no-op spawn), next to the same planning
  done in memory with no database ("raw"); target <= 150 ms on SQLite for the
  dry run, <= 50 ms on both databases for the real tick (issue 12: one
  statement per bucket, the response built after commit);
- CreateTask latency through the real server (target p50 <= 5 ms) and its
  throughput with 8 client threads;
- claim + heartbeat + complete cycles per second with 8 external workers
  (target >= 300/s on PostgreSQL);
- WatchEvents delivery delay: event commit to receipt (target p50 <= 50 ms).

PostgreSQL: ``LONGSHORE_BENCH_POSTGRES_URL``, else a throwaway cluster is
started (``tests.support.postgres``). Size: ``LONGSHORE_BENCH_KANBAN_TASKS``
(default 10000); ``--quick`` cuts it to 2000.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import (
    kanban_service_pb2_grpc,
    profile_pb2,
    task_pb2,
    worker_service_pb2_grpc,
)
from longshore.kanban.v1 import worker_service_pb2 as wpb
from sqlalchemy import insert, text

from bench import Context, Result, Stats, measure
from services.kanban import models, snapshot
from services.kanban.executor import RunJob, RunSink
from services.kanban.planner import plan
from services.kanban.service import KanbanApp, build_app
from services.kanban.settings import DatabaseSection, KanbanSection, KanbanSettings
from services.kanban.store import events
from services.runtime.collector import settle_for_serving
from services.runtime.testing import serve_aio_in_process

PROFILES = 50
CAP = 2
WORKERS = 8


@dataclass
class NoopExecutor:
    """Accepts every spawn and does nothing (the tick alone is measured)."""

    jobs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, job: RunJob, sink: RunSink) -> None:
        with self.lock:
            self.jobs += 1

    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        return False

    def release(
        self, task_id: str, profile: str, sandbox_id: str = "", *, force: bool = True
    ) -> object:
        return None


@contextlib.contextmanager
def _postgres() -> Iterator[tuple[str, Any]]:
    url = os.environ.get("LONGSHORE_BENCH_POSTGRES_URL", "")
    if url:
        yield url, None
        return
    from tests.support.postgres import PostgresCluster

    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster.create_database("bench"), cluster
    finally:
        cluster.stop()


def _fresh_pg(cluster: Any, base: str, name: str) -> str:
    if cluster is None:
        return base
    return str(cluster.create_database(name))


@contextlib.contextmanager
def _app(url: str, home: Path, **section: Any) -> Iterator[KanbanApp]:
    settings = KanbanSettings(
        home=home,
        kanban=replace(KanbanSection(), dispatcher_enabled=False, **section),
        database=DatabaseSection(url=url),
    )
    app = build_app(settings, executor=NoopExecutor(), instrument=False)
    app.start()
    settle_for_serving()  # as run_service does before a service serves
    try:
        yield app
    finally:
        app.close()


def _seed(app: KanbanApp, n: int, profiles: list[str], executor: str, cap: int) -> None:
    now = models.utcnow()
    with app.db.write() as s:
        s.execute(
            insert(models.Profile),
            [
                {
                    "name": p,
                    "executor": executor,
                    "sandbox_spec": {},
                    "max_in_progress": cap,
                    "keep_sandbox": False,
                    "description": "",
                    "create_time": now,
                    "update_time": now,
                }
                for p in profiles
            ],
        )
    rows = [
        {
            "task_id": f"t-{i:08d}",
            "board_id": "default",
            "title": f"task {i}",
            "description": "",
            "status": "ready",
            "assignee": profiles[i % len(profiles)],
            "priority": i % 5,
            "command": ["true"],
            "image": "",
            "env": {},
            "labels": {},
            "blocked_reason": "",
            "breaker_open": False,
            "failure_count": 0,
            "sandbox_id": "",
            "trace_parent": "",
            "create_time": now,
            "update_time": now,
            "ready_time": now,
        }
        for i in range(n)
    ]
    for start in range(0, n, 2000):
        batch = rows[start : start + 2000]
        with app.db.write() as s:
            s.execute(insert(models.Task), batch)
            # As CreateTask does: every task change has its event.
            events.append_many(
                s,
                [
                    {
                        "task_id": r["task_id"],
                        "board_id": "default",
                        "kind": "created",
                        "source": "bench",
                    }
                    for r in batch
                ],
                now=now,
            )


def _reset_running(app: KanbanApp) -> None:
    """Every running task back to ready, with an event each, as a finished run leaves it.

    The event matters: replicas keep the walk's tasks and re-read those the
    event log names (:mod:`services.kanban.walk_views`), as between two real
    ticks, where every change appends one.
    """
    with app.db.write() as s:
        running = s.execute(
            text("SELECT task_id, board_id FROM tasks WHERE status = 'running'")
        ).all()
        s.execute(text("UPDATE task_runs SET status = 'succeeded' WHERE status = 'running'"))
        s.execute(
            text(
                "UPDATE tasks SET status = 'ready', current_run_id = NULL WHERE status = 'running'"
            )
        )
        events.append_many(
            s,
            [
                {"task_id": t, "board_id": b, "kind": "bench_reset", "source": "bench"}
                for t, b in running
            ],
            now=models.utcnow(),
        )


def _ticks(ctx: Context, backend: str, url: str, home: Path, n: int) -> list[Result]:
    profiles = [f"p{i:02d}" for i in range(PROFILES)]
    with _app(url, home) as app:
        _seed(app, n, profiles, "sandbox", CAP)
        with app.db.read() as s:
            snap = snapshot.build(s, now=models.utcnow())
        settings = app.dispatcher.limits.planner
        in_memory = measure(lambda: plan(snap, settings=settings), repeat=ctx.repeat(20), warmup=2)
        dry = measure(lambda: app.dispatcher.tick(dry_run=True), repeat=ctx.repeat(15), warmup=2)
        spawned: list[int] = []

        def real() -> None:
            spawned.append(len(app.dispatcher.tick().spawned))

        real_stats = measure(
            real, repeat=ctx.repeat(15), warmup=1, setup=lambda: _reset_running(app)
        )
        # The same tick as the dispatcher's loop runs it: no DispatchResult.
        loop_stats = measure(
            app.dispatcher.tick_plan,
            repeat=ctx.repeat(15),
            warmup=1,
            setup=lambda: _reset_running(app),
        )
    label = f"{n:,} ready / {PROFILES} profiles / cap {CAP}"
    limit = 150.0 if backend == "sqlite" else None
    extra = {
        "spawned_per_tick": max(spawned) if spawned else 0,
        "loop_tick_ms": loop_stats.median,
    }
    return [
        Result.from_stats(
            f"[{backend}] tick dry run ({label})",
            dry,
            in_memory,
            target="<= 150 ms (SQLite)" if limit else "report",
            max_ms=limit,
            met=None if limit else True,
            extra={"p90_ms": dry.p90},
        ),
        Result.from_stats(
            f"[{backend}] tick real, no-op spawn ({label})",
            real_stats,
            in_memory,
            target="<= 50 ms",
            max_ms=50.0,
            extra={**extra, "p90_ms": real_stats.p90},
        ),
    ]


def _api(ctx: Context, backend: str, url: str, home: Path) -> list[Result]:
    with _app(url, home) as app, serve_aio_in_process(app.grpc_services()) as srv:
        channel = srv.channel()
        stub = kanban_service_pb2_grpc.KanbanServiceStub(channel)
        worker = worker_service_pb2_grpc.WorkerServiceStub(channel)
        counter = iter(range(10**9))

        def create(assignee: str = "") -> Any:
            return stub.CreateTask(
                pb.CreateTaskRequest(
                    task=task_pb2.Task(title=f"c{next(counter)}", assignee=assignee)
                ),
                timeout=10,
            )

        create_stats = measure(create, repeat=ctx.repeat(300), warmup=10)
        total = ctx.repeat(800)
        started = time.perf_counter()
        threads = [
            threading.Thread(target=lambda: [create() for _ in range(total // 8)]) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        create_rate = (total // 8 * 8) / (time.perf_counter() - started)

        stub.CreateProfile(
            pb.CreateProfileRequest(
                profile=profile_pb2.Profile(name="ext", executor=profile_pb2.EXECUTOR_EXTERNAL)
            ),
            timeout=10,
        )
        cycles = ctx.repeat(1600)
        for _ in range(cycles):
            create("ext")
        done = [0]
        lock = threading.Lock()

        def work(n: int) -> None:
            while True:
                claim = worker.ClaimTask(
                    wpb.ClaimTaskRequest(profile="ext", worker_id=f"w{n}"), timeout=10
                )
                if not claim.HasField("task"):
                    return
                worker.Heartbeat(wpb.HeartbeatRequest(run_id=claim.run_id), timeout=10)
                worker.CompleteTask(wpb.CompleteTaskRequest(run_id=claim.run_id), timeout=10)
                with lock:
                    done[0] += 1

        started = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cycle_rate = done[0] / (time.perf_counter() - started)

        delays: list[float] = []
        stream = stub.WatchEvents(
            pb.WatchEventsRequest(since_event_id=_last_event(app)), timeout=120
        )
        for _ in range(ctx.repeat(200)):
            create()
            event = next(stream).event
            delays.append((time.time() - event.create_time.ToDatetime().timestamp()) * 1000)
        with contextlib.suppress(Exception):
            (getattr(stream, "cancel", None) or stream.close)()
        channel.close()
    watch = Stats.from_samples(delays)
    pg = backend == "postgres"
    return [
        Result.from_stats(
            f"[{backend}] CreateTask latency",
            create_stats,
            target="p50 <= 5 ms",
            max_ms=5.0,
            extra={"per_s_8_threads": round(create_rate, 1)},
        ),
        Result(
            scenario=f"[{backend}] claim+heartbeat+complete, {WORKERS} workers",
            ours_ms=1000.0 / cycle_rate if cycle_rate else float("inf"),
            raw_ms=None,
            target=">= 300 cycles/s (PostgreSQL)" if pg else "report",
            met=(cycle_rate >= 300) if pg else True,
            samples=done[0],
            extra={"cycles_per_s": round(cycle_rate, 1)},
        ),
        Result.from_stats(
            f"[{backend}] WatchEvents delivery delay",
            watch,
            target="p50 <= 50 ms",
            max_ms=50.0,
            extra={"p90_ms": watch.p90},
        ),
    ]


def _last_event(app: KanbanApp) -> int:
    from services.kanban.store import events

    with app.db.read() as s:
        return events.last_event_id(s)


def run(ctx: Context) -> list[Result]:
    """All kanban scenarios on SQLite, then on PostgreSQL."""
    n = int(os.environ.get("LONGSHORE_BENCH_KANBAN_TASKS", "10000"))
    if ctx.quick:
        n = min(n, 2000)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="kanban-bench-") as tmp:
        home = Path(tmp)
        results += _ticks(ctx, "sqlite", f"sqlite:///{home / 'tick.db'}", home, n)
        results += _api(ctx, "sqlite", f"sqlite:///{home / 'api.db'}", home)
        with _postgres() as (base, cluster):
            results += _ticks(ctx, "postgres", _fresh_pg(cluster, base, "bench_tick"), home, n)
            results += _api(ctx, "postgres", _fresh_pg(cluster, base, "bench_api"), home)
    return results


__all__ = ["run"]
