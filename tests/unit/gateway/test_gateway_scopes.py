"""Every forwarded method is discovered from the descriptors and has a scope."""

from __future__ import annotations

import pytest

from services.gateway.forwarding import DeadlinePolicy, forwarded_methods, forwarded_service_names
from services.gateway.scopes import METHOD_SCOPES, SCOPES, check_complete


def test_every_forwarded_method_has_a_declared_scope() -> None:
    methods = [m.path for m in forwarded_methods()]
    check_complete([*methods, "/longshore.gateway.v1.GatewayService/GetStatus"])
    assert set(METHOD_SCOPES) == {*methods, "/longshore.gateway.v1.GatewayService/GetStatus"}
    assert all(set(scopes) <= SCOPES for scopes in METHOD_SCOPES.values())


def test_check_complete_names_the_missing_method() -> None:
    with pytest.raises(RuntimeError, match=r"/x\.Y/Z"):
        check_complete(["/x.Y/Z"])


def test_descriptors_give_services_backends_and_streaming() -> None:
    by_path = {m.path: m for m in forwarded_methods()}
    assert forwarded_service_names() == [
        "longshore.sandbox.v1.SandboxService",
        "longshore.kanban.v1.KanbanService",
        "longshore.kanban.v1.WorkerService",
    ]
    assert by_path["/longshore.sandbox.v1.SandboxService/Exec"].server_streaming
    assert by_path["/longshore.sandbox.v1.SandboxService/Exec"].backend == "sandbox"
    assert by_path["/longshore.kanban.v1.KanbanService/WatchEvents"].server_streaming
    assert by_path["/longshore.kanban.v1.WorkerService/ClaimTask"].backend == "kanban"
    assert not by_path["/longshore.kanban.v1.WorkerService/ClaimTask"].server_streaming


def test_deadline_policy_defaults_and_caps() -> None:
    policy = DeadlinePolicy(default_seconds=30, max_unary_seconds=60, max_stream_seconds=3600)
    assert policy.timeout(None, streaming=False) == 30
    assert policy.timeout(1e12, streaming=False) == 30
    assert policy.timeout(1e12, streaming=True) == 3600
    assert policy.timeout(5.0, streaming=False) == 5.0
    assert policy.timeout(500.0, streaming=False) == 60
    assert policy.timeout(7200.0, streaming=True) == 3600
