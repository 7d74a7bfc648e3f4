"""Get, list, release, cleanup threads, the reaper and idle handling on the real engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta

import docker
import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from services.sandbox import labels
from services.sandbox.manager import SandboxManager
from services.sandbox.model import Spec
from services.sandbox.reaper import Reaper, StartupGuard
from tests.support.hardening_audit import FORGED_LABEL

T = 30


def acquire(
    stub: SandboxServiceStub, task: str, profile: str = "coder", persist: bool = True
) -> str:
    req = sandbox_service_pb2.AcquireSandboxRequest(
        task_id=task, profile=profile, persist_across_processes=persist
    )
    return stub.AcquireSandbox(req, timeout=T).sandbox.sandbox_id


def exists(engine: docker.DockerClient, cid: str) -> bool:
    try:
        engine.api.inspect_container(cid)
    except docker.errors.NotFound:
        return False
    return True


def test_get_by_id_prefix_and_name_and_not_found(stub: SandboxServiceStub) -> None:
    cid = acquire(stub, "get")
    full = stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=cid), timeout=T)
    assert (
        full.sandbox.sandbox_id == cid and full.sandbox.state == sandbox_pb2.SANDBOX_STATE_RUNNING
    )
    short = stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=cid[:12]), timeout=T)
    named = stub.GetSandbox(
        sandbox_service_pb2.GetSandboxRequest(sandbox_id=full.sandbox.name), timeout=T
    )
    assert short.sandbox.sandbox_id == named.sandbox.sandbox_id == cid
    for bad, code in (
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("f" * 64, grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.GetSandbox(sandbox_service_pb2.GetSandboxRequest(sandbox_id=bad), timeout=T)
        assert info.value.code() == code


def test_list_filters_pages_newest_first(
    stub: SandboxServiceStub, engine: docker.DockerClient
) -> None:
    ids = [acquire(stub, f"list-{i}", profile="a" if i % 2 else "b") for i in range(5)]
    engine.api.stop(ids[0], timeout=0)
    everything = stub.ListSandboxes(sandbox_service_pb2.ListSandboxesRequest(), timeout=T)
    assert [s.sandbox_id for s in everything.sandboxes] == ids[::-1]
    only_a = stub.ListSandboxes(sandbox_service_pb2.ListSandboxesRequest(profile="a"), timeout=T)
    assert {s.sandbox_id for s in only_a.sandboxes} == {ids[1], ids[3]}
    exited = stub.ListSandboxes(
        sandbox_service_pb2.ListSandboxesRequest(states=[sandbox_pb2.SANDBOX_STATE_EXITED]),
        timeout=T,
    )
    assert [s.sandbox_id for s in exited.sandboxes] == [ids[0]]
    one_task = stub.ListSandboxes(
        sandbox_service_pb2.ListSandboxesRequest(task_id="list-2"), timeout=T
    )
    assert [s.sandbox_id for s in one_task.sandboxes] == [ids[2]]
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListSandboxes(
            sandbox_service_pb2.ListSandboxesRequest(page_size=2, page_token=token), timeout=T
        )
        seen += [s.sandbox_id for s in page.sandboxes]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]
    for bad in (
        sandbox_service_pb2.ListSandboxesRequest(page_size=-1),
        sandbox_service_pb2.ListSandboxesRequest(page_token="garbage!"),
        sandbox_service_pb2.ListSandboxesRequest(states=[sandbox_pb2.SANDBOX_STATE_UNSPECIFIED]),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.ListSandboxes(bad, timeout=T)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_release_persistent_leaves_it_running(
    stub: SandboxServiceStub, engine: docker.DockerClient
) -> None:
    cid = acquire(stub, "keep")
    resp = stub.ReleaseSandbox(sandbox_service_pb2.ReleaseSandboxRequest(sandbox_id=cid), timeout=T)
    assert not resp.removal_scheduled
    assert engine.api.inspect_container(cid)["State"]["Running"]


def test_forced_and_non_persistent_release_remove_on_a_cleanup_thread(
    stub: SandboxServiceStub, manager: SandboxManager, engine: docker.DockerClient
) -> None:
    forced = acquire(stub, "forced")
    fresh = acquire(stub, "fresh", persist=False)
    for cid, force in ((forced, True), (fresh, False)):
        resp = stub.ReleaseSandbox(
            sandbox_service_pb2.ReleaseSandboxRequest(sandbox_id=cid, force_remove=force), timeout=T
        )
        assert resp.removal_scheduled
    assert manager.cleanup.drain(15)
    assert not exists(engine, forced) and not exists(engine, fresh)
    with pytest.raises(grpc.RpcError) as info:
        stub.ReleaseSandbox(sandbox_service_pb2.ReleaseSandboxRequest(sandbox_id=forced), timeout=T)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reaper_removes_only_old_exited_sandboxes_of_this_deployment(
    stub: SandboxServiceStub,
    engine: docker.DockerClient,
    sandbox_image: str,
    run_labels: dict[str, str],
    test_deployment: str,
) -> None:
    old = [acquire(stub, f"old-{i}") for i in range(3)]
    other_profile = acquire(stub, "old-x", profile="other")
    running = acquire(stub, "running")
    for cid in [*old, other_profile]:
        engine.api.stop(cid, timeout=0)
    foreign = [
        engine.api.create_container(
            sandbox_image, command=["true"], labels={**run_labels, **extra, FORGED_LABEL: "1"}
        )["Id"]
        for extra in (
            {labels.MANAGED: "1", labels.DEPLOYMENT: test_deployment + "-other"},
            {labels.MANAGED: "1"},
        )
    ]
    try:
        for cid in foreign:
            engine.api.start(cid)
            engine.api.wait(cid, timeout=T)
        young = stub.ReapOrphans(sandbox_service_pb2.ReapOrphansRequest(), timeout=T)
        assert not young.removed and len(young.spared) == 4
        assert all("<= max age 10m" in d.reason for d in young.spared)
        assert young.max_age.ToTimedelta() == timedelta(minutes=10)
        zero = duration_pb2.Duration(seconds=0)
        dry = stub.ReapOrphans(
            sandbox_service_pb2.ReapOrphansRequest(max_age=zero, dry_run=True, profile="coder"),
            timeout=T,
        )
        assert dry.dry_run and {d.sandbox_id for d in dry.removed} == set(old)
        assert all(d.reason.startswith("would remove") for d in dry.removed)
        assert all(exists(engine, c) for c in old)
        real = stub.ReapOrphans(
            sandbox_service_pb2.ReapOrphansRequest(max_age=zero, profile="coder"), timeout=T
        )
        assert {d.sandbox_id for d in real.removed} == set(old) and not real.failed
        assert not any(exists(engine, c) for c in old)
        assert exists(engine, other_profile) and exists(engine, running)
        assert all(exists(engine, c) for c in foreign)
        with pytest.raises(grpc.RpcError) as info:
            stub.ReapOrphans(
                sandbox_service_pb2.ReapOrphansRequest(max_age=duration_pb2.Duration(seconds=-5)),
                timeout=T,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        for cid in foreign:
            engine.api.remove_container(cid, force=True)


def test_startup_sweep_runs_once_per_process_and_disabled_does_not_trip_it(
    make_manager: Callable[..., SandboxManager], engine: docker.DockerClient
) -> None:
    guard = StartupGuard()
    disabled = Reaper(make_manager(reaper_enabled=False), guard=guard)
    assert not disabled.startup_once() and not guard.tripped
    manager = make_manager(reaper_enabled=True, lifetime_seconds=0)
    cid = manager.acquire("gone", "coder", Spec()).sandbox.sandbox_id
    engine.api.stop(cid, timeout=0)
    reaper = Reaper(manager, guard=guard)
    later = manager.clock() + timedelta(minutes=3)
    assert reaper.startup_once(now=later)
    assert not exists(engine, cid)
    assert not Reaper(manager, guard=guard).startup_once(now=later)
    assert manager.metrics.snapshot()["reaped"] == 1


def test_idle_sandboxes_are_removed_or_stopped(
    make_manager: Callable[..., SandboxManager], engine: docker.DockerClient
) -> None:
    manager = make_manager(lifetime_seconds=60, idle_stop_seconds=120)
    throwaway = manager.acquire("tmp", "coder", Spec(), persist=False).sandbox.sandbox_id
    kept = manager.acquire("kept", "coder", Spec()).sandbox.sandbox_id
    reaper = Reaper(manager, guard=StartupGuard())
    now = manager.clock()
    assert reaper.idle(now + timedelta(seconds=30)) == []
    acted = {cid: action for cid, action, _ in reaper.idle(now + timedelta(seconds=90))}
    assert acted == {throwaway: "remove"}
    assert manager.cleanup.drain(15) and not exists(engine, throwaway)
    acted = {cid: action for cid, action, _ in reaper.idle(now + timedelta(seconds=150))}
    assert acted == {kept: "stop"}
    assert engine.api.inspect_container(kept)["State"]["Status"] == "exited"
    # Stopped, it is now the reaper's to age out.
    report = reaper.reap(max_age=timedelta(0))
    assert [d.candidate.sandbox_id for d in report.removed] == [kept]


def test_hardening_is_on_by_default_and_options_apply(
    make_manager: Callable[..., SandboxManager], engine: docker.DockerClient
) -> None:
    from services.sandbox.model import Network

    manager = make_manager()
    cid = manager.acquire("hard", "coder", Spec()).sandbox.sandbox_id
    host = engine.api.inspect_container(cid)["HostConfig"]
    assert host["Init"] is True
    assert host["CapDrop"] == ["ALL"]
    assert set(host["CapAdd"]) == set(manager.section.capabilities)
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["PidsLimit"] == 128 and host["Memory"] == 128 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert "/tmp" in host["Tmpfs"]
    assert not host["ReadonlyRootfs"] and host["NetworkMode"] == "bridge"
    mounts = engine.api.inspect_container(cid)["Mounts"]
    assert not any("docker.sock" in m.get("Source", "") for m in mounts)
    opts = dataclasses.replace(
        Spec(), read_only_rootfs=True, network=Network.NONE, user="65534:65534"
    )
    cid = manager.acquire("hard2", "coder", opts).sandbox.sandbox_id
    attrs = engine.api.inspect_container(cid)
    assert attrs["HostConfig"]["ReadonlyRootfs"] and attrs["HostConfig"]["NetworkMode"] == "none"
    assert attrs["Config"]["User"] == "65534:65534"
    out = engine.api.exec_start(
        engine.api.exec_create(
            cid, ["sh", "-c", "touch /x 2>&1; touch /tmp/y && echo tmp-ok; id -u"]
        )["Id"]
    )
    assert b"Read-only" in out and b"tmp-ok" in out and b"65534" in out
