"""Fixtures of the sandbox integration tests: a real manager on the real engine.

Every manager runs in the test's own deployment (``t<run_id>-<n>``), so it can
see and touch only containers this test made; the finaliser removes them and
the session cleanup removes anything left under the run id.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
from longshore.sandbox.v1 import sandbox_service_pb2_grpc

from services.runtime.testing import serve_in_process
from services.sandbox import labels
from services.sandbox.docker_client import create_client
from services.sandbox.manager import SandboxManager
from services.sandbox.reaper import Reaper, StartupGuard
from services.sandbox.server import SandboxServicer, grpc_service
from services.sandbox.settings import SandboxSection


def remove_deployment(client: docker.DockerClient, deployment: str) -> None:
    """Force-removes every container of ``deployment`` (test finaliser)."""
    rows = client.api.containers(all=True, filters={"label": f"{labels.DEPLOYMENT}={deployment}"})
    for row in rows:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(row["Id"], force=True, v=True)


@pytest.fixture
def section(sandbox_image: str) -> SandboxSection:
    """Settings for tests: the test image, fast stops, no background reaper."""
    return SandboxSection(
        default_image=sandbox_image,
        stop_timeout_seconds=1,
        reaper_enabled=False,
        default_memory_bytes=128 * 1024 * 1024,
        default_cpus=0.5,
        default_pids_limit=128,
    )


@pytest.fixture
def engine(docker_client: docker.DockerClient) -> Iterator[docker.DockerClient]:
    """A client with a pool big enough for concurrent handlers."""
    client = create_client(pool_size=48)
    yield client
    client.close()


@pytest.fixture
def make_manager(
    engine: docker.DockerClient, section: SandboxSection, test_deployment: str
) -> Iterator[Callable[..., SandboxManager]]:
    """Factory of managers in the test's deployment; all closed and cleaned at the end."""
    made: list[SandboxManager] = []

    def make(**overrides: Any) -> SandboxManager:
        sec = dataclasses.replace(section, **overrides)
        manager = SandboxManager(engine, sec, deployment=test_deployment)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close(15)
    remove_deployment(engine, test_deployment)


@pytest.fixture
def manager(make_manager: Callable[..., SandboxManager]) -> SandboxManager:
    """One manager in the test's deployment."""
    return make_manager()


@pytest.fixture
def stub(manager: SandboxManager) -> Iterator[sandbox_service_pb2_grpc.SandboxServiceStub]:
    """A generated stub on an in-process server around ``manager``."""
    servicer = SandboxServicer(manager, Reaper(manager, guard=StartupGuard()))
    with serve_in_process([grpc_service(servicer)], max_workers=32) as running:
        yield sandbox_service_pb2_grpc.SandboxServiceStub(running.channel())
