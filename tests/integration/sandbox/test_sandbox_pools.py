"""Warm pools on the real engine, through the real gateway and manager processes (issue 13 §4).

A pool fills to its size; an acquire for a new task takes a member
(TAKEN_FROM_POOL), which then is that task's sandbox everywhere (ListSandboxes,
the task's token works on it, another task's is refused, a second acquire of
the key finds it by name); the pool refills; many concurrent acquires never
share a member; a changed spec and size 0 drain; caps, scopes and the policy
refuse; a missing image sets the reason without a crash; a restarted manager
re-adopts its members. The reaper rules run on an in-process manager with a
fake clock (an hour of idleness without waiting for it).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import docker
import grpc
import pytest
from google.protobuf import field_mask_pb2
from longshore.kanban.v1 import kanban_service_pb2 as kpb
from longshore.kanban.v1 import profile_pb2, task_pb2
from longshore.sandbox.v1 import pool_pb2, sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from services.runtime.callers import caller_metadata
from services.runtime.interceptors import INTERNAL_TOKEN_KEY
from services.runtime.sandbox_tokens import SANDBOX_TOKEN_KEY, SandboxGrant, SandboxTokens
from services.runtime.sandbox_tokens import spec_digest as digest_of
from services.sandbox import labels
from services.sandbox.hardening import resolve_spec
from services.sandbox.manager import SandboxManager
from services.sandbox.model import Spec
from services.sandbox.owners import current_owner
from services.sandbox.reaper import Reaper, StartupGuard
from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.integration.sandbox.conftest import remove_deployment
from tests.support.processes import REPO_ROOT, ServiceProcess, service_env

T = 60
pb = sandbox_service_pb2
Metadata = Sequence[tuple[str, str]]
#: The spec workers acquire with (their token pins its digest); the pool's too.
SPEC = sandbox_pb2.SandboxSpec()
#: A sandbox manager that fills fast and allows small caps the tests can reach.
MANAGER_ENV = {
    "LONGSHORE_SANDBOX_WARM_FILL_INTERVAL_SECONDS": "0.5",
    "LONGSHORE_SANDBOX_MAX_WARM_PER_POOL": "4",
    "LONGSHORE_SANDBOX_MAX_WARM_TOTAL": "8",
    "LONGSHORE_SANDBOX_WARM_FILL_CONCURRENCY": "2",
    "LONGSHORE_SANDBOX_DEFAULT_MEMORY_BYTES": str(128 * 1024 * 1024),
    "LONGSHORE_SANDBOX_DEFAULT_CPUS": "0.5",
}


def wait_until(what: str, check: Callable[[], bool], bound: float = 90.0) -> None:
    """Waits (bounded, generously) for a condition the manager reaches in the background."""
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


@dataclass
class Rig:
    stack: RealStack
    stubs: Stubs
    deployment: str
    engine: docker.DockerClient

    @property
    def admin(self) -> Metadata:
        return auth(self.stack.keys.admin)

    def worker(self, task: str, profile: str = "coder") -> Metadata:
        grant = SandboxGrant(
            deployment=self.deployment,
            task_id=task,
            profile=profile,
            run_id=f"r-{task}",
            spec_digest=digest_of(SPEC),
            expires=time.time() + 600,
            holder="bot",
        )
        token = SandboxTokens(self.stack.token).mint(grant)
        return (*auth(self.stack.keys.worker), (SANDBOX_TOKEN_KEY, token))

    def set_pool(
        self, profile: str, size: int, spec: sandbox_pb2.SandboxSpec = SPEC
    ) -> pool_pb2.WarmPool:
        return self.stubs.sandbox.SetWarmPool(
            pool_pb2.SetWarmPoolRequest(profile=profile, spec=spec, size=size),
            timeout=T,
            metadata=self.admin,
        ).pool

    def pool(self, profile: str) -> pool_pb2.WarmPool | None:
        pools = self.stubs.sandbox.ListWarmPools(
            pool_pb2.ListWarmPoolsRequest(profile=profile),
            timeout=T,
            metadata=auth(self.stack.keys.reader),
        ).pools
        return pools[0] if pools else None

    def wait_ready(self, profile: str, ready: int) -> pool_pb2.WarmPool:
        wait_until(
            f"pool {profile} has {ready} ready",
            lambda: (p := self.pool(profile)) is not None and p.ready == ready,
        )
        found = self.pool(profile)
        assert found is not None
        return found

    def members(self, profile: str) -> set[str]:
        """Ids of the pool's members no task took (as ListSandboxes shows them)."""
        rows = self.stubs.sandbox.ListSandboxes(
            pb.ListSandboxesRequest(profile=profile, page_size=100), timeout=T, metadata=self.admin
        ).sandboxes
        return {r.sandbox_id for r in rows if r.warm_pool == profile}

    def acquire(self, task: str, profile: str, metadata: Metadata) -> pb.AcquireSandboxResponse:
        return self.stubs.sandbox.AcquireSandbox(
            pb.AcquireSandboxRequest(task_id=task, profile=profile, spec=SPEC),
            timeout=T,
            metadata=metadata,
        )

    def exec(self, box: str, metadata: Metadata) -> bytes:
        out = b""
        for message in self.stubs.sandbox.Exec(
            pb.ExecRequest(sandbox_id=box, argv=["echo", "hi"]), timeout=T, metadata=metadata
        ):
            if message.HasField("output"):
                out += message.output.data
        return out

    def exists(self, cid: str) -> bool:
        try:
            self.engine.api.inspect_container(cid)
        except docker.errors.NotFound:
            return False
        return True


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str) -> Iterator[Rig]:
    deployment = f"t{run_id}-pools"
    home = tmp_path_factory.mktemp("pools-stack")
    client = docker.from_env()
    try:
        with (
            real_stack(
                home,
                deployment=deployment,
                image=sandbox_image,
                sandbox_env=MANAGER_ENV,
                # Kanban reconciles at start only: the pools these tests set
                # directly belong to no profile and would be drained.
                kanban_env={"LONGSHORE_KANBAN_WARM_POOL_SYNC_SECONDS": "0"},
            ) as stack,
            stack.channel() as channel,
        ):
            yield Rig(stack, Stubs(channel), deployment, client)
    finally:
        remove_deployment(client, deployment)
        client.close()


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def test_acquire_takes_a_member_which_becomes_the_tasks_sandbox(rig: Rig) -> None:
    pool = rig.set_pool("coder", 2)
    assert pool.size == 2 and pool.config_hash
    rig.wait_ready("coder", 2)
    members = rig.members("coder")
    assert len(members) == 2

    got = rig.acquire("t-one", "coder", rig.worker("t-one"))
    assert got.outcome == sandbox_pb2.REUSE_OUTCOME_TAKEN_FROM_POOL, got.reason
    box = got.sandbox.sandbox_id
    assert box in members
    assert got.sandbox.task_id == "t-one" and got.sandbox.warm_pool == ""
    assert got.sandbox.name == labels.container_name(rig.deployment, "coder", "t-one")

    # ListSandboxes by task finds it, though its task-id label predates the task.
    listed = rig.stubs.sandbox.ListSandboxes(
        pb.ListSandboxesRequest(task_id="t-one"), timeout=T, metadata=rig.admin
    ).sandboxes
    assert [r.sandbox_id for r in listed] == [box]
    assert listed[0].task_id == "t-one"

    # The task's token works on it; another task's token is refused by the manager.
    assert rig.exec(box, rig.worker("t-one")) == b"hi\n"
    code, details = failure(lambda: rig.exec(box, rig.worker("t-two")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "t-one" in details

    # A second acquire of the key finds the member by its name: the same sandbox.
    again = rig.acquire("t-one", "coder", rig.worker("t-one"))
    assert again.sandbox.sandbox_id == box
    assert again.outcome == sandbox_pb2.REUSE_OUTCOME_REUSED_RUNNING

    # The pool refills the slot the member left.
    rig.wait_ready("coder", 2)
    assert box not in rig.members("coder") and len(rig.members("coder")) == 2
    # A spec the pool does not run is created cold, never handed a member.
    other = sandbox_pb2.SandboxSpec(memory_bytes=96 * 1024 * 1024)
    cold = rig.stubs.sandbox.AcquireSandbox(
        pb.AcquireSandboxRequest(task_id="t-cold", profile="coder", spec=other),
        timeout=T,
        metadata=rig.admin,
    )
    assert cold.outcome == sandbox_pb2.REUSE_OUTCOME_CREATED


def test_a_key_with_a_sandbox_of_its_own_keeps_it_and_spends_no_member(rig: Rig) -> None:
    # A hit lists nothing of the key: the take's rename to the key's name is
    # the probe. The task's own sandbox (made before the pool, then stopped)
    # holds that name, so the rename fails and the acquire restarts it.
    token = rig.worker("t-own", "own")
    first = rig.acquire("t-own", "own", token)
    assert first.outcome == sandbox_pb2.REUSE_OUTCOME_CREATED
    box = first.sandbox.sandbox_id
    rig.engine.api.stop(box, timeout=1)
    rig.set_pool("own", 1)
    rig.wait_ready("own", 1)
    members = rig.members("own")
    again = rig.acquire("t-own", "own", token)
    assert (again.sandbox.sandbox_id, again.outcome) == (box, sandbox_pb2.REUSE_OUTCOME_RESTARTED)
    assert rig.members("own") == members and rig.pool("own").ready == 1  # type: ignore[union-attr]
    rig.set_pool("own", 0)


def test_other_env_values_are_created_cold_and_spend_no_member(rig: Rig) -> None:
    pooled = sandbox_pb2.SandboxSpec(env={"MODE": "warm"})
    rig.set_pool("envpool", 1, pooled)
    rig.wait_ready("envpool", 1)
    members = rig.members("envpool")

    def acquire(task: str, spec: sandbox_pb2.SandboxSpec) -> pb.AcquireSandboxResponse:
        request = pb.AcquireSandboxRequest(task_id=task, profile="envpool", spec=spec)
        return rig.stubs.sandbox.AcquireSandbox(request, timeout=T, metadata=rig.admin)

    # Same env names (same config hash), other values: not the member's.
    other = acquire("t-env-other", sandbox_pb2.SandboxSpec(env={"MODE": "cold"}))
    assert other.outcome == sandbox_pb2.REUSE_OUTCOME_CREATED
    assert rig.members("envpool") == members
    same = acquire("t-env-same", pooled)
    assert same.outcome == sandbox_pb2.REUSE_OUTCOME_TAKEN_FROM_POOL
    assert same.sandbox.sandbox_id in members
    rig.set_pool("envpool", 0)


def test_concurrent_acquires_never_share_a_member(rig: Rig) -> None:
    rig.set_pool("crowd", 4)
    rig.wait_ready("crowd", 4)
    tasks = [f"t-crowd-{i}" for i in range(10)]
    start = threading.Barrier(len(tasks))

    def one(task: str) -> pb.AcquireSandboxResponse:
        start.wait(T)
        return rig.acquire(task, "crowd", rig.admin)

    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        results = list(pool.map(one, tasks))
    ids = [r.sandbox.sandbox_id for r in results]
    assert len(set(ids)) == len(tasks), "two tasks got one sandbox"
    taken = [r for r in results if r.outcome == sandbox_pb2.REUSE_OUTCOME_TAKEN_FROM_POOL]
    assert 1 <= len(taken) <= 4
    for task, result in zip(tasks, results, strict=True):
        assert result.sandbox.task_id == task
        inspected = rig.engine.api.inspect_container(result.sandbox.sandbox_id)
        assert inspected["Name"].lstrip("/") == labels.container_name(rig.deployment, "crowd", task)
    rig.set_pool("crowd", 0)


def test_changed_spec_drains_then_size_zero_drains_all(rig: Rig) -> None:
    small = sandbox_pb2.SandboxSpec(memory_bytes=64 * 1024 * 1024)
    first = rig.set_pool("drain", 2, small)
    rig.wait_ready("drain", 2)
    old = rig.members("drain")
    bigger = sandbox_pb2.SandboxSpec(memory_bytes=80 * 1024 * 1024)
    second = rig.set_pool("drain", 2, bigger)
    assert second.config_hash != first.config_hash
    wait_until("the old members are gone", lambda: not any(rig.exists(c) for c in old))
    rig.wait_ready("drain", 2)
    new = rig.members("drain")
    assert len(new) == 2 and not new & old

    rig.set_pool("drain", 0)
    wait_until("size 0 drained the pool", lambda: not rig.members("drain"))
    wait_until("the drained pool is forgotten", lambda: rig.pool("drain") is None)


def test_caps_scopes_and_policy_refuse(rig: Rig) -> None:
    code, details = failure(lambda: rig.set_pool("capped", 5))
    assert code == grpc.StatusCode.OUT_OF_RANGE and "max_warm_per_pool" in details
    rig.set_pool("cap-a", 4, sandbox_pb2.SandboxSpec(image="longshore-missing-image:none"))
    try:
        code, details = failure(lambda: rig.set_pool("cap-b", 4))
        assert code == grpc.StatusCode.OUT_OF_RANGE and "max_warm_total" in details
    finally:
        rig.set_pool("cap-a", 0)
    code, details = failure(lambda: rig.set_pool("", 1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "profile" in details

    # Beyond the policy: a capability the manager does not allow.
    beyond = sandbox_pb2.SandboxSpec(cap_add=["NET_ADMIN"])
    code, details = failure(lambda: rig.set_pool("beyond", 1, beyond))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "NET_ADMIN" in details
    assert rig.pool("beyond") is None

    # A key without 'admin' is refused by the gateway; a reader may list.
    request = pool_pb2.SetWarmPoolRequest(profile="coder", spec=SPEC, size=1)
    for key in (rig.stack.keys.reader, rig.stack.keys.worker):
        code, details = failure(
            lambda key=key: rig.stubs.sandbox.SetWarmPool(request, timeout=T, metadata=auth(key))
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and "needs scope" in details
    # ...and by the manager: a forwarded non-operator, even with a sandbox token.
    with grpc.insecure_channel(rig.stack.sandbox_addr) as channel:
        direct = SandboxServiceStub(channel)
        forwarded = (
            (INTERNAL_TOKEN_KEY, rig.stack.token),
            *caller_metadata("bot", {"worker", "read"}),
            rig.worker("t-one")[-1],
        )
        code, details = failure(lambda: direct.SetWarmPool(request, timeout=T, metadata=forwarded))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "operators only" in details


def test_missing_image_sets_the_reason_without_a_crash(rig: Rig) -> None:
    spec = sandbox_pb2.SandboxSpec(image="longshore-missing-image:none")
    pool = rig.set_pool("ghost-image", 1, spec)
    assert pool.ready == 0
    wait_until(
        "the pool says why it is empty",
        lambda: "longshore-missing-image" in ((rig.pool("ghost-image") or pool).reason),
    )
    found = rig.pool("ghost-image")
    assert found is not None and found.ready == 0
    assert rig.stack.processes["sandbox"].returncode is None
    # An acquire of that profile still answers with the image's error, not a member.
    code, _ = failure(
        lambda: rig.stubs.sandbox.AcquireSandbox(
            pb.AcquireSandboxRequest(task_id="t-ghost", profile="ghost-image", spec=spec),
            timeout=T,
            metadata=rig.admin,
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    rig.set_pool("ghost-image", 0)


def test_a_kanban_profile_with_a_warm_pool_runs_its_task_in_a_member(
    rig: Rig, sandbox_image: str
) -> None:
    spec = sandbox_pb2.SandboxSpec(image=sandbox_image)
    profile = profile_pb2.Profile(
        name="warmed", executor=profile_pb2.EXECUTOR_SANDBOX, sandbox_spec=spec, warm_pool_size=1
    )
    kanban = rig.stubs.kanban
    kanban.CreateProfile(kpb.CreateProfileRequest(profile=profile), timeout=T, metadata=rig.admin)
    rig.wait_ready("warmed", 1)
    members = rig.members("warmed")
    task = kanban.CreateTask(
        kpb.CreateTaskRequest(
            task=task_pb2.Task(title="warm run", assignee="warmed", command=["echo", "warm"])
        ),
        timeout=T,
        metadata=rig.admin,
    ).task

    def finished() -> task_pb2.Task | None:
        got = kanban.GetTask(
            kpb.GetTaskRequest(task_id=task.task_id), timeout=T, metadata=rig.admin
        ).task
        return got if got.status == task_pb2.TASK_STATUS_DONE else None

    wait_until("the task is done", lambda: finished() is not None)
    done = finished()
    assert done is not None and done.sandbox_id in members  # its run took the warm member
    rig.wait_ready("warmed", 1)  # and the pool refilled

    # A size the manager refuses refuses the profile write; nothing is stored.
    too_big = profile_pb2.Profile(name="warmed", warm_pool_size=5)
    mask = field_mask_pb2.FieldMask(paths=["warm_pool_size"])
    code, details = failure(
        lambda: kanban.UpdateProfile(
            kpb.UpdateProfileRequest(profile=too_big, update_mask=mask),
            timeout=T,
            metadata=rig.admin,
        )
    )
    assert code == grpc.StatusCode.OUT_OF_RANGE and "warm_pool_size" in details
    stored = kanban.GetProfile(kpb.GetProfileRequest(name="warmed"), timeout=T, metadata=rig.admin)
    assert stored.profile.warm_pool_size == 1
    # Deleting the profile drains its pool.
    kanban.DeleteProfile(kpb.DeleteProfileRequest(name="warmed"), timeout=T, metadata=rig.admin)
    wait_until("the deleted profile's pool is drained", lambda: not rig.members("warmed"))


def cli(rig: Rig, *args: str) -> str:
    """This checkout's CLI (an installed ``longshore`` may be another's), as the admin."""
    env = service_env(
        {
            "LONGSHORE_HOME": str(rig.stack.home / "cli-home"),
            "LONGSHORE_GATEWAY_ADDR": rig.stack.gateway_addr,
            "LONGSHORE_API_KEY": rig.stack.keys.admin,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "clients.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
    return proc.stdout


def test_cli_sets_a_profiles_pool_and_lists_pools(rig: Rig, sandbox_image: str) -> None:
    cli(
        rig,
        "profile",
        "create",
        "clipool",
        "--executor",
        "sandbox",
        "--image",
        sandbox_image,
        "--warm-pool-size",
        "1",
    )
    rig.wait_ready("clipool", 1)
    pools = json.loads(cli(rig, "sandbox", "pools", "--profile", "clipool", "--json"))["pools"]
    assert [(p["profile"], p["size"], p["ready"]) for p in pools] == [("clipool", 1, 1)]
    assert "clipool" in cli(rig, "sandbox", "pools")
    shown = json.loads(cli(rig, "profile", "show", "clipool", "--json"))
    assert shown["warm_pool_size"] == 1
    cli(rig, "profile", "set", "clipool", "--warm-pool-size", "0")
    wait_until("the CLI's size 0 drained the pool", lambda: not rig.members("clipool"))
    cli(rig, "profile", "rm", "clipool")


def test_restarted_manager_re_adopts_its_members(
    rig: Rig, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rig.set_pool("restart", 2)
    rig.wait_ready("restart", 2)
    members = rig.members("restart")
    old = rig.stack.processes["sandbox"]
    assert old.stop() == 0
    fresh = ServiceProcess(
        old.argv,
        env=old.env,
        health_addr=old.health_addr,
        name="sandbox-again",
        log_dir=old.log_path.parent,
    )
    with fresh:
        fresh.start(T)
        rig.stack.processes["sandbox"] = fresh
        wait_until("the gateway reaches the new manager", lambda: _lists(rig))
        pool = rig.wait_ready("restart", 2)
        assert pool.size == 2 and "SetWarmPool" in pool.reason
        assert rig.members("restart") == members  # the same containers, adopted
        got = rig.acquire("t-after", "restart", rig.admin)
        assert got.outcome == sandbox_pb2.REUSE_OUTCOME_TAKEN_FROM_POOL
        assert got.sandbox.sandbox_id in members
        # Given the spec again, it refills.
        rig.set_pool("restart", 2)
        rig.wait_ready("restart", 2)
        fresh.stop()


def _lists(rig: Rig) -> bool:
    try:
        rig.pool("restart")
    except grpc.RpcError:
        return False
    return True


# ---- the reaper's rules, in-process with a fake clock -----------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def dead_owner() -> str:
    """An owner id of this process's kind whose process is gone (our pid, another start)."""
    head, _, start = current_owner().rpartition(".")
    return f"{head}.{int(start) + 1}"


def test_reaper_keeps_ready_members_and_drains_unwanted_ones(
    make_manager: Callable[..., SandboxManager], engine: docker.DockerClient
) -> None:
    clock = FakeClock()
    manager = make_manager(idle_stop_seconds=60, warm_fill_interval_seconds=0.2)
    manager.clock = clock
    reaper = Reaper(manager, guard=StartupGuard())
    manager.pools.set_pool("kept", Spec(), 2)
    manager.pools.start()
    try:
        wait_until("two members", lambda: manager.pools.list_pools("kept")[0].ready == 2)
        taken = manager.acquire("t-idle", "kept", Spec())
        wait_until("refilled", lambda: manager.pools.list_pools("kept")[0].ready == 2)
        members = {
            i.sandbox_id for i in manager.list_sandboxes(profile="kept") if i.warm_pool == "kept"
        }
        assert len(members) == 2

        # From here the reaper's tick alone drains (the filler would race it).
        manager.pools.stop()
        # A member of a pool no manager here wants, made by a dead manager; and
        # one made by another live manager: only the first is drained.
        orphan = _foreign_member(engine, manager, "orphan", dead_owner())
        spared = _foreign_member(engine, manager, "elsewhere", "another-manager-somewhere")

        clock.now += timedelta(hours=1)
        acted = {cid for cid, _action, _reason in reaper.idle(clock.now)}
        assert taken.sandbox.sandbox_id in acted  # the task's sandbox idles like any
        assert not acted & members  # ready members are never idle-stopped
        reaper.tick(clock.now)
        wait_until("the dead manager's member is drained", lambda: not _exists(engine, orphan))
        assert _exists(engine, spared)
        assert all(_exists(engine, cid) for cid in members)
    finally:
        manager.pools.stop()


def _foreign_member(
    engine: docker.DockerClient, manager: SandboxManager, profile: str, owner: str
) -> str:
    """A member of ``profile``'s pool made, as the manager makes them, by manager ``owner``."""
    other = SandboxManager(engine, manager.section, deployment=manager.deployment, owner=owner)
    try:
        resolved = resolve_spec(Spec(), manager.section)
        name = labels.pool_member_name(
            manager.deployment, labels.sanitize(profile), resolved.config_hash, 0
        )
        return other.create_warm_member(profile, resolved, name, 1).sandbox_id
    finally:
        other.close(5)


def _exists(engine: docker.DockerClient, cid: str) -> bool:
    with contextlib.suppress(docker.errors.NotFound):
        engine.api.inspect_container(cid)
        return True
    return False


def test_two_managers_of_one_deployment_stay_within_the_size_and_never_share(
    make_manager: Callable[..., SandboxManager], engine: docker.DockerClient
) -> None:
    first = make_manager(warm_fill_interval_seconds=0.2)
    managers = [
        SandboxManager(engine, first.section, deployment=first.deployment, owner=f"manager-{n}")
        for n in ("a", "b")
    ]
    try:
        for manager in managers:
            manager.pools.set_pool("shared", Spec(), 3)
            manager.pools.start()
        wait_until(
            "both see the pool full",
            lambda: all(m.pools.list_pools("shared")[0].ready == 3 for m in managers),
        )
        # The slots' names cap the pool: two fillers never make more than its size.
        members = {i.sandbox_id for i in first.list_sandboxes(profile="shared") if i.warm_pool}
        assert len(members) == 3
        tasks = [f"t-both-{i}" for i in range(8)]
        start = threading.Barrier(len(tasks))

        def one(i: int) -> str:
            start.wait(T)
            return managers[i % 2].acquire(tasks[i], "shared", Spec()).sandbox.sandbox_id

        with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
            ids = list(pool.map(one, range(len(tasks))))
        assert len(set(ids)) == len(tasks), "two tasks got one sandbox"
        for task, cid in zip(tasks, ids, strict=True):
            name = engine.api.inspect_container(cid)["Name"].lstrip("/")
            assert name == labels.container_name(first.deployment, "shared", task)
    finally:
        for manager in managers:
            manager.pools.stop()
            manager.close(5)
