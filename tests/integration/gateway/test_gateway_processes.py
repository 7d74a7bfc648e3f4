"""The gateway in front of the real kanban and sandbox services, all as processes.

Covers, through generated stubs and the status code the client sees: backends
refusing calls without the internal credential, API keys and scopes, upstream
errors passed through unchanged, deadlines reaching a long poll and a stream,
a cancelled Exec killing its command inside the sandbox, GetStatus, buf curl
via reflection, a rate limit, a message size bound, and a backend that is down.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from longshore.gateway.v1 import gateway_service_pb2
from longshore.kanban.v1 import (
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    profile_pb2,
    task_pb2,
    worker_service_pb2,
)
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2, sandbox_service_pb2_grpc

from services.runtime.channels import open_channel
from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.support.net import free_port
from tests.support.processes import REPO_ROOT, ServiceProcess

BackendHealth = gateway_service_pb2.BackendHealth
BUF = REPO_ROOT / "tools" / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str
) -> Iterator[RealStack]:
    home = tmp_path_factory.mktemp("gw-stack")
    with real_stack(home, deployment=f"t{run_id}-gwp", image=sandbox_image) as s:
        yield s


@pytest.fixture(scope="module")
def stubs(stack: RealStack) -> Iterator[Stubs]:
    with stack.channel() as channel:
        yield Stubs(channel)


def failure(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code(), info.value.details()


def test_backends_refuse_calls_without_the_internal_token(stack: RealStack) -> None:
    with grpc.insecure_channel(stack.kanban_addr) as channel:
        code, details = failure(
            lambda: kanban_service_pb2_grpc.KanbanServiceStub(channel).ListBoards(
                kanban_service_pb2.ListBoardsRequest(), timeout=5
            )
        )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "internal credential" in details
    with grpc.insecure_channel(stack.sandbox_addr) as channel:
        code, _ = failure(
            lambda: sandbox_service_pb2_grpc.SandboxServiceStub(channel).ListSandboxes(
                sandbox_service_pb2.ListSandboxesRequest(), timeout=5
            )
        )
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_keys_and_scopes(stack: RealStack, stubs: Stubs) -> None:
    boards = kanban_service_pb2.ListBoardsRequest()
    assert failure(lambda: stubs.kanban.ListBoards(boards, timeout=5))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    code, _ = failure(lambda: stubs.kanban.ListBoards(boards, timeout=5, metadata=auth("lsk_x")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert stubs.kanban.ListBoards(boards, timeout=5, metadata=auth(stack.keys.reader)).boards
    create = kanban_service_pb2.CreateTaskRequest(task=task_pb2.Task(title="no"))
    code, details = failure(
        lambda: stubs.kanban.CreateTask(create, timeout=5, metadata=auth(stack.keys.reader))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "needs scope 'write'" in details


def test_upstream_errors_pass_through_unchanged(stack: RealStack, stubs: Stubs) -> None:
    """The same bad call answered directly by a backend and through the gateway."""
    calls = [
        (
            "GetTask",
            kanban_service_pb2.GetTaskRequest(task_id="t-nope"),
            lambda ch: kanban_service_pb2_grpc.KanbanServiceStub(ch).GetTask,
            stack.kanban_addr,
        ),
        (
            "CreateTask",
            kanban_service_pb2.CreateTaskRequest(task=task_pb2.Task(title="")),
            lambda ch: kanban_service_pb2_grpc.KanbanServiceStub(ch).CreateTask,
            stack.kanban_addr,
        ),
        (
            "AcquireSandbox",
            sandbox_service_pb2.AcquireSandboxRequest(
                task_id="t1",
                profile="p",
                spec=sandbox_pb2.SandboxSpec(
                    volumes=[sandbox_pb2.VolumeMount(host_path="rel/x", container_path="/x")]
                ),
            ),
            lambda ch: sandbox_service_pb2_grpc.SandboxServiceStub(ch).AcquireSandbox,
            stack.sandbox_addr,
        ),
    ]
    for name, request, method, backend in calls:
        with open_channel(backend, internal_token=stack.token) as direct:
            expected = failure(lambda: method(direct)(request, timeout=10))
        got = failure(
            lambda: method(stubs.channel)(request, timeout=10, metadata=auth(stack.keys.admin))
        )
        assert got == expected, name
        assert got[0] in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), name


def test_deadlines_reach_a_long_poll_and_a_stream(stack: RealStack, stubs: Stubs) -> None:
    admin = auth(stack.keys.admin)
    stubs.kanban.CreateProfile(
        kanban_service_pb2.CreateProfileRequest(
            profile=profile_pb2.Profile(name="ext-dl", executor=profile_pb2.EXECUTOR_EXTERNAL)
        ),
        timeout=10,
        metadata=admin,
    )
    claim = worker_service_pb2.ClaimTaskRequest(
        profile="ext-dl", worker_id="w1", wait=Duration(seconds=30)
    )
    started = time.monotonic()
    code, _ = failure(lambda: stubs.worker.ClaimTask(claim, timeout=1.0, metadata=admin))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3.0
    started = time.monotonic()
    stream = stubs.kanban.WatchEvents(
        kanban_service_pb2.WatchEventsRequest(), timeout=1.0, metadata=admin
    )
    with pytest.raises(grpc.RpcError) as info:
        for _ in stream:
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3.0


def _ps(stubs: Stubs, sandbox_id: str, key: str) -> str:
    out = b""
    for message in stubs.sandbox.Exec(
        sandbox_service_pb2.ExecRequest(sandbox_id=sandbox_id, argv=["ps"]),
        timeout=20,
        metadata=auth(key),
    ):
        if message.HasField("output"):
            out += message.output.data
    return out.decode()


def test_cancelling_an_exec_stream_kills_the_command(stack: RealStack, stubs: Stubs) -> None:
    """The client cancels at the gateway; the sandbox service kills the command.

    The command keeps printing: the sandbox service notices a cancelled call
    when it next sends output (a silent command is only killed at its timeout).
    """
    # An operator's key: a worker key needs its run's sandbox token (see
    # tests/integration/sandbox/test_sandbox_ownership.py), beside this test's point.
    key = stack.keys.admin
    acquired = stubs.sandbox.AcquireSandbox(
        sandbox_service_pb2.AcquireSandboxRequest(task_id="cancel-me", profile="gw-test"),
        timeout=60,
        metadata=auth(key),
    )
    box = acquired.sandbox.sandbox_id
    try:
        stream = stubs.sandbox.Exec(
            sandbox_service_pb2.ExecRequest(
                sandbox_id=box,
                argv=["sh", "-c", "echo started; while true; do sleep 0.3; echo tick-313; done"],
            ),
            timeout=60,
            metadata=auth(key),
        )
        first = next(stream)
        assert first.output.data.startswith(b"started")
        assert "tick-313" in _ps(stubs, box, key)
        stream.cancel()
        deadline = time.monotonic() + 10
        while "tick-313" in _ps(stubs, box, key):
            assert time.monotonic() < deadline, "the cancelled command still runs"
            time.sleep(0.2)
    finally:
        stubs.sandbox.ReleaseSandbox(
            sandbox_service_pb2.ReleaseSandboxRequest(sandbox_id=box, force_remove=True),
            timeout=30,
            metadata=auth(stack.keys.admin),
        )


def test_status_reports_version_and_backend_health(stack: RealStack, stubs: Stubs) -> None:
    reply = stubs.gateway.GetStatus(
        gateway_service_pb2.GetStatusRequest(), timeout=10, metadata=auth(stack.keys.reader)
    )
    assert reply.version
    assert reply.deployment.startswith("t")
    assert [(b.name, b.address) for b in reply.backends] == [
        ("kanban", stack.kanban_addr),
        ("sandbox", stack.sandbox_addr),
    ]
    assert all(b.health == BackendHealth.BACKEND_HEALTH_SERVING for b in reply.backends)
    assert all(0 < b.latency_ms < 1000 for b in reply.backends)
    # Backends report their release through the runtime's trailing metadata.
    assert [b.version for b in reply.backends] == [reply.version, reply.version]
    assert list(reply.scopes) == ["read"]


def test_buf_curl_lists_services_and_calls_through_reflection(stack: RealStack) -> None:
    assert BUF.exists(), "buf is installed by `make bootstrap` (tools/package.json)"
    url = f"http://{stack.gateway_addr}"
    listed = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert {
        "longshore.gateway.v1.GatewayService",
        "longshore.kanban.v1.KanbanService",
        "longshore.kanban.v1.WorkerService",
        "longshore.sandbox.v1.SandboxService",
    } <= set(listed)
    called = subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-H",
            f"authorization: Bearer {stack.keys.reader}",
            f"{url}/longshore.kanban.v1.KanbanService/ListBoards",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "default" in [b["boardId"] for b in json.loads(called.stdout)["boards"]]


def test_rate_limit_and_message_size_on_a_second_gateway(
    stack: RealStack, stubs: Stubs, tmp_path: Path
) -> None:
    addr = f"127.0.0.1:{free_port()}"
    env = {
        "LONGSHORE_HOME": str(stack.home),
        "LONGSHORE_INTERNAL_TOKEN": stack.token,
        "LONGSHORE_GATEWAY_LISTEN": addr,
        "LONGSHORE_KANBAN_ADDR": stack.kanban_addr,
        "LONGSHORE_SANDBOX_ADDR": stack.sandbox_addr,
        "LONGSHORE_GATEWAY_API_KEYS": stack.keys.entries(),
        "LONGSHORE_GATEWAY_RATE_LIMIT_RPS": "0.01",
        "LONGSHORE_GATEWAY_RATE_LIMIT_BURST": "3",
        "LONGSHORE_GATEWAY_MAX_MESSAGE_BYTES": "65536",
    }
    with ServiceProcess(
        ["python", "-m", "services.gateway"],
        env=env,
        health_addr=addr,
        name="gw2",
        log_dir=tmp_path,
    ) as gw2:
        gw2.start(30)
        with grpc.insecure_channel(addr) as channel:
            s = Stubs(channel)
            big = kanban_service_pb2.CreateTaskRequest(
                task=task_pb2.Task(title="big", description="x" * 100_000)
            )
            code, _ = failure(
                lambda: s.kanban.CreateTask(big, timeout=10, metadata=auth(stack.keys.admin))
            )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            req = kanban_service_pb2.ListBoardsRequest()
            for _ in range(3):
                s.kanban.ListBoards(req, timeout=10, metadata=auth(stack.keys.reader))
            code, details = failure(
                lambda: s.kanban.ListBoards(req, timeout=10, metadata=auth(stack.keys.reader))
            )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "'viewer'" in details
            # Other keys keep their own budget.
            assert s.kanban.ListBoards(req, timeout=10, metadata=auth(stack.keys.admin)).boards


def test_backend_down_is_unavailable_naming_it(stack: RealStack, stubs: Stubs) -> None:
    """Last in the module: it stops the sandbox service."""
    stack.processes["sandbox"].stop()
    code, details = failure(
        lambda: stubs.sandbox.ListSandboxes(
            sandbox_service_pb2.ListSandboxesRequest(), timeout=10, metadata=auth(stack.keys.admin)
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details.startswith(f"sandbox backend ({stack.sandbox_addr}) unavailable")
    reply = stubs.gateway.GetStatus(
        gateway_service_pb2.GetStatusRequest(), timeout=10, metadata=auth(stack.keys.admin)
    )
    health = {b.name: b.health for b in reply.backends}
    assert health == {
        "kanban": BackendHealth.BACKEND_HEALTH_SERVING,
        "sandbox": BackendHealth.BACKEND_HEALTH_UNREACHABLE,
    }
    # The kanban service is still reachable through the same gateway.
    assert stubs.kanban.ListBoards(
        kanban_service_pb2.ListBoardsRequest(), timeout=10, metadata=auth(stack.keys.admin)
    ).boards
