"""The folder-based markers and small helpers from tests/support."""

from __future__ import annotations

import socket

import pytest

from tests.support.docker_env import connect_docker
from tests.support.net import free_port


def test_unit_folder_gets_unit_marker(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("integration") is None


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_test_deployment_is_short_and_unique(run_id: str, test_deployment: str) -> None:
    assert len(run_id) == 8
    int(run_id, 16)
    assert test_deployment.startswith(f"t{run_id}-")
    assert len(test_deployment) <= 16


def test_unreachable_engine_fails_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # A non-default DOCKER_HOST makes ensure-docker.sh refuse to start a local dockerd.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/longshore-test.sock")
    with pytest.raises(RuntimeError, match=r"no Docker engine reachable[\s\S]*not starting"):
        connect_docker()
