"""Two kanban processes on one PostgreSQL: exact per-profile caps, no task run twice.

200 ready tasks over five external profiles with a cap of 3; worker threads
claim from both replicas at once. The runs table must show one run per task
and, at every instant, at most 3 running runs per profile.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from google.protobuf import duration_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import kanban_service_pb2_grpc, profile_pb2, worker_service_pb2_grpc
from longshore.kanban.v1 import task_pb2 as S
from longshore.kanban.v1 import worker_service_pb2 as wpb
from sqlalchemy import create_engine, text

from services.runtime.channels import open_channel
from tests.support.net import free_port
from tests.support.processes import ServiceProcess

PROFILES = [f"p{i}" for i in range(5)]
TASKS = 200
CAP = 3
WORKERS_PER_PROFILE = 5


def _replica(url: str, home: Path, name: str) -> ServiceProcess:
    addr = f"127.0.0.1:{free_port()}"
    return ServiceProcess(
        ["python", "-m", "services.kanban"],
        env={
            "LONGSHORE_HOME": str(home),
            "LONGSHORE_DATABASE_URL": url,
            "LONGSHORE_KANBAN_LISTEN": addr,
            "LONGSHORE_KANBAN_DISPATCH_INTERVAL_SECONDS": "0.5",
            "LONGSHORE_KANBAN_MAX_IN_PROGRESS_PER_PROFILE": "7",
            "LONGSHORE_SANDBOX_ADDR": "127.0.0.1:9",
            "LONGSHORE_INTERNAL_TOKEN": "",
        },
        health_addr=addr,
        name=name,
    )


def test_two_replicas_keep_caps_exact_and_never_run_a_task_twice(
    fresh_postgres_db: str, tmp_path: Path
) -> None:
    a = _replica(fresh_postgres_db, tmp_path, "kanban-a")
    b = _replica(fresh_postgres_db, tmp_path, "kanban-b")
    with a, b:
        # Both start (and migrate) at the same time.
        a.spawn()
        b.spawn()
        a.wait_serving(60)
        b.wait_serving(60)
        channels = [open_channel(p.health_addr) for p in (a, b)]
        stubs = [kanban_service_pb2_grpc.KanbanServiceStub(c) for c in channels]
        workers = [worker_service_pb2_grpc.WorkerServiceStub(c) for c in channels]
        for name in PROFILES:
            stubs[0].CreateProfile(
                pb.CreateProfileRequest(
                    profile=profile_pb2.Profile(
                        name=name, executor=profile_pb2.EXECUTOR_EXTERNAL, max_in_progress=CAP
                    )
                ),
                timeout=10,
            )
        for i in range(TASKS):
            stubs[i % 2].CreateTask(
                pb.CreateTaskRequest(
                    task=S.Task(title=f"t{i}", assignee=PROFILES[i % len(PROFILES)], priority=i % 4)
                ),
                timeout=10,
            )
        done = threading.Event()
        errors: list[BaseException] = []
        completed: list[str] = []
        lock = threading.Lock()

        def work(profile: str, n: int) -> None:
            stub = workers[n % 2]
            rng = random.Random(n)
            try:
                while not done.is_set():
                    claim = stub.ClaimTask(
                        wpb.ClaimTaskRequest(
                            profile=profile,
                            worker_id=f"{profile}-w{n}",
                            wait=duration_pb2.Duration(nanos=500_000_000),
                        ),
                        timeout=10,
                    )
                    if not claim.HasField("task"):
                        with lock:
                            if len(completed) >= TASKS:
                                return
                        continue
                    time.sleep(rng.uniform(0, 0.02))
                    stub.Heartbeat(wpb.HeartbeatRequest(run_id=claim.run_id), timeout=10)
                    stub.AppendOutput(
                        wpb.AppendOutputRequest(run_id=claim.run_id, data=b"x"), timeout=10
                    )
                    stub.CompleteTask(wpb.CompleteTaskRequest(run_id=claim.run_id), timeout=10)
                    with lock:
                        completed.append(claim.task.task_id)
            except BaseException as exc:  # surfaced below
                errors.append(exc)
                done.set()

        threads = [
            threading.Thread(target=work, args=(p, i * len(PROFILES) + j), daemon=True)
            for j, p in enumerate(PROFILES)
            for i in range(WORKERS_PER_PROFILE)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 150
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        done.set()
        for c in channels:
            c.close()
        assert not errors, errors[0]
        assert len(completed) == TASKS
        assert len(set(completed)) == TASKS

    engine = create_engine(fresh_postgres_db)
    try:
        with engine.connect() as conn:
            runs = conn.execute(
                text("SELECT task_id, profile, status, start_time, end_time FROM task_runs")
            ).all()
            statuses = dict(
                conn.execute(text("SELECT status, count(*) FROM tasks GROUP BY status")).all()
            )
    finally:
        engine.dispose()
    assert statuses == {"done": TASKS}
    per_task: dict[str, int] = defaultdict(int)
    for run in runs:
        per_task[run.task_id] += 1
    assert len(per_task) == TASKS
    assert max(per_task.values()) == 1, "a task was run twice"
    assert {r.status for r in runs} == {"succeeded"}
    for profile in PROFILES:
        edges = []
        for r in runs:
            if r.profile == profile:
                edges.append((r.start_time, 1))
                edges.append((r.end_time, -1))
        edges.sort(key=lambda e: (e[0], e[1]))  # an end at the same instant frees first
        running = peak = 0
        for _, delta in edges:
            running += delta
            peak = max(peak, running)
        assert peak <= CAP, f"{profile} had {peak} running at once"
        assert peak == CAP, f"{profile} never reached its cap; the test proves little"


pytestmark = pytest.mark.timeout(240)
