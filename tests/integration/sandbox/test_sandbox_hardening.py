"""What the engine actually runs: DESIGN.md's hardening and the operator's policy.

Every assertion reads ``docker inspect`` of a sandbox this test made, so what is
checked is the container, not the manager's intent. No caller (an admin, a
Longshore service, a worker holding a valid token for exactly that spec) gets
a host bind outside ``sandbox.allowed_host_paths`` or a capability outside
``sandbox.allowed_capabilities``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from services.runtime.callers import caller_metadata
from services.runtime.sandbox_tokens import (
    SANDBOX_TOKEN_KEY,
    SandboxGrant,
    SandboxTokens,
    spec_digest,
)
from services.runtime.testing import serve_in_process
from services.sandbox import labels
from services.sandbox.manager import SandboxManager
from services.sandbox.policy import ENGINE_SOCKETS
from services.sandbox.reaper import Reaper, StartupGuard
from services.sandbox.server import SandboxServicer, grpc_service
from services.sandbox.settings import DEFAULT_CAPABILITIES

T = 60
INTERNAL = "internal-token-for-hardening-tests"
Metadata = tuple[tuple[str, str], ...]


@contextmanager
def serving(manager: SandboxManager) -> Iterator[SandboxServiceStub]:
    servicer = SandboxServicer(
        manager, Reaper(manager, guard=StartupGuard()), internal_token=INTERNAL
    )
    with serve_in_process([grpc_service(servicer)], internal_token=INTERNAL) as running:
        yield SandboxServiceStub(running.channel())


@pytest.fixture
def stub_with(
    make_manager: Callable[..., SandboxManager],
) -> Iterator[Callable[..., SandboxServiceStub]]:
    """Factory: a stub on a token-verifying server whose manager has these settings."""
    stack: list[Any] = []

    def make(**overrides: object) -> SandboxServiceStub:
        ctx = serving(make_manager(**overrides))
        stack.append(ctx)
        return ctx.__enter__()

    yield make
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


def worker_with_token(deployment: str, task: str, spec: sandbox_pb2.SandboxSpec) -> Metadata:
    """A worker key holding a valid token for exactly ``spec``: the token is no obstacle."""
    grant = SandboxGrant(
        deployment=deployment,
        task_id=task,
        profile="coder",
        run_id="r1",
        spec_digest=spec_digest(spec),
        expires=time.time() + 600,
        holder="w1",
    )
    token = SandboxTokens(INTERNAL).mint(grant)
    return (*caller_metadata("w1", {"worker"}), (SANDBOX_TOKEN_KEY, token))


def acquire(
    stub: SandboxServiceStub,
    spec: sandbox_pb2.SandboxSpec,
    metadata: Metadata = (),
    task: str = "t1",
) -> sandbox_pb2.Sandbox:
    req = sandbox_service_pb2.AcquireSandboxRequest(task_id=task, profile="coder", spec=spec)
    return stub.AcquireSandbox(req, timeout=T, metadata=metadata).sandbox


def exec_out(stub: SandboxServiceStub, box: str, argv: list[str]) -> tuple[bytes, int]:
    out, code = b"", -99
    req = sandbox_service_pb2.ExecRequest(sandbox_id=box, argv=argv)
    for msg in stub.Exec(req, timeout=T):
        if msg.HasField("exit"):
            code = msg.exit.exit_code
        else:
            out += msg.output.data
    return out, code


def inspect(engine: docker.DockerClient, box: str) -> dict[str, Any]:
    return dict(engine.api.inspect_container(box))


def containers(engine: docker.DockerClient, deployment: str) -> list[dict[str, Any]]:
    return list(
        engine.api.containers(all=True, filters={"label": f"{labels.DEPLOYMENT}={deployment}"})
    )


def assert_hardened(attrs: dict[str, Any], extra_caps: tuple[str, ...] = ()) -> None:
    """DESIGN.md's defaults, as the engine reports them."""
    host = attrs["HostConfig"]
    assert host["Init"] is True
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == sorted({*DEFAULT_CAPABILITIES, *extra_caps})
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["PidsLimit"] > 0 and host["Memory"] > 0 and host["NanoCpus"] > 0
    assert host["MemorySwap"] == host["Memory"]
    assert "/tmp" in (host.get("Tmpfs") or {})
    assert host["Privileged"] is False
    for mount in attrs["Mounts"]:
        source = str(mount.get("Source", ""))
        assert not any(sock == source or sock.startswith(source + "/") for sock in ENGINE_SOCKETS)
        assert not source.endswith(".sock")


WIDE_SPECS = [
    (
        sandbox_pb2.SandboxSpec(
            volumes=[sandbox_pb2.VolumeMount(host_path="/etc", container_path="/host-etc")]
        ),
        "spec.volumes[0].host_path: '/etc' is not under sandbox.allowed_host_paths",
    ),
    (
        sandbox_pb2.SandboxSpec(
            volumes=[
                sandbox_pb2.VolumeMount(
                    host_path="/var/lib/docker/containers", container_path="/c", read_only=True
                )
            ]
        ),
        "spec.volumes[0].host_path: '/var/lib/docker/containers' is not under",
    ),
    (
        sandbox_pb2.SandboxSpec(cap_add=["SYS_ADMIN"]),
        "spec.cap_add[0]: 'SYS_ADMIN' is not in sandbox.allowed_capabilities",
    ),
    (
        sandbox_pb2.SandboxSpec(cap_add=["CAP_SYS_PTRACE", "NET_RAW"]),
        "spec.cap_add[0]: 'SYS_PTRACE' is not in sandbox.allowed_capabilities",
    ),
    (sandbox_pb2.SandboxSpec(cpus=64), "spec.cpus: 64 exceeds sandbox.max_cpus (2)"),
    (
        sandbox_pb2.SandboxSpec(memory_bytes=1 << 50),
        "spec.memory_bytes: 1125899906842624 exceeds sandbox.max_memory_bytes",
    ),
]


@pytest.mark.parametrize("caller", ["admin", "service", "worker with a token"])
@pytest.mark.parametrize(("spec", "message"), WIDE_SPECS)
def test_no_caller_gets_a_spec_beyond_the_policy(
    stub_with: Callable[..., SandboxServiceStub],
    engine: docker.DockerClient,
    test_deployment: str,
    caller: str,
    spec: sandbox_pb2.SandboxSpec,
    message: str,
) -> None:
    stub = stub_with()
    metadata: Metadata = {
        "admin": caller_metadata("ops", {"admin"}),
        "service": (),
        "worker with a token": worker_with_token(test_deployment, "t1", spec),
    }[caller]
    with pytest.raises(grpc.RpcError) as info:
        acquire(stub, spec, metadata)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (info.value.details() or "").startswith(message)
    assert containers(engine, test_deployment) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (sandbox_pb2.SandboxSpec(cpus=float("nan")), "spec.cpus: must be a finite number"),
        (sandbox_pb2.SandboxSpec(cpus=-0.5), "spec.cpus: must not be negative"),
        (sandbox_pb2.SandboxSpec(memory_bytes=4096), "spec.memory_bytes: at least 6291456"),
        (sandbox_pb2.SandboxSpec(env={"A=B": "x"}), "spec.env: invalid variable name 'A=B'"),
        (
            sandbox_pb2.SandboxSpec(
                volumes=[sandbox_pb2.VolumeMount(host_path="/run/containerd", container_path="/c")]
            ),
            "spec.volumes[0].host_path: '/run/containerd' would expose the engine",
        ),
    ],
)
def test_malformed_specs_are_invalid_argument_not_internal(
    stub_with: Callable[..., SandboxServiceStub],
    engine: docker.DockerClient,
    test_deployment: str,
    spec: sandbox_pb2.SandboxSpec,
    message: str,
) -> None:
    stub = stub_with(allowed_host_paths=("/",))  # even an operator who allows every path
    with pytest.raises(grpc.RpcError) as info:
        acquire(stub, spec, caller_metadata("ops", {"admin"}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(message)
    assert containers(engine, test_deployment) == []


def test_default_sandbox_is_hardened(
    stub_with: Callable[..., SandboxServiceStub], engine: docker.DockerClient
) -> None:
    stub = stub_with()
    box = acquire(stub, sandbox_pb2.SandboxSpec())
    attrs = inspect(engine, box.sandbox_id)
    assert_hardened(attrs)
    host = attrs["HostConfig"]
    assert host["PidsLimit"] == 128 and host["Memory"] == 128 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["ReadonlyRootfs"] is False and host["NetworkMode"] == "bridge"
    assert attrs["Config"]["User"] == "" and attrs["Mounts"] == []
    # The minimal list is what a root process really holds: CHOWN(0),
    # DAC_OVERRIDE(1), FOWNER(3), KILL(5), SETGID(6), SETUID(7) = 0xeb.
    out, code = exec_out(stub, box.sandbox_id, ["grep", "CapEff", "/proc/self/status"])
    assert code == 0 and out.split()[-1] == b"00000000000000eb"


def test_options_are_applied_as_asked(
    stub_with: Callable[..., SandboxServiceStub], engine: docker.DockerClient
) -> None:
    stub = stub_with()
    spec = sandbox_pb2.SandboxSpec(
        read_only_rootfs=True,
        network=sandbox_pb2.NETWORK_MODE_NONE,
        user="65534:65534",
        pids_limit=64,
        memory_bytes=64 * 1024 * 1024,
        cpus=0.25,
    )
    box = acquire(stub, spec)
    attrs = inspect(engine, box.sandbox_id)
    assert_hardened(attrs)
    host = attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["NetworkMode"] == "none"
    assert host["PidsLimit"] == 64 and host["Memory"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 250_000_000
    assert attrs["Config"]["User"] == "65534:65534"
    assert exec_out(stub, box.sandbox_id, ["id", "-u"]) == (b"65534\n", 0)
    assert exec_out(stub, box.sandbox_id, ["touch", "/root-is-read-only"])[1] != 0
    assert exec_out(stub, box.sandbox_id, ["touch", "/tmp/tmpfs-is-writable"])[1] == 0


def test_a_bind_under_an_allowed_host_path_works(
    stub_with: Callable[..., SandboxServiceStub], engine: docker.DockerClient, tmp_path: Path
) -> None:
    allowed = tmp_path / "shared"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "hello.txt").write_text("from the host\n")
    stub = stub_with(allowed_host_paths=(str(allowed),))
    spec = sandbox_pb2.SandboxSpec(
        volumes=[
            sandbox_pb2.VolumeMount(
                host_path=str(allowed / "sub"), container_path="/data", read_only=True
            )
        ]
    )
    box = acquire(stub, spec, caller_metadata("ops", {"admin"}))
    attrs = inspect(engine, box.sandbox_id)
    assert_hardened(attrs)
    [mount] = attrs["Mounts"]
    assert mount["Type"] == "bind" and mount["Source"] == str(allowed / "sub")
    assert mount["Destination"] == "/data" and mount["RW"] is False
    assert exec_out(stub, box.sandbox_id, ["cat", "/data/hello.txt"]) == (b"from the host\n", 0)
    # A sibling of the allowed directory is still outside it.
    sibling = sandbox_pb2.SandboxSpec(
        volumes=[sandbox_pb2.VolumeMount(host_path=str(tmp_path), container_path="/d")]
    )
    with pytest.raises(grpc.RpcError) as info:
        acquire(stub, sibling, task="t2")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_named_volume_needs_no_allowlist(
    stub_with: Callable[..., SandboxServiceStub],
    engine: docker.DockerClient,
    test_deployment: str,
    run_labels: dict[str, str],
    manager_cleanup: Callable[[str], None],
) -> None:
    name = f"{test_deployment}-cache"
    engine.api.create_volume(name=name, labels=run_labels)
    manager_cleanup(name)
    stub = stub_with()
    spec = sandbox_pb2.SandboxSpec(
        volumes=[sandbox_pb2.VolumeMount(host_path=name, container_path="/cache")]
    )
    box = acquire(stub, spec)
    attrs = inspect(engine, box.sandbox_id)
    assert_hardened(attrs)
    [mount] = attrs["Mounts"]
    assert mount["Type"] == "volume" and mount["Name"] == name
    assert mount["Destination"] == "/cache" and mount["RW"] is True
    assert exec_out(stub, box.sandbox_id, ["sh", "-c", "echo kept > /cache/f"])[1] == 0


def test_an_allowed_capability_is_added_and_nothing_else(
    stub_with: Callable[..., SandboxServiceStub], engine: docker.DockerClient
) -> None:
    stub = stub_with(allowed_capabilities=("NET_ADMIN",))
    box = acquire(stub, sandbox_pb2.SandboxSpec(cap_add=["cap_net_admin", "KILL"]))
    attrs = inspect(engine, box.sandbox_id)
    assert_hardened(attrs, extra_caps=("NET_ADMIN",))
    with pytest.raises(grpc.RpcError) as info:
        acquire(stub, sandbox_pb2.SandboxSpec(cap_add=["SYS_ADMIN"]), task="t2")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "(NET_ADMIN)" in (info.value.details() or "")


@pytest.fixture
def manager_cleanup(
    engine: docker.DockerClient, test_deployment: str
) -> Iterator[Callable[[str], None]]:
    """Registers named volumes to remove after this deployment's containers are gone."""
    volumes: list[str] = []
    yield volumes.append
    # The sandboxes using a volume must go first: remove them here (the
    # manager fixture's finaliser runs later and tolerates their absence).
    for row in containers(engine, test_deployment):
        with suppress(docker.errors.NotFound):
            engine.api.remove_container(row["Id"], force=True, v=True)
    for name in volumes:
        with suppress(docker.errors.NotFound):
            engine.api.remove_volume(name, force=True)
