"""Fixtures of the kanban suite: one real server per test, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest
from longshore.kanban.v1 import (
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    profile_pb2,
    task_pb2,
    worker_service_pb2_grpc,
)

from services.kanban.backends import BackendBreaker
from services.kanban.executor import RunJob, RunSink
from services.kanban.service import KanbanApp, build_app
from services.kanban.settings import DatabaseSection, KanbanSection, KanbanSettings
from services.runtime.testing import RunningServer, serve_aio_in_process, serve_in_process
from services.sandbox import labels
from services.sandbox.docker_client import create_client
from services.sandbox.manager import SandboxManager
from services.sandbox.reaper import Reaper, StartupGuard
from services.sandbox.server import SandboxServicer
from services.sandbox.server import grpc_service as sandbox_grpc_service
from services.sandbox.settings import SandboxSection


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kanban.db'}"
    return str(request.getfixturevalue("fresh_postgres_db"))


@dataclass
class FakeExecutor:
    """Records started jobs instead of running them (a no-op spawn)."""

    jobs: list[RunJob] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    released: list[tuple[str, str, str]] = field(default_factory=list)
    sink: RunSink | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: threading.Event = field(default_factory=threading.Event)

    def start(self, job: RunJob, sink: RunSink) -> None:
        with self.lock:
            self.jobs.append(job)
            self.sink = sink
        self.started.set()

    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        with self.lock:
            self.cancelled.append(run_id)
        return True

    def release(
        self, task_id: str, profile: str, sandbox_id: str = "", *, force: bool = True
    ) -> object:
        with self.lock:
            self.released.append((task_id, profile, sandbox_id))
        return None


class Clock:
    """A settable clock for the dispatcher (lease expiry without sleeping)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)


@dataclass
class Kanban:
    """A running kanban server and its stubs."""

    app: KanbanApp
    stub: kanban_service_pb2_grpc.KanbanServiceStub
    worker: worker_service_pb2_grpc.WorkerServiceStub
    executor: FakeExecutor
    clock: Clock
    url: str

    def profile(self, name: str, executor: str = "external", cap: int = 0, **kw: Any) -> None:
        value = profile_pb2.Executor.Value("EXECUTOR_" + executor.upper())
        self.stub.CreateProfile(
            kanban_service_pb2.CreateProfileRequest(
                profile=profile_pb2.Profile(name=name, executor=value, max_in_progress=cap, **kw)
            ),
            timeout=10,
        )

    def task(self, title: str = "t", **kw: Any) -> task_pb2.Task:
        parents = kw.pop("parent_ids", [])
        request_id = kw.pop("request_id", "")
        return self.stub.CreateTask(
            kanban_service_pb2.CreateTaskRequest(
                task=task_pb2.Task(title=title, **kw), parent_ids=parents, request_id=request_id
            ),
            timeout=10,
        ).task

    def get(self, task_id: str) -> task_pb2.Task:
        return self.stub.GetTask(
            kanban_service_pb2.GetTaskRequest(task_id=task_id), timeout=10
        ).task

    def events(self, task_id: str = "") -> list[Any]:
        return list(
            self.stub.ListTaskEvents(
                kanban_service_pb2.ListTaskEventsRequest(task_id=task_id, page_size=1000),
                timeout=10,
            ).events
        )


@pytest.fixture
def kanban_factory(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Kanban]]:
    """Start kanban servers on the test's database with the given `kanban` settings."""
    stack: list[Any] = []

    def start(
        sandbox_channel: grpc.Channel | None = None,
        internal_token: str = "",
        deployment: str = "default",
        backend: BackendBreaker | None = None,
        **section: Any,
    ) -> Kanban:
        settings = KanbanSettings(
            home=tmp_path,
            internal_token=internal_token,
            deployment=deployment,
            kanban=replace(KanbanSection(), dispatcher_enabled=False, **section),
            database=DatabaseSection(url=database_url),
        )
        executor = FakeExecutor()
        clock = Clock()
        if sandbox_channel is None:
            # No sandbox manager: spec checks see UNAVAILABLE at once (a
            # socket path nothing listens on, unlike a port that a stack
            # started by another test might hold).
            sandbox_channel = grpc.insecure_channel(f"unix:{tmp_path}/no-sandbox-manager.sock")
            stack.append((None, sandbox_channel))
        app = build_app(
            settings,
            executor=executor,
            instrument=False,
            clock=clock,
            sandbox_channel=sandbox_channel,
            backend=backend,
        )
        ctx = serve_aio_in_process(app.grpc_services())
        running = ctx.__enter__()
        stack.append((ctx, app))
        app.start()
        channel = running.channel()
        return Kanban(
            app=app,
            stub=kanban_service_pb2_grpc.KanbanServiceStub(channel),
            worker=worker_service_pb2_grpc.WorkerServiceStub(channel),
            executor=executor,
            clock=clock,
            url=database_url,
        )

    yield start
    for ctx, app in reversed(stack):
        if ctx is None:
            app.close()  # a channel
            continue
        app.bus.close()
        ctx.__exit__(None, None, None)
        app.close()


SANDBOX_TOKEN = "kanban-suite-internal-token"


@pytest.fixture
def sandbox_manager(
    docker_client: docker.DockerClient, sandbox_image: str, test_deployment: str
) -> Iterator[RunningServer]:
    """A real sandbox manager (real engine, the test's deployment) served in process.

    It requires :data:`SANDBOX_TOKEN`; ``channel()`` carries it. Containers it
    made are removed at the end.
    """
    section = SandboxSection(
        default_image=sandbox_image,
        stop_timeout_seconds=1,
        reaper_enabled=False,
        default_memory_bytes=128 * 1024 * 1024,
        default_cpus=0.5,
        default_pids_limit=128,
    )
    engine = create_client(pool_size=16)
    manager = SandboxManager(engine, section, deployment=test_deployment)
    servicer = SandboxServicer(
        manager, Reaper(manager, guard=StartupGuard()), internal_token=SANDBOX_TOKEN
    )
    try:
        with serve_in_process(
            [sandbox_grpc_service(servicer)], internal_token=SANDBOX_TOKEN, max_workers=16
        ) as running:
            yield running
    finally:
        manager.close(15)
        for row in engine.api.containers(
            all=True, filters={"label": f"{labels.DEPLOYMENT}={test_deployment}"}
        ):
            with contextlib.suppress(docker.errors.NotFound):
                engine.api.remove_container(row["Id"], force=True, v=True)
        engine.close()


@pytest.fixture
def kanban(kanban_factory: Callable[..., Kanban]) -> Kanban:
    """A kanban server with default settings (dispatcher loop off)."""
    return kanban_factory()
