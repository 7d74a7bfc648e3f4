"""E2B's Python SDK (pinned, unpatched) against the front door, the real stack and engine.

The SDK is pointed at Longshore the way docs/e2b.md says: ``E2B_API_URL`` and
``E2B_SANDBOX_URL`` at the front door, ``E2B_API_KEY`` a Longshore key. Each
test asserts what the engine, kanban or the CLI see, not only what the SDK
says; both refusals are proved (a key without the scope at the gateway,
another key's run at kanban and another task's token at the manager).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import docker
import httpx
import pytest
from e2b import CommandExitException, Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import NotFoundException, RateLimitException, SandboxException, TimeoutException
from longshore.kanban.v1 import kanban_service_pb2, profile_pb2, task_pb2
from longshore.sandbox.v1 import pool_pb2, sandbox_pb2
from longshore.sandbox.v1 import sandbox_service_pb2 as spb

from services.e2b import tokens
from services.sandbox import labels
from tests.integration.e2b.conftest import TEMPLATE, WARM
from tests.integration.e2b.rig import E2bRig, gone
from tests.integration.gateway.stack import auth
from tests.support.processes import REPO_ROOT, service_env

T = 60


def box_of(rig: E2bRig, e2b_id: str) -> spb.ListSandboxesResponse:
    return rig.stubs.sandbox.ListSandboxes(
        spb.ListSandboxesRequest(task_id=e2b_id), timeout=T, metadata=auth(rig.keys.admin)
    )


def task_of(rig: E2bRig, e2b_id: str) -> task_pb2.Task:
    return rig.stubs.kanban.GetTask(
        kanban_service_pb2.GetTaskRequest(task_id=e2b_id), timeout=T, metadata=auth(rig.keys.admin)
    ).task


def test_sandbox_lifecycle_commands_and_files(
    rig: E2bRig, run_id: str, docker_client: docker.DockerClient
) -> None:
    sbx = Sandbox.create(template=TEMPLATE, metadata={"suite": run_id}, timeout=120)
    try:
        boxes = box_of(rig, sbx.sandbox_id).sandboxes
        assert len(boxes) == 1, rig.logs()
        cid = boxes[0].sandbox_id
        assert boxes[0].profile == TEMPLATE
        task = task_of(rig, sbx.sandbox_id)
        assert task.status == task_pb2.TASK_STATUS_RUNNING and task.assignee == TEMPLATE

        # Foreground command: envs, cwd, callbacks for both streams.
        seen_out: list[str] = []
        seen_err: list[str] = []
        result = sbx.commands.run(
            "echo $GREETING; pwd; echo oops >&2",
            envs={"GREETING": "hello"},
            cwd="/tmp",
            timeout=30,
            on_stdout=seen_out.append,
            on_stderr=seen_err.append,
        )
        assert result.exit_code == 0
        assert result.stdout == "hello\n/tmp\n"
        assert result.stderr == "oops\n"
        assert "".join(seen_out) == "hello\n/tmp\n" and "".join(seen_err) == "oops\n"
        with pytest.raises(CommandExitException) as failed:
            sbx.commands.run("echo bye; exit 3", timeout=30)
        assert failed.value.exit_code == 3 and failed.value.stdout == "bye\n"

        # A timed-out command is killed inside the sandbox, not only the stream.
        with pytest.raises(TimeoutException):
            sbx.commands.run("sleep 41", timeout=2)
        left = sbx.commands.run("ps -o args", timeout=30).stdout
        assert "sleep 41" not in left

        # Files: text, 10 MB binary, list, rename, remove, make_dir.
        sbx.files.write("/work/hello.txt", "hi there\n")
        assert sbx.files.read("/work/hello.txt") == "hi there\n"
        blob = os.urandom(10 * 1024 * 1024)
        sbx.files.write("/work/blob.bin", blob)
        assert bytes(sbx.files.read("/work/blob.bin", format="bytes")) == blob
        # The octet-stream upload (the SDK's other body), streamed through.
        sbx.files.write("/work/stream.bin", blob[:3_000_001], use_octet_stream=True)
        assert bytes(sbx.files.read("/work/stream.bin", format="bytes")) == blob[:3_000_001]
        sbx.files.remove("/work/stream.bin")
        names = {e.name for e in sbx.files.list("/work")}
        assert names == {"hello.txt", "blob.bin"}
        moved = sbx.files.rename("/work/hello.txt", "/work/renamed.txt")
        assert moved.path == "/work/renamed.txt"
        assert sbx.commands.run("cat /work/renamed.txt", timeout=30).stdout == "hi there\n"
        assert sbx.files.exists("/work/renamed.txt") and not sbx.files.exists("/work/hello.txt")
        assert sbx.files.make_dir("/work/sub/deeper") is True
        assert sbx.files.make_dir("/work/sub/deeper") is False
        sbx.files.remove("/work/blob.bin")
        assert not sbx.files.exists("/work/blob.bin")
        with pytest.raises(NotFoundException):
            sbx.files.read("/work/no-such-file")

        # Timeout -> the sandbox's lease; set and extend.
        sbx.set_timeout(600)
        lease = box_of(rig, sbx.sandbox_id).sandboxes[0].lease_expire_time.ToSeconds()
        info = sbx.get_info()
        assert info.metadata == {"suite": run_id}
        assert abs(info.end_at.timestamp() - lease) < 2
        sbx.set_timeout(900)
        assert box_of(rig, sbx.sandbox_id).sandboxes[0].lease_expire_time.ToSeconds() > lease + 200

        # List by metadata: ours, and nothing for another value.
        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": run_id})).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        assert Sandbox.list(query=SandboxQuery(metadata={"suite": "other"})).next_items() == []

        # The same sandbox in `longshore sandbox ls`.
        cli = subprocess.run(
            [sys.executable, "-m", "clients.cli.main", "sandbox", "ls"],
            env=service_env(
                {
                    "LONGSHORE_HOME": str(rig.stack.home / "cli-home"),
                    "LONGSHORE_GATEWAY_ADDR": rig.stack.gateway_addr,
                    "LONGSHORE_API_KEY": rig.keys.admin,
                }
            ),
            capture_output=True,
            timeout=120,
            check=True,
            cwd=REPO_ROOT,
        )
        assert cid[:12] in cli.stdout.decode()
    finally:
        sbx.kill()
    # Killed: the container goes (removed on the manager's cleanup worker),
    # the task is done, the SDK sees no sandbox.
    assert gone(docker_client, cid), f"{cid[:12]} still exists 60 s after kill"
    assert task_of(rig, sbx.sandbox_id).status == task_pb2.TASK_STATUS_DONE
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)


def task_count(rig: E2bRig) -> int:
    return len(
        rig.stubs.kanban.ListTasks(
            kanban_service_pb2.ListTasksRequest(page_size=1000),
            timeout=T,
            metadata=auth(rig.keys.admin),
        ).tasks
    )


def _stat(rig: E2bRig, token: str) -> httpx.Response:
    return httpx.post(
        rig.url + "/filesystem.Filesystem/Stat",
        json={"path": "/"},
        headers={"X-Access-Token": token, "Content-Type": "application/json"},
        timeout=T,
    )


def test_refusals_scope_and_ownership(rig: E2bRig) -> None:
    # A key without the scope: the gateway refuses the create.
    with pytest.raises(SandboxException) as denied:
        Sandbox.create(template=TEMPLATE, api_key=rig.keys.reader)
    assert "403" in str(denied.value) and "scope" in str(denied.value)
    # Write but no worker: kanban refuses the claim, and the task made for it goes.
    before = task_count(rig)
    with pytest.raises(SandboxException, match="403"):
        Sandbox.create(template=TEMPLATE, api_key=rig.keys.writer)
    assert task_count(rig) == before
    with pytest.raises(Exception, match="401"):
        Sandbox.create(template=TEMPLATE, api_key="lsk_not-a-key")

    alice = Sandbox.create(template=TEMPLATE, timeout=120)
    bob = Sandbox.create(template=TEMPLATE, timeout=120, api_key=rig.keys.bob)
    try:
        # Another key's sandbox: kanban refuses bob the run (PERMISSION_DENIED).
        with pytest.raises(SandboxException, match="403"):
            Sandbox.kill(alice.sandbox_id, api_key=rig.keys.bob)
        with pytest.raises(SandboxException, match="403"):
            Sandbox.set_timeout(alice.sandbox_id, 60, api_key=rig.keys.bob)
        # The token hides the key it carries, and only the front door's secret seals one.
        assert rig.keys.alice not in (alice._envd_access_token or "")
        mine = rig.sealer.open(bob._envd_access_token or "")
        theirs = rig.sealer.open(alice._envd_access_token or "")
        stranger = tokens.Sealer("s" * 64).seal(theirs)
        refused = _stat(rig, stranger)
        assert refused.status_code == 401, refused.text
        assert "not issued by this front door" in refused.json()["message"]
        # Sealed right (as if the secret leaked) but naming alice's run with bob's key:
        # kanban refuses bob the run.
        forged = rig.sealer.seal(tokens.Access(rig.keys.bob, theirs.run_id, theirs.sandbox_id))
        refused = _stat(rig, forged)
        assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
        # Bob's own, valid run token on alice's sandbox: the manager refuses it.
        crossed = rig.sealer.seal(tokens.Access(rig.keys.bob, mine.run_id, theirs.sandbox_id))
        refused = _stat(rig, crossed)
        assert refused.status_code == 403, refused.text
        assert "belongs to task" in refused.json()["message"]
        assert _stat(rig, alice._envd_access_token or "").status_code == 200
        # Alice's sandbox still works for alice.
        assert alice.commands.run("echo still", timeout=30).stdout == "still\n"
    finally:
        alice.kill()
        bob.kill()


def _tasks_of(rig: E2bRig, profile: str) -> list[task_pb2.Task]:
    return [
        t
        for t in rig.stubs.kanban.ListTasks(
            kanban_service_pb2.ListTasksRequest(page_size=500),
            timeout=30,
            metadata=auth(rig.keys.admin),
        ).tasks
        if t.assignee == profile
    ]


def test_profile_cap_applies_to_e2b_creates(rig: E2bRig) -> None:
    first = Sandbox.create(template="capped", timeout=60)
    try:
        with pytest.raises(RateLimitException, match="concurrency cap"):
            Sandbox.create(template="capped", timeout=60)
        # The refused create made nothing (kanban creates and claims at once).
        assert [t.task_id for t in _tasks_of(rig, "capped")] == [first.sandbox_id]
    finally:
        first.kill()
    # The cap freed: a new create succeeds.
    Sandbox.create(template="capped", timeout=60).kill()


def test_a_create_whose_sandbox_cannot_be_made_leaves_no_task(rig: E2bRig, run_id: str) -> None:
    # The claim succeeds, the acquire fails (the profile's image is not on
    # the engine): the run ends as a platform failure and the task goes, so
    # no external worker of the profile ever takes a caller's create.
    rig.stubs.kanban.CreateProfile(
        kanban_service_pb2.CreateProfileRequest(
            profile=profile_pb2.Profile(
                name="broken-tpl",
                executor=profile_pb2.EXECUTOR_EXTERNAL,
                sandbox_spec=sandbox_pb2.SandboxSpec(image=f"longshore-test/absent:{run_id}"),
            )
        ),
        timeout=30,
        metadata=auth(rig.keys.admin),
    )
    with pytest.raises(SandboxException, match="absent"):
        Sandbox.create(template="broken-tpl", timeout=60)
    assert _tasks_of(rig, "broken-tpl") == []


def test_background_command_connect_stdin_and_kill(rig: E2bRig) -> None:
    sbx = Sandbox.create(template=TEMPLATE, timeout=120)
    try:
        echo = sbx.commands.run("cat; echo done", background=True, stdin=True, timeout=60)
        assert echo.pid in {p.pid for p in sbx.commands.list()}
        sbx.commands.send_stdin(echo.pid, "ping\n")
        again = sbx.commands.connect(echo.pid, timeout=60)
        sbx.commands.close_stdin(echo.pid)
        result = again.wait()
        assert (result.exit_code, result.stdout) == (0, "ping\ndone\n")

        sleeper = sbx.commands.run("sleep 301", background=True, timeout=120)
        assert sbx.commands.kill(sleeper.pid)
        with pytest.raises(CommandExitException):
            sleeper.wait()
        assert "sleep 301" not in sbx.commands.run("ps -o args", timeout=30).stdout
        assert sleeper.pid not in {p.pid for p in sbx.commands.list()}
    finally:
        sbx.kill()


def test_pause_connect_and_a_timeout_that_ends_like_any_lease(
    rig: E2bRig, docker_client: docker.DockerClient
) -> None:
    sbx = Sandbox.create(template=TEMPLATE, timeout=120)
    try:
        cid = box_of(rig, sbx.sandbox_id).sandboxes[0].sandbox_id
        assert sbx.pause() is True
        assert docker_client.api.inspect_container(cid)["State"]["Status"] == "paused"
        assert Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
        back = Sandbox.connect(sbx.sandbox_id)
        assert docker_client.api.inspect_container(cid)["State"]["Status"] == "running"
        assert back.commands.run("echo back", timeout=30).stdout == "back\n"
    except BaseException:
        sbx.kill()
        raise
    # A short timeout: the manager's lease removes the sandbox (as any lease),
    # and the front door completes its task; nobody calls kill.
    sbx.set_timeout(2)
    assert gone(docker_client, cid), f"{cid[:12]} outlived its 2 s lease by 60 s"
    deadline = time.monotonic() + 60
    while task_of(rig, sbx.sandbox_id).status != task_pb2.TASK_STATUS_DONE:
        assert time.monotonic() < deadline, "the task of an expired sandbox was not completed"
        threading.Event().wait(0.2)
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)


def wait_pool_ready(rig: E2bRig, profile: str, size: int, bound: float = 120.0) -> bool:
    """Whether the profile's pool holds ``size`` ready members within ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        pools = rig.stubs.sandbox.ListWarmPools(
            pool_pb2.ListWarmPoolsRequest(profile=profile), timeout=T, metadata=auth(rig.keys.admin)
        ).pools
        if pools and pools[0].ready >= size:
            return True
        threading.Event().wait(0.1)
    return False


def test_a_warm_template_hands_out_a_pool_member(
    rig: E2bRig, docker_client: docker.DockerClient
) -> None:
    assert wait_pool_ready(rig, WARM, 2), rig.logs()
    sbx = Sandbox.create(template=WARM, timeout=60)
    try:
        (box,) = box_of(rig, sbx.sandbox_id).sandboxes
        created = docker_client.api.inspect_container(box.sandbox_id)
        # A pool member keeps the warm label it was started with.
        assert created["Config"]["Labels"].get(labels.WARM) == "1"
        assert sbx.commands.run("echo warm", timeout=30).stdout == "warm\n"
        # The pool refills behind the handout.
        assert wait_pool_ready(rig, WARM, 2), rig.logs()
    finally:
        sbx.kill()


def test_unsupported_calls_answer_their_documented_status(rig: E2bRig) -> None:
    sbx = Sandbox.create(template=TEMPLATE, timeout=60)
    try:
        with pytest.raises(SandboxException, match="UNIMPLEMENTED"):
            sbx.files.watch_dir("/tmp")
        key = {"X-API-Key": rig.keys.alice}
        assert httpx.get(rig.url + "/templates", headers=key, timeout=T).status_code == 501
        assert (
            httpx.post(
                rig.url + f"/sandboxes/{sbx.sandbox_id}/snapshots", headers=key, timeout=T
            ).status_code
            == 501
        )
        # An unknown template (no such profile) is the gateway's NOT_FOUND.
        with pytest.raises(SandboxException, match="404"):
            Sandbox.create(template="no-such-profile")
    finally:
        sbx.kill()
