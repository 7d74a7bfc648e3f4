"""Sandboxes belong to their run: the ownership matrix against the real engine.

Calls carry exactly what the gateway sends (the internal credential, the
caller's principal and scopes) plus, for a worker, a sandbox token minted the
way kanban mints it. Operators (an ``admin`` key, or a Longshore service: no
principal) are unaffected; every other caller reaches only the sandbox of the
task whose run it holds, with that run's spec and the sandbox's own user.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

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
from services.sandbox.reaper import Reaper, StartupGuard
from services.sandbox.server import SandboxServicer, grpc_service

T = 60
INTERNAL = "internal-token-for-ownership-tests"
WORKER = caller_metadata("w1", {"worker"})
ADMIN = caller_metadata("ops", {"admin", "read", "write"})
SERVICE: tuple[tuple[str, str], ...] = ()
#: The run's spec: the profile sets a user, so the worker must not exec as root.
SPEC = sandbox_pb2.SandboxSpec(user="65534", env={"RUN_SECRET": "s3"})
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Rig:
    """A manager behind a server that verifies sandbox tokens."""

    stub: SandboxServiceStub
    manager: SandboxManager
    deployment: str

    def grant(self, **changes: object) -> SandboxGrant:
        base = SandboxGrant(
            deployment=self.deployment,
            task_id="t1",
            profile="coder",
            run_id="r1",
            spec_digest=spec_digest(SPEC),
            expires=time.time() + 600,
            holder="w1",
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    def token(self, key: str = INTERNAL, **changes: object) -> str:
        return SandboxTokens(key).mint(self.grant(**changes))


@pytest.fixture
def rig(make_manager: Callable[..., SandboxManager], test_deployment: str) -> Iterator[Rig]:
    manager = make_manager()
    servicer = SandboxServicer(
        manager, Reaper(manager, guard=StartupGuard()), internal_token=INTERNAL
    )
    with serve_in_process([grpc_service(servicer)], internal_token=INTERNAL) as running:
        yield Rig(SandboxServiceStub(running.channel()), manager, test_deployment)


def with_token(token: str, who: Metadata = WORKER) -> Metadata:
    return (*who, (SANDBOX_TOKEN_KEY, token))


def acquire(
    rig: Rig,
    metadata: Metadata,
    task: str = "t1",
    spec: sandbox_pb2.SandboxSpec = SPEC,
    profile: str = "coder",
) -> sandbox_pb2.Sandbox:
    req = sandbox_service_pb2.AcquireSandboxRequest(task_id=task, profile=profile, spec=spec)
    return rig.stub.AcquireSandbox(req, timeout=T, metadata=metadata).sandbox


def run(
    rig: Rig, box: str, argv: list[str], metadata: Metadata, user: str = ""
) -> tuple[bytes, int]:
    req = sandbox_service_pb2.ExecRequest(sandbox_id=box, argv=argv, user=user)
    out, code = b"", -99
    for msg in rig.stub.Exec(req, timeout=T, metadata=metadata):
        if msg.HasField("exit"):
            code = msg.exit.exit_code
        else:
            out += msg.output.data
    return out, code


def release(rig: Rig, box: str, metadata: Metadata) -> bool:
    req = sandbox_service_pb2.ReleaseSandboxRequest(sandbox_id=box, force_remove=True)
    return rig.stub.ReleaseSandbox(req, timeout=T, metadata=metadata).removal_scheduled


def denied(call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    return info.value.details() or ""


def containers(engine: docker.DockerClient, deployment: str) -> list[dict[str, object]]:
    return list(
        engine.api.containers(all=True, filters={"label": f"{labels.DEPLOYMENT}={deployment}"})
    )


#: Every way a worker's token can be wrong, with what the refusal names.
BAD_TOKENS: list[tuple[str, Callable[[Rig], Metadata], str]] = [
    ("none", lambda r: WORKER, "sandbox token required: send"),
    ("garbage", lambda r: with_token("lst1.x.y"), "sandbox token: bad signature"),
    ("forged", lambda r: with_token(r.token(key="not-the-internal-token")), "bad signature"),
    ("expired", lambda r: with_token(r.token(expires=time.time() - 1)), "expired"),
    ("other task", lambda r: with_token(r.token(task_id="t2", run_id="r2")), "'t2'"),
    ("other profile", lambda r: with_token(r.token(profile="other")), "'other'"),
    ("other deployment", lambda r: with_token(r.token(deployment="elsewhere")), "deployment"),
    (
        "other holder",
        lambda r: with_token(r.token(holder="w2")),
        "belongs to key 'w2', not key 'w1'",
    ),
    (
        "stolen by another key",
        lambda r: with_token(r.token(), caller_metadata("w2", {"worker"})),
        "belongs to key 'w1', not key 'w2'",
    ),
]
IDS = [case[0] for case in BAD_TOKENS]


@pytest.mark.parametrize(("case", "metadata_of", "why"), BAD_TOKENS, ids=IDS)
def test_acquire_without_the_runs_token_is_refused_before_the_engine(
    rig: Rig,
    engine: docker.DockerClient,
    case: str,
    metadata_of: Callable[[Rig], Metadata],
    why: str,
) -> None:
    assert why in denied(lambda: acquire(rig, metadata_of(rig))), case
    assert containers(engine, rig.deployment) == []


def test_acquire_with_another_spec_than_the_runs_is_refused(
    rig: Rig, engine: docker.DockerClient
) -> None:
    token = with_token(rig.token())
    wider = sandbox_pb2.SandboxSpec(user="0", env={"RUN_SECRET": "s3"})
    details = denied(lambda: acquire(rig, token, spec=wider))
    assert details.startswith("spec: differs from the sandbox_spec of run 'r1'")
    # Even the same fields with another env value are another spec.
    other_value = sandbox_pb2.SandboxSpec(user="65534", env={"RUN_SECRET": "x"})
    denied(lambda: acquire(rig, token, spec=other_value))
    assert containers(engine, rig.deployment) == []


@pytest.mark.parametrize(("case", "metadata_of", "why"), BAD_TOKENS, ids=IDS)
def test_exec_and_release_without_the_runs_token_are_refused(
    rig: Rig,
    engine: docker.DockerClient,
    case: str,
    metadata_of: Callable[[Rig], Metadata],
    why: str,
) -> None:
    box = acquire(rig, SERVICE).sandbox_id
    metadata = metadata_of(rig)
    assert why in denied(lambda: run(rig, box, ["touch", "/tmp/ran"], metadata)), case
    assert why in denied(lambda: release(rig, box, metadata)), case
    # Nothing ran and nothing was removed.
    assert run(rig, box, ["test", "-e", "/tmp/ran"], SERVICE)[1] == 1
    assert engine.api.inspect_container(box)["State"]["Running"] is True


def test_the_runs_holder_uses_its_own_sandbox_end_to_end(
    rig: Rig, engine: docker.DockerClient
) -> None:
    token = with_token(rig.token())
    box = acquire(rig, token)
    assert box.task_id == "t1" and box.state == sandbox_pb2.SANDBOX_STATE_RUNNING
    out, code = run(rig, box.sandbox_id, ["sh", "-c", "id -u; echo $RUN_SECRET"], token)
    assert (out, code) == (b"65534\ns3\n", 0)
    # Naming its own user explicitly is fine; the sandbox's name works as its id.
    assert run(rig, box.name, ["id", "-u"], token, user="65534") == (b"65534\n", 0)
    assert release(rig, box.sandbox_id, token) is True


def test_a_worker_cannot_exec_as_another_user(rig: Rig) -> None:
    token = with_token(rig.token())
    box = acquire(rig, token).sandbox_id
    for user in ("0", "root", "0:0", "65534:0"):
        details = denied(lambda u=user: run(rig, box, ["id", "-u"], token, user=u))  # type: ignore[misc]
        assert details.startswith(f"user: '{user}' differs from the sandbox's user '65534'")
    # An operator may choose the user.
    assert run(rig, box, ["id", "-u"], ADMIN, user="0") == (b"0\n", 0)


def test_a_sandbox_without_a_user_still_refuses_a_chosen_user(rig: Rig) -> None:
    plain = sandbox_pb2.SandboxSpec()
    token = with_token(rig.token(spec_digest=spec_digest(plain)))
    box = acquire(rig, token, spec=plain).sandbox_id
    assert "(image default)" in denied(lambda: run(rig, box, ["id"], token, user="0"))
    assert run(rig, box, ["id", "-u"], token) == (b"0\n", 0)  # the image's own user


def test_another_tasks_sandbox_is_refused_with_a_valid_token(rig: Rig) -> None:
    theirs = acquire(rig, ADMIN, task="t2").sandbox_id
    token = with_token(rig.token())
    details = denied(lambda: run(rig, theirs, ["true"], token))
    assert f"sandbox '{theirs[:12]}…' belongs to task 't2'" in details
    assert "not to run 'r1''s task 't1'" in details
    assert "belongs to task 't2'" in denied(lambda: release(rig, theirs, token))
    # Another profile's sandbox of the same task is another sandbox too.
    other_profile = acquire(rig, SERVICE, profile="reviewer").sandbox_id
    assert "under profile 'reviewer'" in denied(lambda: run(rig, other_profile, ["true"], token))


@pytest.mark.parametrize("who", [ADMIN, SERVICE], ids=["admin", "service"])
def test_operators_are_unaffected(rig: Rig, who: Metadata) -> None:
    # Any task, any spec within policy, any user; no token needed.
    box = acquire(rig, who, task="anything", spec=sandbox_pb2.SandboxSpec()).sandbox_id
    assert run(rig, box, ["id", "-u"], who, user="65534") == (b"65534\n", 0)
    reap = rig.stub.ReapOrphans(
        sandbox_service_pb2.ReapOrphansRequest(dry_run=True), timeout=T, metadata=who
    )
    assert reap.dry_run
    assert release(rig, box, who) is True


def test_reads_need_no_token(rig: Rig) -> None:
    box = acquire(rig, SERVICE).sandbox_id
    reader = caller_metadata("r", {"read"})
    got = rig.stub.GetSandbox(
        sandbox_service_pb2.GetSandboxRequest(sandbox_id=box), timeout=T, metadata=reader
    )
    assert got.sandbox.sandbox_id == box
    listed = rig.stub.ListSandboxes(
        sandbox_service_pb2.ListSandboxesRequest(), timeout=T, metadata=reader
    )
    assert [s.sandbox_id for s in listed.sandboxes] == [box]


@pytest.mark.parametrize(
    "who",
    [WORKER, caller_metadata("rw", {"read", "write"}), caller_metadata("r", {"read"})],
    ids=["worker", "write", "read"],
)
def test_operator_only_methods_refuse_everyone_else(rig: Rig, who: Metadata) -> None:
    token = with_token(rig.token(), who)
    check = sandbox_service_pb2.CheckSandboxSpecRequest(spec=SPEC)
    details = denied(lambda: rig.stub.CheckSandboxSpec(check, timeout=T, metadata=token))
    assert details.startswith("CheckSandboxSpec: operators only")
    reap = sandbox_service_pb2.ReapOrphansRequest(dry_run=True)
    assert "ReapOrphans: operators only" in denied(
        lambda: rig.stub.ReapOrphans(reap, timeout=T, metadata=token)
    )


@pytest.mark.parametrize("who", [ADMIN, SERVICE], ids=["admin", "service"])
def test_check_sandbox_spec_is_the_acquire_path_without_the_engine(
    rig: Rig, engine: docker.DockerClient, who: Metadata
) -> None:
    check = sandbox_service_pb2.CheckSandboxSpecRequest(spec=SPEC)
    digest = rig.stub.CheckSandboxSpec(check, timeout=T, metadata=who).config_hash
    assert containers(engine, rig.deployment) == []  # nothing touched the engine
    assert acquire(rig, who).config_hash == digest
    image = rig.manager.section.default_image
    ok = sandbox_service_pb2.CheckSandboxSpecRequest(
        spec=sandbox_pb2.SandboxSpec(image=image), allowed_images=[image, "other:1"]
    )
    rig.stub.CheckSandboxSpec(ok, timeout=T, metadata=who)
    outside = sandbox_service_pb2.CheckSandboxSpecRequest(
        spec=sandbox_pb2.SandboxSpec(image="x"), allowed_images=[image]
    )
    details = denied(lambda: rig.stub.CheckSandboxSpec(outside, timeout=T, metadata=who))
    assert details == "spec.image: 'x' is not one of the profile's images"
    for spec, code, start in [
        (
            sandbox_pb2.SandboxSpec(cap_add=["SYS_ADMIN"]),
            grpc.StatusCode.PERMISSION_DENIED,
            "spec.cap_add[0]: 'SYS_ADMIN' is not in sandbox.allowed_capabilities",
        ),
        (
            sandbox_pb2.SandboxSpec(env={"A=B": "x"}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.env: invalid variable name 'A=B'",
        ),
        (sandbox_pb2.SandboxSpec(cpus=-1), grpc.StatusCode.INVALID_ARGUMENT, "spec.cpus"),
        (
            sandbox_pb2.SandboxSpec(network=9),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.network: unknown network mode 9",
        ),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            rig.stub.CheckSandboxSpec(
                sandbox_service_pb2.CheckSandboxSpecRequest(spec=spec), timeout=T, metadata=who
            )
        assert info.value.code() == code
        assert (info.value.details() or "").startswith(start)


def test_a_holder_gets_one_fresh_sandbox_at_a_time(rig: Rig) -> None:
    token = with_token(rig.token())
    fresh = sandbox_service_pb2.AcquireSandboxRequest(
        task_id="t1", profile="coder", spec=SPEC, persist_across_processes=False
    )
    first = rig.stub.AcquireSandbox(fresh, timeout=T, metadata=token).sandbox
    with pytest.raises(grpc.RpcError) as info:
        rig.stub.AcquireSandbox(fresh, timeout=T, metadata=token)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "release it before acquiring another" in (info.value.details() or "")
    # Operators are not limited.
    rig.stub.AcquireSandbox(fresh, timeout=T, metadata=ADMIN)
    assert release(rig, first.sandbox_id, token) is True
