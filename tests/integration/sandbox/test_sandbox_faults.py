"""Faults against the real engine: stopped commands stay stopped, dead managers' leftovers
go, an unreachable engine is reported truthfully, and bad input is never INTERNAL.

Processes of a command are checked with ``docker top`` (the engine's view, not
the manager's); "the next step never ran" is checked by waiting past the step's
start and looking for the file it would write.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from services.gateway.status import BackendHealth
from services.runtime.channels import open_channel
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.testing import serve_in_process
from services.sandbox import labels
from services.sandbox.docker_client import engine_call
from services.sandbox.manager import SandboxManager
from services.sandbox.model import ExecCommand, Spec
from services.sandbox.owners import identity
from services.sandbox.reaper import Reaper, StartupGuard
from services.sandbox.server import SandboxServicer, grpc_service
from services.sandbox.settings import SandboxSection
from tests.support.engine_proxy import EngineProxy
from tests.support.health import probe_address

from .conftest import remove_deployment
from .test_sandbox_processes import Manager

T = 60
STEP = "sleep 2; touch /tmp/after"


def wait_for(check: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Polls ``check`` until it holds; fails naming ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def commands(engine: docker.DockerClient, cid: str) -> list[str]:
    """The command line of every process in a sandbox, as ``docker top`` shows them."""
    top = engine.api.top(cid)
    col = top["Titles"].index("CMD")
    return [str(row[col]) for row in top["Processes"]]


def of_command(engine: docker.DockerClient, cid: str, needle: str) -> list[str]:
    return [c for c in commands(engine, cid) if needle in c]


def exec_all(
    stub: SandboxServiceStub, cid: str, argv: list[str], timeout_s: int = 0
) -> tuple[bytes, bytes, sandbox_pb2.ExecExit]:
    req = sandbox_service_pb2.ExecRequest(sandbox_id=cid, argv=argv)
    if timeout_s:
        req.timeout.CopyFrom(duration_pb2.Duration(seconds=timeout_s))
    out, err, exit_ = b"", b"", None
    for msg in stub.Exec(req, timeout=T):
        if msg.HasField("output"):
            if msg.output.stream == sandbox_pb2.OUTPUT_STREAM_STDERR:
                err += msg.output.data
            else:
                out += msg.output.data
        else:
            exit_ = msg.exit
    assert exit_ is not None, "the stream ended without an ExecExit"
    return out, err, exit_


def exists(stub: SandboxServiceStub, cid: str, path: str) -> bool:
    return exec_all(stub, cid, ["test", "-e", path])[2].exit_code == 0


def acquire(stub: SandboxServiceStub, task: str, pids_limit: int = 0) -> str:
    req = sandbox_service_pb2.AcquireSandboxRequest(
        task_id=task, profile="faults", spec=sandbox_pb2.SandboxSpec(pids_limit=pids_limit)
    )
    return str(stub.AcquireSandbox(req, timeout=T).sandbox.sandbox_id)


def assert_step_never_runs(stub: SandboxServiceStub, cid: str, started: float) -> None:
    # Waiting is the check here: the step would have run 2 s after the start.
    while time.monotonic() < started + 4:
        assert not exists(stub, cid, "/tmp/after"), "the command's next step ran"
        time.sleep(0.5)
    assert not exists(stub, cid, "/tmp/after"), "the command's next step ran"


# ---- a stopped command is stopped (in-process manager) ---------------------------


@pytest.fixture
def raw_stub(manager: SandboxManager) -> Iterator[SandboxServiceStub]:
    """A stub on a plain channel: its streaming calls are grpc calls that can be cancelled."""
    servicer = SandboxServicer(manager, Reaper(manager, guard=StartupGuard()))
    with (
        serve_in_process([grpc_service(servicer)], max_workers=16) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        yield SandboxServiceStub(channel)


def test_cancel_leaves_no_process_and_no_next_step(
    raw_stub: SandboxServiceStub, stub: SandboxServiceStub, engine: docker.DockerClient
) -> None:
    cid = acquire(stub, "cancel")
    call = raw_stub.Exec(
        sandbox_service_pb2.ExecRequest(sandbox_id=cid, argv=["sh", "-c", STEP]), timeout=T
    )
    started = time.monotonic()
    wait_for(lambda: bool(of_command(engine, cid, "sleep 2")), "the command to start")
    call.cancel()
    wait_for(lambda: not of_command(engine, cid, "sleep 2"), "the command's processes to go")
    assert_step_never_runs(stub, cid, started)
    assert not of_command(engine, cid, "touch"), commands(engine, cid)


def test_timeout_leaves_no_process_and_no_next_step(
    stub: SandboxServiceStub, engine: docker.DockerClient
) -> None:
    cid = acquire(stub, "timeout")
    started = time.monotonic()
    _, _, exit_ = exec_all(stub, cid, ["sh", "-c", "sleep 1 & " + STEP], timeout_s=1)
    assert exit_.timed_out and exit_.exit_code == -1 and exit_.signal == 9
    assert not of_command(engine, cid, "sleep 2"), commands(engine, cid)
    # The manager's spare (a shell waiting for its line) is no leftover of the Exec.
    shells = [c for c in of_command(engine, cid, "sh -c") if "longshore-spare" not in c]
    assert not shells, commands(engine, cid)
    assert_step_never_runs(stub, cid, started)


def test_command_at_the_pids_limit_is_killed_and_the_sandbox_stays_usable(
    stub: SandboxServiceStub, engine: docker.DockerClient
) -> None:
    cid = acquire(stub, "pids", pids_limit=32)
    # Fill every pid the limit allows and hold them: the subshell forks until
    # fork fails, then the root takes the slot it freed and turns into a sleep.
    fill = "( while :; do sleep 1000 & done ) 2>/dev/null; sleep 1000 & exec sleep 1000"
    _, err, exit_ = exec_all(stub, cid, ["sh", "-c", fill], timeout_s=3)
    assert exit_.timed_out and exit_.exit_code == -1, (exit_, err[-300:])
    wait_for(lambda: not of_command(engine, cid, "sleep 1000"), "the filled pids to be freed")
    out, _, after = exec_all(stub, cid, ["echo", "usable"])
    assert (out, after.exit_code) == (b"usable\n", 0)


def test_killer_that_cannot_start_restarts_the_sandbox_and_says_so(
    stub: SandboxServiceStub, engine: docker.DockerClient
) -> None:
    cid = acquire(stub, "restart")
    name_before = engine.api.inspect_container(cid)["Name"]
    # Without /bin/sh no killer can start in the sandbox, just as at a pids limit
    # where the engine cannot start an exec.
    _, err, exit_ = exec_all(
        stub, cid, ["sh", "-c", "mv /bin/sh /bin/sh.off; exec sleep 1000"], timeout_s=2
    )
    assert exit_.timed_out and exit_.exit_code == -1
    assert b"the sandbox was restarted" in err, err
    assert not of_command(engine, cid, "sleep 1000"), commands(engine, cid)
    data = engine.api.inspect_container(cid)
    assert data["State"]["Running"] and data["Name"] == name_before
    assert data["Config"]["Labels"][labels.PERSIST] == "true"
    assert exec_all(stub, cid, ["mv", "/bin/sh.off", "/bin/sh"])[2].exit_code == 0
    assert exec_all(stub, cid, ["sh", "-c", "echo ok"])[0] == b"ok\n"


# ---- dead managers' leftovers (real manager processes) ---------------------------


@pytest.fixture
def proc_env(
    sandbox_image: str, test_deployment: str, tmp_path: Path, engine: docker.DockerClient
) -> Iterator[dict[str, str]]:
    yield {
        "LONGSHORE_DEPLOYMENT": test_deployment,
        "LONGSHORE_INTERNAL_TOKEN": secrets.token_hex(16),
        "LONGSHORE_HOME": str(tmp_path),
        "LONGSHORE_SANDBOX_DEFAULT_IMAGE": sandbox_image,
        "LONGSHORE_SANDBOX_STOP_TIMEOUT_SECONDS": "1",
        "LONGSHORE_SANDBOX_DEFAULT_MEMORY_BYTES": str(128 * 1024 * 1024),
        "LONGSHORE_SANDBOX_ENGINE_PROBE_INTERVAL_SECONDS": "0.5",
        "LONGSHORE_LOG_LEVEL": "INFO",
    }
    remove_deployment(engine, test_deployment)


@pytest.fixture
def procs() -> Iterator[list[Manager]]:
    made: list[Manager] = []
    yield made
    for m in made:
        m.close()


def spawn(procs: list[Manager], env: dict[str, str], name: str) -> Manager:
    m = Manager(env, name)
    procs.append(m)
    return m.start()


def test_kill_9_during_an_exec_then_the_next_manager_ends_it(
    procs: list[Manager], proc_env: dict[str, str], engine: docker.DockerClient
) -> None:
    first = spawn(procs, proc_env, "sandbox-dying")
    cid = acquire(first.stub, "orphan")
    req = sandbox_service_pb2.ExecRequest(
        sandbox_id=cid, argv=["sh", "-c", "sleep 3; touch /tmp/after"]
    )
    # The stream (a generator on this channel) starts when read: read it on a
    # thread, which ends with UNAVAILABLE once the manager is gone.
    ended: list[BaseException] = []

    def read() -> None:
        try:
            list(first.stub.Exec(req, timeout=T))
        except grpc.RpcError as exc:
            ended.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: bool(of_command(engine, cid, "sleep 3")), "the command to start")
    first.proc.kill()
    first.proc.wait(timeout=10)
    reader.join(timeout=T)
    started = time.monotonic()
    second = spawn(procs, proc_env, "sandbox-next")
    wait_for(lambda: not of_command(engine, cid, "sleep 3"), "the orphaned command to go")
    assert not of_command(engine, cid, "sh -c"), commands(engine, cid)
    assert "ended an exec left over by a dead manager" in second.proc.log_text()
    while time.monotonic() < started + 4:
        time.sleep(0.5)
    assert not exists(second.stub, cid, "/tmp/after"), "the orphaned command's next step ran"


def test_non_persistent_sandbox_of_a_killed_manager_is_removed_by_the_next(
    procs: list[Manager], proc_env: dict[str, str], engine: docker.DockerClient
) -> None:
    first = spawn(procs, proc_env, "sandbox-owner")
    req = sandbox_service_pb2.AcquireSandboxRequest(
        task_id="ephemeral", profile="faults", persist_across_processes=False
    )
    ephemeral = first.stub.AcquireSandbox(req, timeout=T).sandbox
    kept = acquire(first.stub, "kept")
    assert ephemeral.owner, ephemeral
    first.proc.kill()
    first.proc.wait(timeout=10)
    spawn(procs, proc_env, "sandbox-heir")

    def gone() -> bool:
        return not engine.api.containers(all=True, filters={"id": ephemeral.sandbox_id})

    # Promptly: far below the 300 s lifetime plus the 600 s grace of an unknown owner.
    wait_for(gone, "the dead manager's non-persistent sandbox to be removed", limit=30)
    assert engine.api.inspect_container(kept)["State"]["Running"]


def test_reaper_tick_removes_only_non_persistent_sandboxes_of_dead_owners(
    make_manager: Callable[..., SandboxManager],
    engine: docker.DockerClient,
    section: SandboxSection,
    test_deployment: str,
) -> None:
    alive = make_manager()  # its fixture removes the deployment's containers at the end
    # This process's own pid with another start time: a manager that died and
    # whose pid was reused, which the liveness rule must call dead.
    me = identity()
    dead_owner = f"gone.p{me.boot_id}.{me.pid_namespace}.{os.getpid()}.1"
    dead = SandboxManager(engine, section, deployment=test_deployment, owner=dead_owner)
    doomed = dead.acquire("doomed", "faults", Spec(), persist=False).sandbox.sandbox_id
    kept = dead.acquire("kept", "faults", Spec()).sandbox.sandbox_id
    mine = alive.acquire("mine", "faults", Spec(), persist=False).sandbox.sandbox_id
    Reaper(alive, guard=StartupGuard()).tick(alive.clock())
    alive.cleanup.drain(30)
    assert not engine.api.containers(all=True, filters={"id": doomed})
    for cid in (kept, mine):
        assert engine.api.inspect_container(cid)["State"]["Running"]
    dead.close(0)


def test_engine_cut_for_ten_seconds_is_reported_and_recovered(
    procs: list[Manager], proc_env: dict[str, str], engine: docker.DockerClient
) -> None:
    with EngineProxy() as proxy:
        m = spawn(procs, {**proc_env, "DOCKER_HOST": proxy.docker_host}, "sandbox-cut")
        cid = acquire(m.stub, "cut")
        assert exec_all(m.stub, cid, ["echo", "before"])[0] == b"before\n"
        proxy.cut()
        cut_at = time.monotonic()
        wait_for(
            lambda: probe_address(m.addr).detail.startswith("docker engine unreachable"),
            "health NOT_SERVING with the engine's reason",
        )
        health = probe_address(m.addr)
        assert health.health == BackendHealth.BACKEND_HEALTH_NOT_SERVING, health
        assert "connection refused" in health.detail, health.detail
        for call in (
            lambda: acquire(m.stub, "cut-2"),
            lambda: exec_all(m.stub, cid, ["echo", "during"]),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "docker engine unreachable" in str(err.value.details())
        while time.monotonic() < cut_at + 10:
            time.sleep(0.5)
        proxy.restore()
        wait_for(
            lambda: probe_address(m.addr).health == BackendHealth.BACKEND_HEALTH_SERVING,
            "health SERVING again",
        )
        assert exec_all(m.stub, cid, ["echo", "after"])[0] == b"after\n"
        m.close()


# ---- precise errors ----------------------------------------------------------------


def test_engine_400_on_a_bad_image_reference_is_invalid_argument(
    manager: SandboxManager, stub: SandboxServiceStub
) -> None:
    # At the client level, with a real engine call the policy never sees.
    with (
        pytest.raises(InvalidArgument) as err,
        engine_call("containers.create", image="Bad/UPPER:ref"),
    ):
        manager.api.create_container("Bad/UPPER:ref", command=["true"])
    assert "invalid reference format" in err.value.message
    assert len(err.value.message) < 300
    # Through the RPC: refused by the policy or by the engine, never INTERNAL.
    with pytest.raises(grpc.RpcError) as rpc:
        req = sandbox_service_pb2.AcquireSandboxRequest(
            task_id="badref", profile="faults", spec=sandbox_pb2.SandboxSpec(image="Bad/UPPER:ref")
        )
        stub.AcquireSandbox(req, timeout=T)
    assert rpc.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    ), rpc.value.details()


def test_engine_conflict_and_not_found_are_typed(manager: SandboxManager) -> None:
    cid = manager.acquire("conflict", "faults", Spec()).sandbox.sandbox_id
    with (
        pytest.raises(FailedPrecondition) as err,
        engine_call("containers.remove", resource=f"sandbox {cid!r}"),
    ):
        # Removing a running container without force: the engine's 409.
        manager.api.remove_container(cid)
    assert "conflict" in err.value.message.lower()
    with (
        pytest.raises(NotFound) as missing,
        engine_call("containers.inspect", resource="sandbox 'nope'"),
    ):
        manager.api.inspect_container("nope-" + secrets.token_hex(8))
    assert missing.value.message == "sandbox 'nope' not found"


def forged_tokens() -> list[str]:
    import base64

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode()

    return [
        "!!!",
        "é",
        "A" * 5000,
        b64(b"not json"),
        b64(b"[1, 2]"),
        b64(b'{"c": "x", "i": "y"}'),
        b64(b'{"c": 1e400, "i": "y"}'),
        b64(b'{"c": -1, "i": "y"}'),
        b64(b'{"c": true, "i": "y"}'),
        b64(b'{"c": 1, "i": 5}'),
        b64(b'{"c": 1}'),
        b64(b"[" * 5000 + b"]" * 5000),
    ]


@pytest.mark.parametrize("token", forged_tokens())
def test_forged_page_tokens_are_invalid_argument(stub: SandboxServiceStub, token: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.ListSandboxes(sandbox_service_pb2.ListSandboxesRequest(page_token=token), timeout=T)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(err.value.details()).startswith("page_token:")


def test_huge_durations_caps_and_ids_are_refused_naming_the_field(
    stub: SandboxServiceStub,
) -> None:
    cid = acquire(stub, "bounds")
    huge = duration_pb2.Duration(seconds=2**62)
    cases: list[tuple[Callable[[], object], str]] = [
        (
            lambda: list(
                stub.Exec(
                    sandbox_service_pb2.ExecRequest(sandbox_id=cid, argv=["true"], timeout=huge),
                    timeout=T,
                )
            ),
            "timeout:",
        ),
        (
            lambda: list(
                stub.Exec(
                    sandbox_service_pb2.ExecRequest(
                        sandbox_id=cid, argv=["true"], max_output_bytes=2**62
                    ),
                    timeout=T,
                )
            ),
            "max_output_bytes:",
        ),
        (
            lambda: stub.ReapOrphans(
                sandbox_service_pb2.ReapOrphansRequest(max_age=huge, dry_run=True), timeout=T
            ),
            "max_age:",
        ),
        (
            lambda: stub.GetSandbox(
                sandbox_service_pb2.GetSandboxRequest(sandbox_id="x" * 1_000_000), timeout=T
            ),
            "sandbox_id:",
        ),
    ]
    for call, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.OUT_OF_RANGE,
        ), err.value.details()
        details = str(err.value.details())
        assert details.startswith(field) and len(details) < 300, details[:300]


def test_unknown_long_ids_are_not_echoed_whole(manager: SandboxManager) -> None:
    ref = "y" * 128
    with pytest.raises(Exception) as err:
        manager.get(ref)
    assert "not found" in str(err.value) and "y" * 101 not in str(err.value)
    events = manager.exec(ref, ExecCommand(argv=("true",)))
    with pytest.raises(Exception) as again:
        next(events)
    assert "y" * 101 not in str(again.value)


def test_engine_proxy_relays_exec_streams_and_cut_refuses(engine: docker.DockerClient) -> None:
    with EngineProxy() as proxy:
        client = docker.DockerClient(base_url=proxy.docker_host, timeout=30)
        assert client.ping()
        proxy.cut()
        assert proxy.is_cut
        with pytest.raises(Exception) as err:
            client.ping()
        assert "refused" in str(err.value).lower()
        proxy.restore()
        assert client.ping()
        client.close()


def test_a_manager_started_while_the_engine_is_down_serves_not_serving_then_recovers(
    procs: list[Manager], proc_env: dict[str, str]
) -> None:
    with EngineProxy() as proxy:
        proxy.cut()
        m = Manager({**proc_env, "DOCKER_HOST": proxy.docker_host}, "sandbox-born-cut")
        procs.append(m)
        m.proc.spawn()
        wait_for(
            lambda: probe_address(m.addr).detail.startswith("docker engine unreachable"),
            "a NOT_SERVING manager that says why, instead of an exit",
        )
        assert probe_address(m.addr).health == BackendHealth.BACKEND_HEALTH_NOT_SERVING
        proxy.restore()
        m.proc.wait_serving(30)
        m.channel = open_channel(m.addr, internal_token=m.token)
        cid = acquire(m.stub, "born-cut")
        assert exec_all(m.stub, cid, ["echo", "up"])[0] == b"up\n"
        m.close()
