"""The dashboard's HTTP API against the real gateway, kanban and sandbox processes.

Tasks are created through the CLI; the dashboard is a real process with its
own gateway key; a task runs in a real Docker sandbox.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.dashboard.dashboard_process import (
    DashboardProcess,
    cli,
    dashboard_process,
)
from tests.integration.gateway.stack import RealStack, real_stack


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str
) -> Iterator[RealStack]:
    home = tmp_path_factory.mktemp("dash-stack")
    with real_stack(home, deployment=f"t{run_id}-dash", image=sandbox_image) as s:
        yield s


@pytest.fixture(scope="module")
def dash(stack: RealStack) -> Iterator[DashboardProcess]:
    with dashboard_process(stack) as d:
        yield d


def sse(dash: DashboardProcess, path: str, token: str, until: str) -> list[tuple[str, Any]]:
    """Read SSE frames until an event named ``until`` (bounded by the socket timeout)."""
    conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=30)
    conn.request("GET", path, headers={"X-Longshore-Token": token})
    response = conn.getresponse()
    assert response.status == 200
    frames: list[tuple[str, Any]] = []
    name = ""
    while True:
        line = response.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            frames.append((name, json.loads(line[6:])))
            if name == until:
                conn.close()
                return frames


def test_status_and_board_show_cli_tasks(stack: RealStack, dash: DashboardProcess) -> None:
    token = dash.page_token()
    status, public = dash.request("GET", "/api/status")
    assert status == 200 and public["gateway_reachable"] is True
    assert public["auth_required"] is False
    status, detail = dash.request("GET", "/api/status/detail", token=token)
    assert status == 200, detail
    assert {b["name"]: b["health"] for b in detail["gateway"]["backends"]} == {
        "kanban": "serving",
        "sandbox": "serving",
    }
    # The gateway's headline figures: the public status call above finished,
    # this one is still in flight (int64 fields are strings in JSON).
    traffic = detail["gateway"]["traffic"]
    assert int(traffic["calls"]) >= 1 and int(traffic["in_flight_calls"]) >= 1
    assert float(traffic["calls_per_second"]) > 0 and float(traffic["p99_latency_ms"]) > 0
    created = cli(stack, "task", "create", "Written by the CLI", "--priority", "3")
    task_id = created["task_id"] if "task_id" in created else created["task"]["task_id"]
    status, board = dash.request("GET", "/api/boards/default/tasks", token=token)
    assert status == 200, board
    (task,) = [t for t in board["tasks"] if t["task_id"] == task_id]
    assert task["status"] == "ready" and task["priority"] == 3
    assert task["readiness"]["message"]

    status, moved = dash.request(
        "POST", f"/api/tasks/{task_id}/move", token=token, body={"status": "todo"}
    )
    assert status == 200 and moved["task"]["status"] == "todo"
    status, refused = dash.request(
        "POST", f"/api/tasks/{task_id}/move", token=token, body={"status": "done"}
    )
    assert status == 409 and refused["grpc_code"] == "FAILED_PRECONDITION"


def test_a_task_runs_in_a_sandbox_and_its_output_streams(
    stack: RealStack, dash: DashboardProcess, sandbox_image: str
) -> None:
    token = dash.page_token()
    cli(
        stack,
        "profile",
        "create",
        "dash-builder",
        "--executor",
        "sandbox",
        "--image",
        sandbox_image,
    )
    created = cli(
        stack,
        "task",
        "create",
        "Say hello",
        "--assignee",
        "dash-builder",
        "--sh",
        "echo hello from the sandbox; sleep 1; echo done",
    )
    task_id = created["task_id"] if "task_id" in created else created["task"]["task_id"]
    status, tick = dash.request(
        "POST", "/api/dispatcher/tick", token=token, body={"board_id": "default"}
    )
    assert status == 200, tick
    # The kanban's own dispatcher loop may have spawned it first; either way a run exists.
    status, detail = dash.request("GET", f"/api/tasks/{task_id}", token=token)
    assert detail["runs"], (tick, detail)
    frames = sse(dash, f"/api/tasks/{task_id}/output", token, until="end")
    text = "".join(data["text"] for name, data in frames if name == "output")
    assert "hello from the sandbox" in text and "done" in text

    status, detail = dash.request("GET", f"/api/tasks/{task_id}", token=token)
    assert status == 200
    (run,) = detail["runs"]
    assert run["sandbox_id"]
    status, listing = dash.request("GET", "/api/sandboxes", token=token)
    assert status == 200
    assert any(s["task_id"] == task_id for s in listing["sandboxes"]), listing
    status, preview = dash.request("GET", "/api/sandboxes/reap-preview", token=token)
    assert status == 200 and preview["report"]["dry_run"] is True
