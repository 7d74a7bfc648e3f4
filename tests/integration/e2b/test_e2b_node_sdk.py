"""E2B's JavaScript SDK (pinned in node/package.json, unpatched) against the front door.

``node/conformance.mjs`` drives the SDK through the same items as the Python
test (create, commands with envs, cwd, callbacks and a timeout, a background
command with stdin, connect and kill, text and 10 MB binary files, list,
rename, remove, timeouts, list by metadata, kill) and prints what it saw;
this test checks that, and the engine and kanban after the kill.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import docker
import pytest
from longshore.kanban.v1 import kanban_service_pb2, task_pb2

from tests.integration.e2b.conftest import TEMPLATE
from tests.integration.e2b.rig import E2bRig, gone
from tests.integration.gateway.stack import auth

NODE_DIR = Path(__file__).parent / "node"


def test_node_sdk_conformance(rig: E2bRig, run_id: str, docker_client: docker.DockerClient) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "e2b").is_dir():
        pytest.fail("node and the pinned e2b package are required: run scripts/bootstrap.sh node")
    suite = f"node-{run_id}"
    env = {
        **os.environ,
        "E2B_API_URL": rig.url,
        "E2B_SANDBOX_URL": rig.url,
        "E2B_API_KEY": rig.keys.alice,
    }
    proc = subprocess.run(
        [node, "conformance.mjs", TEMPLATE, suite],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-4000:] + "\n" + rig.logs()[-4000:]
    seen = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert seen["run"] == {
        "exitCode": 0,
        "stdout": "hello\n/tmp\n",
        "stderr": "oops\n",
        "seen": {"out": "hello\n/tmp\n", "err": "oops\n"},
    }
    assert seen["exit"] == {"exitCode": 3, "stdout": "bye\n"}
    assert seen["timeout"] == "TimeoutError"
    assert "sleep 42" not in seen["psAfterTimeout"]
    assert seen["listed"] is True
    assert seen["background"] == {"exitCode": 0, "stdout": "ping\ndone\n"}
    assert seen["killed"] is True and "sleep 302" not in seen["psAfterKill"]
    assert seen["text"] == "hi there\n" and seen["binaryEqual"] is True
    assert seen["names"] == ["blob.bin", "hello.txt"]
    assert seen["renamed"] == "/work/renamed.txt"
    assert seen["existsAfter"] == {"renamed": True, "blob": False}
    assert seen["madeDir"] == [True, False]
    assert seen["info"]["metadata"] == {"suite": suite}
    assert seen["listedIds"] == [seen["sandboxId"]]
    # Killed through the SDK: kanban completed the task and no container is left.
    task = rig.stubs.kanban.GetTask(
        kanban_service_pb2.GetTaskRequest(task_id=seen["sandboxId"]),
        timeout=60,
        metadata=auth(rig.keys.admin),
    ).task
    assert task.status == task_pb2.TASK_STATUS_DONE
    label = f"io.longshore.task-id={seen['sandboxId']}"
    boxes = [c["Id"] for c in docker_client.api.containers(all=True, filters={"label": label})]
    assert all(gone(docker_client, box) for box in boxes), "a container outlived the kill by 60 s"
