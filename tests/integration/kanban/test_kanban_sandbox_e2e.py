"""End to end: `python -m services.kanban` runs sandbox tasks through `python -m services.sandbox`
on the real engine, and a kanban process killed mid-run is reclaimed and re-run once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import kanban_service_pb2_grpc, profile_pb2
from longshore.kanban.v1 import task_pb2 as S
from longshore.sandbox.v1 import sandbox_pb2

from services.runtime.channels import open_channel
from tests.support.net import free_port
from tests.support.processes import ServiceProcess

TOKEN = "kanban-e2e-token"
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def sandbox_addr(
    docker_client: docker.DockerClient, sandbox_image: str, test_deployment: str, tmp_path: Path
) -> Iterator[str]:
    addr = f"127.0.0.1:{free_port()}"
    proc = ServiceProcess(
        ["python", "-m", "services.sandbox"],
        env={
            "LONGSHORE_HOME": str(tmp_path),
            "LONGSHORE_DEPLOYMENT": test_deployment,
            "LONGSHORE_INTERNAL_TOKEN": TOKEN,
            "LONGSHORE_SANDBOX_LISTEN": addr,
            "LONGSHORE_SANDBOX_DEFAULT_IMAGE": sandbox_image,
            "LONGSHORE_SANDBOX_REAPER_ENABLED": "false",
            "LONGSHORE_SANDBOX_STOP_TIMEOUT_SECONDS": "1",
        },
        health_addr=addr,
        name="sandbox",
    )
    with proc:
        proc.start(60)
        yield addr


def _kanban(tmp_path: Path, sandbox_addr: str, addr: str) -> ServiceProcess:
    return ServiceProcess(
        ["python", "-m", "services.kanban"],
        env={
            "LONGSHORE_HOME": str(tmp_path),
            "LONGSHORE_INTERNAL_TOKEN": TOKEN,
            "LONGSHORE_KANBAN_LISTEN": addr,
            "LONGSHORE_SANDBOX_ADDR": sandbox_addr,
            "LONGSHORE_KANBAN_DISPATCH_INTERVAL_SECONDS": "0.5",
            "LONGSHORE_KANBAN_CLAIM_TTL_SECONDS": "3",
        },
        health_addr=addr,
        name=f"kanban-{free_port()}",
    )


def _wait_status(
    stub: kanban_service_pb2_grpc.KanbanServiceStub, task_id: str, status: int, timeout: float
) -> S.Task:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=10).task
        if last.status == status:
            return last
        time.sleep(0.2)  # another process does the work; nothing to inject here
    raise AssertionError(f"task {task_id} not in {status} after {timeout}s: {last}")


def test_sandbox_tasks_run_fail_and_survive_a_killed_kanban(
    sandbox_addr: str,
    sandbox_image: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    test_deployment: str,
) -> None:
    addr = f"127.0.0.1:{free_port()}"
    first = _kanban(tmp_path, sandbox_addr, addr)
    with first:
        first.start(60)
        channel = open_channel(addr, internal_token=TOKEN)
        stub = kanban_service_pb2_grpc.KanbanServiceStub(channel)
        stub.CreateProfile(
            pb.CreateProfileRequest(
                profile=profile_pb2.Profile(
                    name="sb",
                    executor=profile_pb2.EXECUTOR_SANDBOX,
                    sandbox_spec=sandbox_pb2.SandboxSpec(image=sandbox_image),
                )
            ),
            timeout=10,
        )

        def create(title: str, script: str) -> str:
            return stub.CreateTask(
                pb.CreateTaskRequest(
                    task=S.Task(
                        title=title, assignee="sb", command=["sh", "-c", script], env={"WHO": "e2e"}
                    )
                ),
                timeout=10,
            ).task.task_id

        ok = create("ok", 'echo "hello $WHO"; echo oops >&2')
        bad = create("bad", "exit 3")
        done = _wait_status(stub, ok, S.TASK_STATUS_DONE, 60)
        out = stub.GetRunOutput(pb.GetRunOutputRequest(task_id=ok), timeout=10)
        assert b"hello e2e" in out.data and out.eof
        assert done.sandbox_id
        # Done: its sandbox is force-removed (the profile does not keep it).
        deadline = time.monotonic() + 30
        while docker_client.api.containers(all=True, filters={"id": done.sandbox_id}):
            assert time.monotonic() < deadline, "the done task's sandbox was not released"
            time.sleep(0.2)
        blocked = _wait_status(stub, bad, S.TASK_STATUS_BLOCKED, 60)
        assert blocked.blocked_reason.startswith("2 failures")
        runs = stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=bad), timeout=10).runs
        assert [r.exit_code for r in runs] == [3, 3]

        slow = create("slow", "sleep 3; echo finished")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=slow), timeout=10).runs
            if runs and runs[0].sandbox_id:
                break
            time.sleep(0.2)
        first_sandbox = runs[0].sandbox_id
        assert first_sandbox
        channel.close()
        first.kill()  # mid-run: no chance to finish or release anything
        first.wait(10)

    second = _kanban(tmp_path, sandbox_addr, addr)
    with second:
        second.start(60)
        channel = open_channel(addr, internal_token=TOKEN)
        stub = kanban_service_pb2_grpc.KanbanServiceStub(channel)
        _wait_status(stub, slow, S.TASK_STATUS_DONE, 90)
        runs = stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=slow), timeout=10).runs
        assert sorted(r.status for r in runs) == [2, 6]  # one SUCCEEDED, one LOST
        assert {r.sandbox_id for r in runs} == {first_sandbox}  # re-run in the same sandbox
        events = stub.ListTaskEvents(pb.ListTaskEventsRequest(task_id=slow), timeout=10).events
        assert [e.kind for e in events].count("completed") == 1
        assert "reclaimed" in [e.kind for e in events]
        channel.close()
