"""Human wording: dispatch decisions, error lines, tables."""

from __future__ import annotations

import io

import grpc
from longshore.kanban.v1 import dispatch_pb2

from clients.cli.commands.dispatch import describe, summary
from clients.cli.errors import describe_rpc_error
from clients.cli.output import Output


def test_dispatch_decisions_read_like_the_operators_expect() -> None:
    result = dispatch_pb2.DispatchResult(
        auto_assigned_default=[dispatch_pb2.DispatchTaskRef(task_id="t1", assignee="x")],
        spawned=[dispatch_pb2.SpawnedTask(task_id="t1", assignee="x", run_id="r1")],
        skipped_per_profile_capped=[
            dispatch_pb2.CappedTask(task_id="t2", assignee="x", running=2, cap=2)
        ],
        skipped_unassigned=["t3"],
        awaiting_worker=[dispatch_pb2.DispatchTaskRef(task_id="t4", assignee="ext")],
        stopped_reason="max_spawn reached (1)",
        not_considered=["t5"],
    )
    lines = describe(result)
    assert "Auto-assigned to kanban.default_assignee='x': t1" in lines
    assert "Spawned (x, run r1): t1" in lines
    assert "Deferred (x at per-profile cap, 2 running): t2" in lines
    assert "Skipped (unassigned): t3" in lines
    assert "Awaiting worker (ext is external): t4" in lines
    assert "Stopped early: max_spawn reached (1)" in lines
    assert "Not considered (walk stopped): t5" in lines
    assert summary(result, "0.010s").startswith("Tick: 1 spawned, 1 deferred, 1 skipped")


def test_dry_run_says_nothing_was_written() -> None:
    result = dispatch_pb2.DispatchResult(
        dry_run=True, spawned=[dispatch_pb2.SpawnedTask(task_id="t1", assignee="x")]
    )
    assert describe(result) == ["Would spawn (x): t1"]
    assert summary(result, "0.001s") == "Dry run (nothing written): 1 to spawn in 0.001s"


class FakeError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_error_lines_name_the_fix() -> None:
    unreachable = describe_rpc_error(FakeError(grpc.StatusCode.UNAVAILABLE, "refused"), "h:1")
    assert unreachable.startswith("cannot reach the gateway at h:1 (refused)")
    backend = describe_rpc_error(
        FakeError(grpc.StatusCode.UNAVAILABLE, "sandbox backend (a:2) unavailable: x"), "h:1"
    )
    assert backend == "unavailable: sandbox backend (a:2) unavailable: x"
    assert "LONGSHORE_API_KEY" in describe_rpc_error(
        FakeError(grpc.StatusCode.UNAUTHENTICATED, "unknown API key"), "h:1"
    )
    assert (
        describe_rpc_error(FakeError(grpc.StatusCode.NOT_FOUND, "task 'x' not found"), "h")
        == "not found: task 'x' not found"
    )


def test_tables_align_columns() -> None:
    buffer = io.StringIO()
    Output(json_mode=False, out=buffer).table(("A", "BB"), [("xxx", 1), ("y", 22)])
    assert buffer.getvalue().splitlines() == ["A    BB", "xxx  1", "y    22"]
