"""The Node worker (clients/node) as an external worker against the real stack.

Sandbox, kanban and gateway run as processes; the worker claims the task over
the gateway, runs its command in its sandbox with Exec, streams the output
back, heartbeats and completes it. Its key has the `worker` scope only, so every
sandbox call is admitted by the run's sandbox token alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from longshore.kanban.v1 import kanban_service_pb2, profile_pb2, task_pb2
from longshore.sandbox.v1 import sandbox_pb2

from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.support.processes import REPO_ROOT

NODE_DIR = REPO_ROOT / "clients" / "node"


@pytest.fixture
def stack(tmp_path: Path, test_deployment: str, sandbox_image: str) -> Iterator[RealStack]:
    with real_stack(tmp_path, deployment=test_deployment, image=sandbox_image) as s:
        yield s


def test_node_worker_runs_an_external_task(stack: RealStack, sandbox_image: str) -> None:
    node = shutil.which("node")
    assert node, "node is required (scripts/bootstrap.sh installs it)"
    assert (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "clients/node dependencies missing: run `bash scripts/bootstrap.sh node`"
    )
    with stack.channel() as channel:
        stubs = Stubs(channel)
        admin = auth(stack.keys.admin)
        stubs.kanban.CreateProfile(
            kanban_service_pb2.CreateProfileRequest(
                profile=profile_pb2.Profile(
                    name="node-ext",
                    executor=profile_pb2.EXECUTOR_EXTERNAL,
                    sandbox_spec=sandbox_pb2.SandboxSpec(image=sandbox_image),
                )
            ),
            timeout=10,
            metadata=admin,
        )
        task = stubs.kanban.CreateTask(
            kanban_service_pb2.CreateTaskRequest(
                task=task_pb2.Task(
                    title="from node",
                    assignee="node-ext",
                    command=["sh", "-c", 'echo "hello from node $GREETING"; echo to-stderr >&2'],
                    # Reads show `<redacted>`; the worker gets the value in
                    # the run's sandbox spec, and its sandbox token admits it.
                    env={"GREETING": "with a secret"},
                )
            ),
            timeout=10,
            metadata=admin,
        ).task
        started = time.monotonic()
        proc = subprocess.run(
            [
                node,
                str(NODE_DIR / "worker.js"),
                "--profile",
                "node-ext",
                "--max-tasks",
                "1",
                "--wait",
                "10",
                "--worker-id",
                "node-e2e",
            ],
            env={
                **os.environ,
                "LONGSHORE_GATEWAY_ADDR": stack.gateway_addr,
                "LONGSHORE_API_KEY": stack.keys.worker,
            },
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert proc.returncode == 0, f"{proc.stderr}\n{stack.logs()}"
        assert '"msg":"completed"' in proc.stderr
        done = stubs.kanban.GetTask(
            kanban_service_pb2.GetTaskRequest(task_id=task.task_id), timeout=10, metadata=admin
        ).task
        assert done.status == task_pb2.TASK_STATUS_DONE, stack.logs()
        output = stubs.kanban.GetRunOutput(
            kanban_service_pb2.GetRunOutputRequest(task_id=task.task_id),
            timeout=10,
            metadata=admin,
        )
        assert b"hello from node with a secret" in output.data
        assert b"to-stderr" in output.data
        assert output.eof
        runs = stubs.kanban.ListTaskRuns(
            kanban_service_pb2.ListTaskRunsRequest(task_id=task.task_id),
            timeout=10,
            metadata=admin,
        ).runs
        assert len(runs) == 1
        assert time.monotonic() - started < 120
