"""The manager as real processes: cross-process get-or-create, SIGTERM drain, kill -9, traces."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import grpc
import pytest
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from services.runtime.channels import open_channel
from services.sandbox import labels
from tests.support.net import free_port
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.processes import ServiceProcess

from .conftest import remove_deployment

T = 30


class Manager:
    """One ``python -m services.sandbox`` process and a stub to it."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self.addr = f"127.0.0.1:{free_port()}"
        self.token = env["LONGSHORE_INTERNAL_TOKEN"]
        self.proc = ServiceProcess(
            ["python", "-m", "services.sandbox"],
            env={**env, "LONGSHORE_SANDBOX_LISTEN": self.addr, "LONGSHORE_SANDBOX_ADDR": self.addr},
            health_addr=self.addr,
            name=name,
        )
        self.channel: grpc.Channel | None = None

    def start(self) -> Manager:
        self.proc.start(timeout=30)
        self.channel = open_channel(self.addr, internal_token=self.token)
        return self

    @property
    def stub(self) -> SandboxServiceStub:
        assert self.channel is not None
        return SandboxServiceStub(self.channel)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.proc.stop(grace=20)


@pytest.fixture
def env(
    sandbox_image: str, test_deployment: str, tmp_path: Path, engine: docker.DockerClient
) -> Iterator[dict[str, str]]:
    yield {
        "LONGSHORE_DEPLOYMENT": test_deployment,
        "LONGSHORE_INTERNAL_TOKEN": secrets.token_hex(16),
        "LONGSHORE_HOME": str(tmp_path),
        "LONGSHORE_SANDBOX_DEFAULT_IMAGE": sandbox_image,
        "LONGSHORE_SANDBOX_STOP_TIMEOUT_SECONDS": "2",
        "LONGSHORE_SANDBOX_DEFAULT_MEMORY_BYTES": str(128 * 1024 * 1024),
        "LONGSHORE_LOG_LEVEL": "INFO",
    }
    remove_deployment(engine, test_deployment)


@pytest.fixture
def managers(env: dict[str, str]) -> Iterator[list[Manager]]:
    made: list[Manager] = []
    yield made
    for m in made:
        m.close()


def spawn(managers: list[Manager], env: dict[str, str], name: str) -> Manager:
    m = Manager(env, name)
    managers.append(m)
    return m.start()


def acquire(
    stub: SandboxServiceStub, task: str, persist: bool = True
) -> sandbox_service_pb2.AcquireSandboxResponse:
    req = sandbox_service_pb2.AcquireSandboxRequest(
        task_id=task, profile="coder", persist_across_processes=persist
    )
    return stub.AcquireSandbox(req, timeout=T)


def test_twenty_threads_across_two_processes_yield_one_container(
    managers: list[Manager], env: dict[str, str], engine: docker.DockerClient
) -> None:
    a, b = spawn(managers, env, "sandbox-a"), spawn(managers, env, "sandbox-b")
    barrier = threading.Barrier(20)
    ids: list[str] = []
    errors: list[BaseException] = []

    def worker(m: Manager) -> None:
        barrier.wait()
        try:
            ids.append(acquire(m.stub, "contended").sandbox.sandbox_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(m,)) for m in (a, b) * 10]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logs = "\n".join(m.proc.log_text()[-4000:] for m in (a, b))
    assert not errors, f"{errors}\n{logs}"
    assert len(set(ids)) == 1
    rows = engine.api.containers(
        all=True,
        filters={"label": labels.key_filters(env["LONGSHORE_DEPLOYMENT"], "coder", "contended")},
    )
    assert [r["Id"] for r in rows] == ids[:1]


def test_sigterm_drains_outstanding_cleanups_before_exit(
    managers: list[Manager], env: dict[str, str], engine: docker.DockerClient
) -> None:
    m = spawn(managers, env, "sandbox-drain")
    ids = [acquire(m.stub, f"drain-{i}").sandbox.sandbox_id for i in range(5)]
    for cid in ids:
        resp = m.stub.ReleaseSandbox(
            sandbox_service_pb2.ReleaseSandboxRequest(sandbox_id=cid, force_remove=True), timeout=T
        )
        assert resp.removal_scheduled
    m.proc.terminate()
    # Past shutdown_timeout_seconds (45 s) the manager dumps every stack and exits 1.
    assert m.proc.wait(timeout=60) == 0, m.proc.log_tail(200)
    remaining = engine.api.containers(
        all=True, filters={"label": f"{labels.DEPLOYMENT}={env['LONGSHORE_DEPLOYMENT']}"}
    )
    assert remaining == []
    assert "cleanup: sandbox removed" in m.proc.log_text()


def test_kill_9_loses_nothing_and_a_restart_reuses_the_sandbox(
    managers: list[Manager], env: dict[str, str]
) -> None:
    first = spawn(managers, env, "sandbox-k1")
    created = acquire(first.stub, "survivor")
    first.proc.kill()
    first.proc.wait(timeout=10)
    second = spawn(managers, env, "sandbox-k2")
    again = acquire(second.stub, "survivor")
    assert again.sandbox.sandbox_id == created.sandbox.sandbox_id
    assert again.outcome == sandbox_pb2.REUSE_OUTCOME_REUSED_RUNNING


def test_a_span_per_docker_call_under_the_rpc_span(
    managers: list[Manager], env: dict[str, str], otlp_receiver: OtlpReceiver
) -> None:
    receiver = otlp_receiver
    m = spawn(
        managers,
        {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
        "sandbox-traced",  # type: ignore[attr-defined]
    )
    acquire(m.stub, "traced")

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans}
        return {"docker.containers.create", "docker.containers.start"} <= names and any(
            s.name.endswith("/AcquireSandbox") and s.kind == "SERVER" for s in spans
        )

    spans = receiver.wait_for(complete, timeout=20)
    rpc = next(s for s in spans if s.name.endswith("/AcquireSandbox") and s.kind == "SERVER")
    docker_spans = [s for s in spans if s.name.startswith("docker.") and s.trace_id == rpc.trace_id]
    assert {s.name for s in docker_spans} >= {
        "docker.containers.list",
        "docker.containers.create",
        "docker.containers.start",
        "docker.containers.inspect",
    }
    assert all(s.parent_span_id == rpc.span_id for s in docker_spans)
    assert rpc.service_name == "longshore-sandbox"


def test_sigterm_kills_the_command_of_an_exec_still_open(
    managers: list[Manager], env: dict[str, str], engine: docker.DockerClient
) -> None:
    m = spawn(managers, env, "sandbox-exec-term")
    cid = acquire(m.stub, "held").sandbox.sandbox_id
    call = m.stub.Exec(
        sandbox_service_pb2.ExecRequest(
            sandbox_id=cid, argv=["sh", "-c", "echo up; exec sleep 1000"]
        ),
        timeout=T,
    )
    assert next(call).output.data == b"up\n"
    # The drain gives the open call its grace, then cancels it; the command
    # must not outlive the manager.
    m.proc.terminate()
    assert m.proc.wait(T) == 0, m.proc.log_tail()
    top = engine.api.top(cid)
    column = top["Titles"].index("CMD")
    running = [str(row[column]) for row in top["Processes"]]
    assert not [c for c in running if "sleep 1000" in c], running
