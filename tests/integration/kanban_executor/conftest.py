"""Fixtures of the executor integration tests: the real sandbox service on the real engine.

The sandbox service is its real servicer and manager served in process with an
internal token, in the test's own deployment (``t<run_id>-<n>``); the
finaliser removes every container of that deployment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.kanban.executor import Executor
from services.kanban.sandbox_client import SandboxClient
from services.runtime.testing import RunningServer, serve_in_process
from services.sandbox import labels
from services.sandbox.docker_client import create_client
from services.sandbox.manager import SandboxManager
from services.sandbox.reaper import Reaper, StartupGuard
from services.sandbox.server import SandboxServicer, grpc_service
from services.sandbox.settings import SandboxSection

TOKEN = "kanban-executor-test-token"


@pytest.fixture
def sandbox_service(
    docker_client: docker.DockerClient, sandbox_image: str, test_deployment: str
) -> Iterator[RunningServer]:
    """The real sandbox servicer on a loopback port, requiring the internal token."""
    engine = create_client(pool_size=16)
    section = SandboxSection(
        default_image=sandbox_image,
        stop_timeout_seconds=1,
        reaper_enabled=False,
        default_memory_bytes=128 * 1024 * 1024,
        default_cpus=0.5,
        default_pids_limit=128,
    )
    manager = SandboxManager(engine, section, deployment=test_deployment)
    servicer = SandboxServicer(manager, Reaper(manager, guard=StartupGuard()))
    try:
        with serve_in_process([grpc_service(servicer)], internal_token=TOKEN) as running:
            yield running
    finally:
        manager.close(15)
        rows = engine.api.containers(
            all=True, filters={"label": f"{labels.DEPLOYMENT}={test_deployment}"}
        )
        for row in rows:
            with contextlib.suppress(docker.errors.NotFound):
                engine.api.remove_container(row["Id"], force=True, v=True)
        engine.close()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Spans of the executor and its sandbox client (a local provider, not the global)."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(spans: InMemorySpanExporter) -> TracerProvider:
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    return tp


@pytest.fixture
def client(sandbox_service: RunningServer, provider: TracerProvider) -> Iterator[SandboxClient]:
    """A SandboxClient to the real service."""
    c = SandboxClient(
        sandbox_service.address,
        internal_token=TOKEN,
        acquire_timeout=60,
        exec_grace=10,
        tracer_provider=provider,
    )
    yield c
    c.close()


@pytest.fixture
def executor(client: SandboxClient, provider: TracerProvider) -> Iterator[Executor]:
    """An executor over the real client; heartbeats every 50 ms."""
    ex = Executor(client, max_workers=4, heartbeat_interval=0.05, tracer_provider=provider)
    yield ex
    ex.shutdown(wait=True, timeout=20)
