"""AcquireSandbox against the real engine: labels, reuse, replacement, concurrency."""

from __future__ import annotations

import threading

import docker
import grpc
import pytest
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from services.sandbox import labels
from services.sandbox.hardening import resolve_spec
from services.sandbox.manager import SandboxManager
from services.sandbox.model import Spec
from tests.support.hardening_audit import FORGED_LABEL

T = 30


def acquire(
    stub: SandboxServiceStub, task: str = "task-1", profile: str = "coder", **kw: object
) -> sandbox_service_pb2.AcquireSandboxResponse:
    spec = kw.pop("spec", sandbox_pb2.SandboxSpec())
    req = sandbox_service_pb2.AcquireSandboxRequest(
        task_id=task,
        profile=profile,
        spec=spec,
        **kw,  # type: ignore[arg-type]
    )
    return stub.AcquireSandbox(req, timeout=T)


def test_new_sandbox_carries_every_label_and_a_deterministic_name(
    stub: SandboxServiceStub, engine: docker.DockerClient, test_deployment: str
) -> None:
    resp = acquire(stub, task="t/1:x", profile="coder")
    box = resp.sandbox
    assert resp.outcome == sandbox_pb2.REUSE_OUTCOME_CREATED and not resp.reused
    assert box.state == sandbox_pb2.SANDBOX_STATE_RUNNING
    attrs = engine.api.inspect_container(box.sandbox_id)
    lbl = attrs["Config"]["Labels"]
    assert lbl[labels.MANAGED] == "1"
    assert lbl[labels.DEPLOYMENT] == test_deployment
    assert lbl[labels.PROFILE] == "coder"
    assert lbl[labels.TASK_ID] == labels.sanitize("t/1:x") != "t_1_x"
    assert lbl[labels.PERSIST] == "true"
    assert lbl[labels.OWNER] and lbl[labels.CONFIG_HASH] == box.config_hash
    assert box.name == labels.container_name(test_deployment, "coder", "t/1:x")
    assert attrs["Name"] == "/" + box.name
    assert box.task_id == lbl[labels.TASK_ID] and box.deployment == test_deployment
    assert box.HasField("create_time") and box.HasField("start_time")


def test_running_sandbox_is_attached_without_a_start(
    stub: SandboxServiceStub, engine: docker.DockerClient
) -> None:
    first = acquire(stub)
    started = engine.api.inspect_container(first.sandbox.sandbox_id)["State"]["StartedAt"]
    again = acquire(stub)
    assert again.sandbox.sandbox_id == first.sandbox.sandbox_id
    assert again.reused and again.outcome == sandbox_pb2.REUSE_OUTCOME_REUSED_RUNNING
    assert engine.api.inspect_container(first.sandbox.sandbox_id)["State"]["StartedAt"] == started


def test_exited_sandbox_is_restarted_and_attached(
    stub: SandboxServiceStub, engine: docker.DockerClient
) -> None:
    first = acquire(stub)
    engine.api.stop(first.sandbox.sandbox_id, timeout=0)
    again = acquire(stub)
    assert again.sandbox.sandbox_id == first.sandbox.sandbox_id
    assert again.reused and again.outcome == sandbox_pb2.REUSE_OUTCOME_RESTARTED
    assert again.sandbox.state == sandbox_pb2.SANDBOX_STATE_RUNNING


def test_changed_config_replaces_the_sandbox_and_says_why(
    stub: SandboxServiceStub, engine: docker.DockerClient
) -> None:
    first = acquire(stub, spec=sandbox_pb2.SandboxSpec(env={"TOKEN": "a"}))
    rotated = acquire(stub, spec=sandbox_pb2.SandboxSpec(env={"TOKEN": "b"}))
    assert rotated.outcome == sandbox_pb2.REUSE_OUTCOME_REUSED_RUNNING  # env values: no change
    changed = acquire(stub, spec=sandbox_pb2.SandboxSpec(env={"TOKEN": "b"}, pids_limit=64))
    assert changed.outcome == sandbox_pb2.REUSE_OUTCOME_REPLACED_CONFIG_CHANGED
    assert not changed.reused
    assert first.sandbox.config_hash in changed.reason
    assert changed.sandbox.config_hash in changed.reason
    assert changed.sandbox.sandbox_id != first.sandbox.sandbox_id
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_container(first.sandbox.sandbox_id)


def test_failed_start_is_replaced_by_a_fresh_sandbox(
    stub: SandboxServiceStub, manager: SandboxManager, engine: docker.DockerClient
) -> None:
    # A stopped sandbox for the key whose start fails (its entrypoint is gone).
    spec = resolve_spec(Spec(), manager.section)
    broken = engine.api.create_container(
        spec.image,
        entrypoint=["/no/such/binary"],
        name=labels.container_name(manager.deployment, "coder", "task-1"),
        labels={
            **labels.sandbox_labels(
                deployment=manager.deployment,
                profile="coder",
                task_id="task-1",
                persist=True,
                owner="someone-else",
                config_hash=spec.config_hash,
            ),
            FORGED_LABEL: "1",
        },
    )["Id"]
    resp = acquire(stub)
    assert resp.outcome == sandbox_pb2.REUSE_OUTCOME_REPLACED_START_FAILED
    assert "start of created sandbox failed" in resp.reason
    assert resp.sandbox.sandbox_id != broken
    assert resp.sandbox.state == sandbox_pb2.SANDBOX_STATE_RUNNING
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_container(broken)


def test_persistence_off_never_probes_and_always_creates(stub: SandboxServiceStub) -> None:
    persistent = acquire(stub)
    fresh = [acquire(stub, persist_across_processes=False) for _ in range(2)]
    ids = {persistent.sandbox.sandbox_id, *(f.sandbox.sandbox_id for f in fresh)}
    assert len(ids) == 3
    for f in fresh:
        assert f.outcome == sandbox_pb2.REUSE_OUTCOME_CREATED and not f.sandbox.persist


def test_missing_image_is_failed_precondition_naming_it(stub: SandboxServiceStub) -> None:
    spec = sandbox_pb2.SandboxSpec(image="longshore/no-such-image:never")
    with pytest.raises(grpc.RpcError) as info:
        acquire(stub, spec=spec)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "longshore/no-such-image:never" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("task", "profile", "spec", "field"),
    [
        ("", "coder", sandbox_pb2.SandboxSpec(), "task_id"),
        ("t", "", sandbox_pb2.SandboxSpec(), "profile"),
        (
            "t",
            "p",
            sandbox_pb2.SandboxSpec(
                volumes=[sandbox_pb2.VolumeMount(host_path="rel/x", container_path="/x")]
            ),
            "spec.volumes[0].host_path",
        ),
        (
            "t",
            "p",
            sandbox_pb2.SandboxSpec(
                volumes=[
                    sandbox_pb2.VolumeMount(host_path="/tmp", container_path="/x"),
                    sandbox_pb2.VolumeMount(host_path="/var/run/docker.sock", container_path="/s"),
                ]
            ),
            "spec.volumes[1].host_path",
        ),
        ("t", "p", sandbox_pb2.SandboxSpec(cap_add=["NOT A CAP"]), "spec.cap_add[0]"),
    ],
)
def test_invalid_requests_are_invalid_argument_naming_the_field(
    stub: SandboxServiceStub, task: str, profile: str, spec: sandbox_pb2.SandboxSpec, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        acquire(stub, task=task, profile=profile, spec=spec)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(field)


def test_concurrent_acquires_in_one_process_yield_one_container(
    stub: SandboxServiceStub, manager: SandboxManager, engine: docker.DockerClient
) -> None:
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def worker() -> None:
        barrier.wait()
        try:
            results.append(acquire(stub, task="shared").sandbox.sandbox_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    rows = engine.api.containers(
        all=True, filters={"label": labels.key_filters(manager.deployment, "coder", "shared")}
    )
    assert len(rows) == 1
