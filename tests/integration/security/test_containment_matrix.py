"""Containment through the real gateway: scopes x methods x ownership, secrets, sandbox shape.

One stack of real processes (sandbox manager, kanban, gateway) and five keys:
``ops`` (admin), ``writer`` (read+write), ``viewer`` (read), ``w1`` and ``w2``
(worker). Four kinds of run are in play: the run ``w1`` holds (own), the run
``w2`` holds (another worker's), a run the dispatcher executes (executor
``sandbox``), and no run at all. Every refused case must be PERMISSION_DENIED or
UNAUTHENTICATED with a message naming what was refused; every allowed case must
work. A planted secret must appear in no response a key other than the run's
holder receives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import grpc
import pytest
from google.protobuf.message import Message
from longshore.kanban.v1 import (
    kanban_service_pb2 as kpb,
)
from longshore.kanban.v1 import (
    profile_pb2,
    task_pb2,
)
from longshore.kanban.v1 import (
    worker_service_pb2 as wpb,
)
from longshore.sandbox.v1 import sandbox_pb2
from longshore.sandbox.v1 import sandbox_service_pb2 as spb

from services.gateway.auth import key_entry, new_key
from services.runtime.sandbox_tokens import SANDBOX_TOKEN_KEY
from tests.integration.gateway.stack import RealStack, Stubs, real_stack

SECRET = "s3cr3t-planted-value-7f1c"
TASK_SECRET = "t4sk-planted-value-93ab"
Code = grpc.StatusCode
REFUSED = {Code.PERMISSION_DENIED, Code.UNAUTHENTICATED}


@dataclass
class Keys:
    ops: str
    writer: str
    viewer: str
    w1: str
    w2: str


@dataclass
class Claim:
    task_id: str
    run_id: str
    token: str
    spec: sandbox_pb2.SandboxSpec


@dataclass
class World:
    stack: RealStack
    stubs: Stubs
    keys: Keys
    own: Claim
    other: Claim
    dispatched_task: str
    dispatched_run: str
    dispatched_sandbox: str
    idle_task: str
    own_sandbox: str
    responses: list[tuple[str, bytes]]


def md(key: str | None, token: str | None = None) -> tuple[tuple[str, str], ...]:
    items: list[tuple[str, str]] = []
    if key is not None:
        items.append(("authorization", f"Bearer {key}"))
    if token is not None:
        items.append((SANDBOX_TOKEN_KEY, token))
    return tuple(items)


def outcome(call: Callable[[], object]) -> tuple[Code, str, object]:
    try:
        result = call()
        if isinstance(result, Iterator):
            result = list(result)
        return Code.OK, "", result
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", None


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 90.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str
) -> Iterator[World]:
    keys = Keys(new_key(), new_key(), new_key(), new_key(), new_key())
    entries = ",".join(
        [
            key_entry("ops", ["admin"], keys.ops),
            key_entry("writer", ["read", "write"], keys.writer),
            key_entry("viewer", ["read"], keys.viewer),
            key_entry("w1", ["worker"], keys.w1),
            key_entry("w2", ["worker"], keys.w2),
        ]
    )
    home: Path = tmp_path_factory.mktemp("containment")
    with (
        real_stack(
            home,
            deployment=f"t{run_id}-sec",
            image=sandbox_image,
            gateway_env={
                "LONGSHORE_GATEWAY_API_KEYS": entries,
                "LONGSHORE_GATEWAY_RATE_LIMIT_RPS": "1000",
                "LONGSHORE_GATEWAY_RATE_LIMIT_BURST": "1000",
            },
            kanban_env={"LONGSHORE_KANBAN_DISPATCH_INTERVAL_SECONDS": "0.5"},
        ) as stack,
        stack.channel() as channel,
    ):
        stubs = Stubs(channel)
        admin = md(keys.ops)
        spec = sandbox_pb2.SandboxSpec(image=sandbox_image, user="1000", env={"SECRET": SECRET})
        for name, executor in (
            ("ext", profile_pb2.EXECUTOR_EXTERNAL),
            ("disp", profile_pb2.EXECUTOR_SANDBOX),
        ):
            stubs.kanban.CreateProfile(
                kpb.CreateProfileRequest(
                    profile=profile_pb2.Profile(name=name, executor=executor, sandbox_spec=spec)
                ),
                metadata=admin,
                timeout=30,
            )

        def task(title: str, assignee: str, priority: int, command: list[str]) -> str:
            created = stubs.kanban.CreateTask(
                kpb.CreateTaskRequest(
                    task=task_pb2.Task(
                        board_id="default",
                        title=title,
                        assignee=assignee,
                        priority=priority,
                        command=command,
                        env={"TASK_SECRET": TASK_SECRET},
                    )
                ),
                metadata=md(keys.writer),
                timeout=30,
            )
            return created.task.task_id

        own_task = task("own", "ext", 10, ["true"])
        other_task = task("other", "ext", 5, ["true"])
        dispatched_task = task("dispatched", "disp", 0, ["sh", "-c", "sleep 120"])

        def claim(key: str) -> Claim:
            reply = stubs.worker.ClaimTask(
                wpb.ClaimTaskRequest(profile="ext", worker_id=f"worker-{key[-4:]}"),
                metadata=md(key),
                timeout=30,
            )
            assert reply.run_id, "nothing claimed"
            return Claim(reply.task.task_id, reply.run_id, reply.sandbox_token, reply.sandbox_spec)

        own = claim(keys.w1)
        other = claim(keys.w2)
        assert (own.task_id, other.task_id) == (own_task, other_task)
        idle_task = task("idle", "ext", -5, ["true"])

        def dispatched() -> task_pb2.Task | None:
            got = stubs.kanban.GetTask(
                kpb.GetTaskRequest(task_id=dispatched_task), metadata=admin, timeout=10
            ).task
            return got if got.current_run_id and got.sandbox_id else None

        running = wait_for(dispatched, "the dispatcher to run its task")
        assert isinstance(running, task_pb2.Task)
        acquired = stubs.sandbox.AcquireSandbox(
            spb.AcquireSandboxRequest(task_id=own.task_id, profile="ext", spec=own.spec),
            metadata=md(keys.w1, own.token),
            timeout=60,
        )
        yield World(
            stack=stack,
            stubs=stubs,
            keys=keys,
            own=own,
            other=other,
            dispatched_task=dispatched_task,
            dispatched_run=running.current_run_id,
            dispatched_sandbox=running.sandbox_id,
            idle_task=idle_task,
            own_sandbox=acquired.sandbox.sandbox_id,
            responses=[],
        )


def check(cases: list[tuple[str, Callable[[], object], set[Code], str]]) -> None:
    """Run every case; fail once, listing every case whose outcome was wrong."""
    wrong = []
    for label, call, expected, needle in cases:
        code, details, _ = outcome(call)
        if code not in expected:
            wrong.append(
                f"{label}: got {code.name} {details!r}, expected {sorted(c.name for c in expected)}"
            )
        elif code in REFUSED and needle.lower() not in details.lower():
            wrong.append(f"{label}: refusal {details!r} does not name {needle!r}")
    assert not wrong, "\n".join(wrong)


def test_worker_calls_on_runs_follow_ownership(world: World) -> None:
    s, k = world.stubs, world.keys
    own, other, dispatched = world.own.run_id, world.other.run_id, world.dispatched_run
    cases: list[tuple[str, Callable[[], object], set[Code], str]] = []
    calls: dict[str, Callable[[str, str], object]] = {
        "Heartbeat": lambda key, run: s.worker.Heartbeat(
            wpb.HeartbeatRequest(run_id=run), metadata=md(key), timeout=10
        ),
        "AppendOutput": lambda key, run: s.worker.AppendOutput(
            wpb.AppendOutputRequest(run_id=run, data=b"x"), metadata=md(key), timeout=10
        ),
        "CompleteTask": lambda key, run: s.worker.CompleteTask(
            wpb.CompleteTaskRequest(run_id=run, summary="stolen"), metadata=md(key), timeout=10
        ),
        "FailTask": lambda key, run: s.worker.FailTask(
            wpb.FailTaskRequest(run_id=run, error="sabotage"), metadata=md(key), timeout=10
        ),
    }
    for method, call in calls.items():
        for who, key in (("w1", k.w1), ("ops", k.ops)):
            cases.append(
                (
                    f"{method} by {who} on w2's run",
                    lambda c=call, key=key: c(key, other),
                    {Code.PERMISSION_DENIED},
                    other,
                )
            )
            cases.append(
                (
                    f"{method} by {who} on the dispatcher's run",
                    lambda c=call, key=key: c(key, dispatched),
                    {Code.PERMISSION_DENIED},
                    "dispatcher",
                )
            )
        for who, key in (("viewer", k.viewer), ("writer", k.writer)):
            cases.append(
                (
                    f"{method} by {who}",
                    lambda c=call, key=key: c(key, own),
                    {Code.PERMISSION_DENIED},
                    "worker",
                )
            )
        cases.append(
            (f"{method} without a key", lambda c=call: c(None, own), {Code.UNAUTHENTICATED}, "key")
        )  # type: ignore[arg-type]
        cases.append(
            (
                f"{method} on no run",
                lambda c=call: c(k.w1, "r_does_not_exist"),
                {Code.NOT_FOUND},
                "",
            )
        )
    cases.append(
        ("Heartbeat by w1 on its own run", lambda: calls["Heartbeat"](k.w1, own), {Code.OK}, "")
    )
    cases.append(
        (
            "AppendOutput by w1 on its own run",
            lambda: calls["AppendOutput"](k.w1, own),
            {Code.OK},
            "",
        )
    )
    check(cases)
    # Nothing above moved the other runs' tasks.
    for task_id in (world.other.task_id, world.dispatched_task):
        got = s.kanban.GetTask(kpb.GetTaskRequest(task_id=task_id), metadata=md(k.ops), timeout=10)
        assert got.task.status == task_pb2.TASK_STATUS_RUNNING, task_id


def test_sandbox_calls_follow_ownership(world: World) -> None:
    s, k, own, other = world.stubs, world.keys, world.own, world.other
    mine, theirs = world.own_sandbox, world.dispatched_sandbox

    def acquire(
        key: str | None, token: str | None, task_id: str, spec: sandbox_pb2.SandboxSpec
    ) -> object:
        return s.sandbox.AcquireSandbox(
            spb.AcquireSandboxRequest(task_id=task_id, profile="ext", spec=spec),
            metadata=md(key, token),
            timeout=60,
        )

    def run(key: str | None, token: str | None, sandbox_id: str, user: str = "") -> object:
        return s.sandbox.Exec(
            spb.ExecRequest(sandbox_id=sandbox_id, argv=["id", "-u"], user=user),
            metadata=md(key, token),
            timeout=60,
        )

    def release(key: str | None, token: str | None, sandbox_id: str) -> object:
        return s.sandbox.ReleaseSandbox(
            spb.ReleaseSandboxRequest(sandbox_id=sandbox_id, force_remove=True),
            metadata=md(key, token),
            timeout=30,
        )

    wider = sandbox_pb2.SandboxSpec()
    wider.CopyFrom(own.spec)
    wider.cap_add.append("SYS_ADMIN")
    bound = sandbox_pb2.SandboxSpec()
    bound.CopyFrom(own.spec)
    bound.volumes.add(host_path="/etc", container_path="/host-etc", read_only=True)
    forged = own.token[:-4] + ("AAAA" if not own.token.endswith("AAAA") else "BBBB")
    cases: list[tuple[str, Callable[[], object], set[Code], str]] = [
        (
            "acquire own task without a token",
            lambda: acquire(k.w1, None, own.task_id, own.spec),
            {Code.PERMISSION_DENIED},
            "token",
        ),
        (
            "acquire with a forged token",
            lambda: acquire(k.w1, forged, own.task_id, own.spec),
            {Code.PERMISSION_DENIED},
            "token",
        ),
        (
            "acquire another task with own token",
            lambda: acquire(k.w1, own.token, other.task_id, other.spec),
            {Code.PERMISSION_DENIED},
            "task",
        ),
        (
            "acquire with w2's token",
            lambda: acquire(k.w1, other.token, other.task_id, other.spec),
            {Code.PERMISSION_DENIED},
            "token",
        ),
        (
            "acquire the idle task",
            lambda: acquire(k.w1, own.token, world.idle_task, own.spec),
            {Code.PERMISSION_DENIED},
            "task",
        ),
        (
            "acquire a wider spec (cap_add)",
            lambda: acquire(k.w1, own.token, own.task_id, wider),
            {Code.PERMISSION_DENIED},
            "spec",
        ),
        (
            "acquire with a host bind",
            lambda: acquire(k.w1, own.token, own.task_id, bound),
            {Code.PERMISSION_DENIED},
            "spec",
        ),
        (
            "acquire by the writer (no run)",
            lambda: acquire(k.writer, None, own.task_id, own.spec),
            {Code.PERMISSION_DENIED},
            "token",
        ),
        (
            "acquire by the viewer",
            lambda: acquire(k.viewer, own.token, own.task_id, own.spec),
            {Code.PERMISSION_DENIED},
            "scope",
        ),
        (
            "acquire without a key",
            lambda: acquire(None, own.token, own.task_id, own.spec),
            {Code.UNAUTHENTICATED},
            "key",
        ),
        (
            "admin acquire with a host bind",
            lambda: acquire(k.ops, None, own.task_id, bound),
            {Code.PERMISSION_DENIED},
            "host_path",
        ),
        (
            "admin acquire adding SYS_ADMIN",
            lambda: acquire(k.ops, None, own.task_id, wider),
            {Code.PERMISSION_DENIED},
            "cap_add",
        ),
        ("exec in own sandbox", lambda: run(k.w1, own.token, mine), {Code.OK}, ""),
        (
            "exec in own sandbox as root",
            lambda: run(k.w1, own.token, mine, user="0"),
            {Code.PERMISSION_DENIED},
            "user",
        ),
        (
            "exec in own sandbox without a token",
            lambda: run(k.w1, None, mine),
            {Code.PERMISSION_DENIED},
            "token",
        ),
        (
            "exec in own sandbox with w2's token",
            lambda: run(k.w2, other.token, mine),
            {Code.PERMISSION_DENIED},
            "task",
        ),
        (
            "exec in the dispatcher's sandbox",
            lambda: run(k.w1, own.token, theirs),
            {Code.PERMISSION_DENIED},
            "task",
        ),
        (
            "exec by the viewer",
            lambda: run(k.viewer, own.token, mine),
            {Code.PERMISSION_DENIED},
            "scope",
        ),
        (
            "release the dispatcher's sandbox",
            lambda: release(k.w1, own.token, theirs),
            {Code.PERMISSION_DENIED},
            "task",
        ),
        (
            "release by the writer",
            lambda: release(k.writer, None, theirs),
            {Code.PERMISSION_DENIED},
            "token",
        ),
        (
            "reap by a worker",
            lambda: s.sandbox.ReapOrphans(
                spb.ReapOrphansRequest(dry_run=True), metadata=md(k.w1, own.token), timeout=30
            ),
            {Code.PERMISSION_DENIED},
            "admin",
        ),
        (
            "check a spec by a worker",
            lambda: s.sandbox.CheckSandboxSpec(
                spb.CheckSandboxSpecRequest(spec=own.spec), metadata=md(k.w1, own.token), timeout=30
            ),
            {Code.PERMISSION_DENIED},
            "admin",
        ),
        ("admin exec in the dispatcher's sandbox", lambda: run(k.ops, None, theirs), {Code.OK}, ""),
        (
            "viewer lists sandboxes",
            lambda: s.sandbox.ListSandboxes(
                spb.ListSandboxesRequest(), metadata=md(k.viewer), timeout=30
            ),
            {Code.OK},
            "",
        ),
    ]
    check(cases)
    # The holder's own commands run as the profile's user, never root.
    code, _, chunks = outcome(lambda: run(k.w1, own.token, mine))
    assert code == Code.OK
    out = b"".join(c.output.data for c in chunks if c.HasField("output"))  # type: ignore[union-attr]
    assert out.strip() == b"1000"


def test_profiles_are_admin_policy(world: World) -> None:
    s, k = world.stubs, world.keys

    def create(key: str, spec: sandbox_pb2.SandboxSpec, name: str) -> object:
        return s.kanban.CreateProfile(
            kpb.CreateProfileRequest(
                profile=profile_pb2.Profile(
                    name=name, executor=profile_pb2.EXECUTOR_SANDBOX, sandbox_spec=spec
                )
            ),
            metadata=md(key),
            timeout=30,
        )

    image = world.own.spec.image
    cases: list[tuple[str, Callable[[], object], set[Code], str]] = [
        (
            "writer creates a profile",
            lambda: create(k.writer, sandbox_pb2.SandboxSpec(image=image), "p-writer"),
            {Code.PERMISSION_DENIED},
            "admin",
        ),
        (
            "worker creates a profile",
            lambda: create(k.w1, sandbox_pb2.SandboxSpec(image=image), "p-worker"),
            {Code.PERMISSION_DENIED},
            "admin",
        ),
        (
            "admin binds /etc",
            lambda: create(
                k.ops,
                sandbox_pb2.SandboxSpec(
                    image=image,
                    volumes=[sandbox_pb2.VolumeMount(host_path="/etc", container_path="/x")],
                ),
                "p-etc",
            ),
            {Code.PERMISSION_DENIED},
            "host_path",
        ),
        (
            "admin binds the engine socket",
            lambda: create(
                k.ops,
                sandbox_pb2.SandboxSpec(
                    image=image,
                    volumes=[
                        sandbox_pb2.VolumeMount(
                            host_path="/var/run/docker.sock", container_path="/d.sock"
                        )
                    ],
                ),
                "p-sock",
            ),
            {Code.PERMISSION_DENIED, Code.INVALID_ARGUMENT},
            "host_path",
        ),
        (
            "admin adds SYS_ADMIN",
            lambda: create(
                k.ops, sandbox_pb2.SandboxSpec(image=image, cap_add=["SYS_ADMIN"]), "p-cap"
            ),
            {Code.PERMISSION_DENIED},
            "cap_add",
        ),
        (
            "writer edits a profile",
            lambda: s.kanban.UpdateProfile(
                kpb.UpdateProfileRequest(
                    profile=profile_pb2.Profile(name="ext", description="mine")
                ),
                metadata=md(k.writer),
                timeout=30,
            ),
            {Code.PERMISSION_DENIED},
            "admin",
        ),
        (
            "writer names an image outside the profile's",
            lambda: s.kanban.CreateTask(
                kpb.CreateTaskRequest(
                    task=task_pb2.Task(
                        board_id="default",
                        title="img",
                        assignee="ext",
                        image="longshore/gateway:latest",
                    )
                ),
                metadata=md(k.writer),
                timeout=30,
            ),
            {Code.PERMISSION_DENIED},
            "image",
        ),
    ]
    check(cases)
    for name in ("p-etc", "p-sock", "p-cap", "p-writer", "p-worker"):
        code, _, _ = outcome(
            lambda n=name: s.kanban.GetProfile(
                kpb.GetProfileRequest(name=n), metadata=md(k.ops), timeout=10
            )
        )
        assert code == Code.NOT_FOUND, f"{name} was stored"


def test_no_read_reveals_an_env_value(world: World) -> None:
    s, k = world.stubs, world.keys
    replies: list[tuple[str, Message]] = []
    for who, key in (("viewer", k.viewer), ("writer", k.writer), ("ops", k.ops)):
        meta = md(key)
        replies += [
            (
                f"{who} GetProfile",
                s.kanban.GetProfile(kpb.GetProfileRequest(name="ext"), metadata=meta, timeout=10),
            ),
            (
                f"{who} ListProfiles",
                s.kanban.ListProfiles(kpb.ListProfilesRequest(), metadata=meta, timeout=10),
            ),
            (
                f"{who} GetTask",
                s.kanban.GetTask(
                    kpb.GetTaskRequest(task_id=world.own.task_id), metadata=meta, timeout=10
                ),
            ),
            (
                f"{who} ListTasks",
                s.kanban.ListTasks(
                    kpb.ListTasksRequest(board_id="default", include_readiness=True),
                    metadata=meta,
                    timeout=10,
                ),
            ),
            (
                f"{who} ListTaskEvents",
                s.kanban.ListTaskEvents(kpb.ListTaskEventsRequest(), metadata=meta, timeout=10),
            ),
            (
                f"{who} ExplainTask",
                s.kanban.ExplainTask(
                    kpb.ExplainTaskRequest(task_id=world.own.task_id), metadata=meta, timeout=10
                ),
            ),
            (
                f"{who} ListSandboxes",
                s.sandbox.ListSandboxes(spb.ListSandboxesRequest(), metadata=meta, timeout=10),
            ),
        ]
    leaks = [
        label
        for label, reply in replies
        if SECRET.encode() in reply.SerializeToString()
        or TASK_SECRET.encode() in reply.SerializeToString()
    ]
    assert not leaks, f"env values leaked in: {leaks}"
    profile = s.kanban.GetProfile(
        kpb.GetProfileRequest(name="ext"), metadata=md(k.viewer), timeout=10
    )
    assert dict(profile.profile.sandbox_spec.env) == {"SECRET": "<redacted>"}
    # The run's holder is handed the values it needs for its own sandbox.
    assert world.own.spec.env["SECRET"] == SECRET
    assert world.own.spec.env["TASK_SECRET"] == TASK_SECRET


def test_sandboxes_are_hardened_and_shaped_by_the_profile(
    world: World, docker_client: docker.DockerClient
) -> None:
    for sandbox_id in (world.own_sandbox, world.dispatched_sandbox):
        attrs = docker_client.api.inspect_container(sandbox_id)
        host = attrs["HostConfig"]
        assert attrs["Config"]["User"] == "1000"
        assert host["Init"] is True
        assert host["CapDrop"] == ["ALL"]
        assert set(host["CapAdd"] or []) <= {
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "SETGID",
            "SETUID",
            "KILL",
        }
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["PidsLimit"] and host["Memory"] and host["NanoCpus"]
        assert "/tmp" in (host.get("Tmpfs") or {})
        assert not host.get("Binds"), host.get("Binds")
        assert host["NetworkMode"] != "host"
        assert not any("docker.sock" in (m.get("Source") or "") for m in attrs.get("Mounts", []))
