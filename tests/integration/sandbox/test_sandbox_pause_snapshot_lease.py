"""Pause, resume, snapshots and leases, on the real engine (issue 13 §5).

The domain rules run against an in-process manager with a fake clock (lease
expiry, idle pause: no waiting on wall time); the RPCs run through the real
gateway and manager processes: pause then Exec resumes, a sandbox started
from a snapshot sees the snapshotted file, a lease expires by itself (the
test waits on the engine's own pause/destroy event, not on a sleep), and
both refusals of every RPC: a key without the scope at the gateway, another
task's token (or a non-operator) at the manager.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import docker
import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.kanban.v1 import kanban_service_pb2, profile_pb2, task_pb2, worker_service_pb2
from longshore.sandbox.v1 import lifecycle_pb2, sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from services.runtime.callers import caller_metadata
from services.runtime.errors import ResourceExhausted
from services.runtime.interceptors import INTERNAL_TOKEN_KEY
from services.runtime.sandbox_tokens import SANDBOX_TOKEN_KEY, SandboxGrant, SandboxTokens
from services.runtime.sandbox_tokens import spec_digest as digest_of
from services.sandbox import labels
from services.sandbox.lifecycle.snapshots import SNAPSHOT_OF
from services.sandbox.manager import SandboxManager
from services.sandbox.model import ExecCommand, ExecExit, OutputChunk, Spec
from services.sandbox.reaper import Reaper, StartupGuard
from services.sandbox.settings import SandboxSection
from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.integration.sandbox.conftest import remove_deployment

T = 60
pb = sandbox_service_pb2
lc = lifecycle_pb2
Metadata = Sequence[tuple[str, str]]
#: The worker's sandbox spec (the token pins its digest).
WORKER_SPEC = sandbox_pb2.SandboxSpec()


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self.now += timedelta(seconds=seconds)
            return self.now


def state_of(engine: docker.DockerClient, cid: str) -> str:
    return str(engine.api.inspect_container(cid)["State"]["Status"])


def remove_snapshots(engine: docker.DockerClient, deployment: str) -> None:
    """Removes every snapshot image of ``deployment`` (test finaliser)."""
    rows = engine.api.images(
        filters={"label": [f"{labels.DEPLOYMENT}={labels.sanitize(deployment)}", SNAPSHOT_OF]}
    )
    for row in rows:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            engine.api.remove_image(row["Id"], force=True)


def run(manager: SandboxManager, cid: str, argv: list[str]) -> tuple[int, bytes]:
    out = b""
    code = -1
    for event in manager.exec(cid, ExecCommand(argv=tuple(argv))):
        if isinstance(event, OutputChunk):
            out += event.data
        elif isinstance(event, ExecExit):
            code = event.exit_code
    return code, out


# ---- the domain rules, with a fake clock ------------------------------------------------


@pytest.fixture
def clocked(
    engine: docker.DockerClient, section: SandboxSection, test_deployment: str
) -> Iterator[tuple[SandboxManager, FakeClock]]:
    clock = FakeClock()
    manager = SandboxManager(
        engine,
        replace(section, pause_idle_after_seconds=60, idle_stop_seconds=0),
        deployment=test_deployment,
        clock=clock,
        lease_timer=False,
    )
    try:
        yield manager, clock
    finally:
        manager.close(15)
        remove_deployment(engine, test_deployment)
        remove_snapshots(engine, test_deployment)


def test_lease_expiry_pauses_or_removes_and_a_new_lease_replaces_the_old(
    clocked: tuple[SandboxManager, FakeClock], engine: docker.DockerClient
) -> None:
    manager, clock = clocked
    paused = manager.acquire("lease-p", "coder", Spec()).sandbox.sandbox_id
    removed = manager.acquire("lease-r", "coder", Spec()).sandbox.sandbox_id
    extended = manager.acquire("lease-x", "coder", Spec()).sandbox.sandbox_id
    manager.leases.set(paused, timedelta(seconds=10), "pause")
    manager.leases.set(removed, timedelta(seconds=10), "remove")
    manager.leases.set(extended, timedelta(seconds=10), "remove")
    manager.leases.set(extended, timedelta(seconds=30), "remove")  # extend = set again
    assert manager.leases.expire_due(clock.advance(9)) == []
    done = dict(manager.leases.expire_due(clock.advance(2)))
    assert done == {paused: "pause", removed: "remove"}
    assert state_of(engine, paused) == "paused"
    assert manager.cleanup.drain(15)
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_container(removed)
    # Consumed: the paused sandbox holds no lease; the extended one still does.
    assert manager.leases.get(paused) is None
    assert state_of(engine, extended) == "running"
    assert manager.leases.get(extended) is not None
    # A paused sandbox is never reaped or idle-handled: it is not "exited" or "running".
    reaper = Reaper(manager, guard=StartupGuard())
    assert reaper.reap(now=clock.advance(3600), max_age=timedelta(0)).removed == []
    assert paused not in {cid for cid, _, _ in reaper.idle(clock())}
    assert state_of(engine, paused) == "paused"


def test_idle_pause_then_exec_and_files_resume_transparently(
    clocked: tuple[SandboxManager, FakeClock], engine: docker.DockerClient
) -> None:
    manager, clock = clocked
    cid = manager.acquire("idle", "coder", Spec()).sandbox.sandbox_id
    throwaway = manager.acquire("idle-np", "coder", Spec(), persist=False).sandbox.sandbox_id
    reaper = Reaper(manager, guard=StartupGuard())
    assert reaper.idle(clock.advance(30)) == []
    acted = {c: action for c, action, _ in reaper.idle(clock.advance(40))}
    # Only persistent sandboxes are paused; non-persistent ones are removed later.
    assert acted == {cid: "pause"}
    assert state_of(engine, cid) == "paused"
    assert state_of(engine, throwaway) == "running"
    code, out = run(manager, cid, ["echo", "awake"])
    assert (code, out) == (0, b"awake\n")
    assert state_of(engine, cid) == "running"
    # Paused behind the manager's back (another process): the file call's
    # inspect sees it and resumes too.
    engine.api.pause(cid)
    target = manager.files.target(cid)
    assert target.info.state == "running" and state_of(engine, cid) == "running"


def test_snapshot_scrubs_env_values_and_is_bounded(
    clocked: tuple[SandboxManager, FakeClock], engine: docker.DockerClient
) -> None:
    manager, _clock = clocked
    cid = manager.acquire("snap", "coder", Spec(env={"API_TOKEN": "s3cret"})).sandbox.sandbox_id
    snap = manager.snapshots.take(cid)
    env = engine.api.inspect_image(snap.image_id)["Config"]["Env"]
    assert "API_TOKEN=" in env and not any("s3cret" in e for e in env)
    assert [s.image_id for s in manager.snapshots.list_snapshots()] == [snap.image_id]
    bounded = SandboxManager(
        engine,
        replace(manager.section, max_snapshots=1),
        deployment=manager.deployment,
        lease_timer=False,
    )
    try:
        with pytest.raises(ResourceExhausted, match=r"sandbox\.max_snapshots is 1"):
            bounded.snapshots.take(cid)
    finally:
        bounded.close(5)


def test_a_snapshot_right_after_an_acquire_does_not_wedge_the_engine(
    clocked: tuple[SandboxManager, FakeClock], engine: docker.DockerClient
) -> None:
    """The acquire's spare exec is starting when the commit pauses the sandbox.

    Unguarded, the engine froze the spare's ``runc init`` half-way: the commit
    never ended and every later call on the sandbox (and image removals of the
    whole engine) hung. The manager holds freezes until its exec starts run.
    """
    manager, _clock = clocked
    quick = docker.from_env(timeout=30)
    try:
        for n in range(4):
            cid = manager.acquire(f"race-{n}", "coder", Spec()).sandbox.sandbox_id
            snap = manager.snapshots.take(cid)
            assert snap.image_id
            state = quick.api.inspect_container(cid)["State"]
            assert state["Running"] and not state["Paused"], state
            manager.release(cid, force_remove=True)
    finally:
        quick.close()


# ---- through the gateway ----------------------------------------------------------------


@dataclass
class Rig:
    stack: RealStack
    stubs: Stubs
    deployment: str
    engine: docker.DockerClient

    @property
    def admin(self) -> Metadata:
        return auth(self.stack.keys.admin)

    def worker(self, task: str, spec: sandbox_pb2.SandboxSpec = WORKER_SPEC) -> Metadata:
        grant = SandboxGrant(
            deployment=self.deployment,
            task_id=task,
            profile="coder",
            run_id=f"r-{task}",
            spec_digest=digest_of(spec),
            expires=time.time() + 600,
            holder="bot",
        )
        token = SandboxTokens(self.stack.token).mint(grant)
        return (*auth(self.stack.keys.worker), (SANDBOX_TOKEN_KEY, token))

    def acquire(self, task: str, spec: sandbox_pb2.SandboxSpec = WORKER_SPEC) -> str:
        return self.stubs.sandbox.AcquireSandbox(
            pb.AcquireSandboxRequest(task_id=task, profile="coder", spec=spec),
            timeout=T,
            metadata=self.worker(task, spec),
        ).sandbox.sandbox_id

    def exec(self, box: str, argv: list[str], metadata: Metadata) -> bytes:
        out = b""
        for message in self.stubs.sandbox.Exec(
            pb.ExecRequest(sandbox_id=box, argv=argv), timeout=T, metadata=metadata
        ):
            if message.HasField("output"):
                out += message.output.data
        return out

    def get(self, box: str) -> sandbox_pb2.Sandbox:
        return self.stubs.sandbox.GetSandbox(
            pb.GetSandboxRequest(sandbox_id=box), timeout=T, metadata=self.admin
        ).sandbox


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str) -> Iterator[Rig]:
    deployment = f"t{run_id}-lifecycle"
    home = tmp_path_factory.mktemp("lifecycle-stack")
    client = docker.from_env()
    try:
        with (
            real_stack(home, deployment=deployment, image=sandbox_image) as stack,
            stack.channel() as channel,
        ):
            yield Rig(stack, Stubs(channel), deployment, client)
    finally:
        remove_deployment(client, deployment)
        remove_snapshots(client, deployment)
        client.close()


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def wait_for_event(engine: docker.DockerClient, cid: str, action: str, since: float) -> bool:
    """Blocks on the engine's event stream until ``cid`` reports ``action`` (bounded)."""
    events = engine.api.events(
        since=int(since),
        until=int(time.time()) + T,
        filters={"container": cid, "event": action},
        decode=True,
    )
    try:
        return any(e.get("Action") == action for e in events)
    finally:
        events.close()


def ttl(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out


def test_pause_then_exec_resumes(rig: Rig) -> None:
    box = rig.acquire("t-pause")
    me = rig.worker("t-pause")
    paused = rig.stubs.sandbox.PauseSandbox(
        lc.PauseSandboxRequest(sandbox_id=box), timeout=T, metadata=me
    )
    assert paused.sandbox.state == sandbox_pb2.SANDBOX_STATE_PAUSED
    again = rig.stubs.sandbox.PauseSandbox(
        lc.PauseSandboxRequest(sandbox_id=box), timeout=T, metadata=me
    )
    assert again.sandbox.state == sandbox_pb2.SANDBOX_STATE_PAUSED  # not an error
    assert rig.get(box).state == sandbox_pb2.SANDBOX_STATE_PAUSED
    assert rig.exec(box, ["echo", "back"], me) == b"back\n"
    assert rig.get(box).state == sandbox_pb2.SANDBOX_STATE_RUNNING
    # Explicit resume of a paused one, then of a running one (not an error).
    rig.stubs.sandbox.PauseSandbox(lc.PauseSandboxRequest(sandbox_id=box), timeout=T, metadata=me)
    for _ in range(2):
        resumed = rig.stubs.sandbox.ResumeSandbox(
            lc.ResumeSandboxRequest(sandbox_id=box), timeout=T, metadata=me
        )
        assert resumed.sandbox.state == sandbox_pb2.SANDBOX_STATE_RUNNING
    # The file RPCs resume too.
    rig.stubs.sandbox.PauseSandbox(lc.PauseSandboxRequest(sandbox_id=box), timeout=T, metadata=me)
    listing = rig.stubs.sandbox.ListDirectory(
        pb.ListDirectoryRequest(sandbox_id=box, path="/etc"), timeout=T, metadata=me
    )
    assert any(e.name == "passwd" for e in listing.entries)
    assert rig.get(box).state == sandbox_pb2.SANDBOX_STATE_RUNNING
    # A stopped sandbox cannot be paused or resumed.
    rig.engine.api.stop(box, timeout=1)
    for call in (
        lambda: rig.stubs.sandbox.PauseSandbox(
            lc.PauseSandboxRequest(sandbox_id=box), timeout=T, metadata=me
        ),
        lambda: rig.stubs.sandbox.ResumeSandbox(
            lc.ResumeSandboxRequest(sandbox_id=box), timeout=T, metadata=me
        ),
    ):
        code, details = failure(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "exited" in details


def test_a_sandbox_started_from_a_snapshot_sees_the_snapshotted_file(rig: Rig) -> None:
    box = rig.acquire("t-snap")
    me = rig.worker("t-snap")
    rig.exec(box, ["sh", "-c", "echo kept > /snapped.txt && echo gone > /tmp/tmpfs.txt"], me)
    snap = rig.stubs.sandbox.SnapshotSandbox(
        lc.SnapshotSandboxRequest(sandbox_id=box), timeout=T, metadata=me
    ).snapshot
    assert snap.sandbox_id == box and snap.task_id == "t-snap" and snap.profile == "coder"
    assert snap.image.startswith("longshore-snapshot/") and snap.size_bytes > 0
    listed = rig.stubs.sandbox.ListSnapshots(
        lc.ListSnapshotsRequest(profile="coder"), timeout=T, metadata=auth(rig.stack.keys.reader)
    ).snapshots
    assert [s.image_id for s in listed] == [snap.image_id]
    other_profile = rig.stubs.sandbox.ListSnapshots(
        lc.ListSnapshotsRequest(profile="nobody"), timeout=T, metadata=rig.admin
    ).snapshots
    assert list(other_profile) == []
    # A later task's run, whose spec names the snapshot, starts from it.
    later_spec = sandbox_pb2.SandboxSpec(image=snap.image)
    later = rig.acquire("t-later", later_spec)
    later_me = rig.worker("t-later", later_spec)
    assert rig.exec(later, ["cat", "/snapped.txt"], later_me) == b"kept\n"
    # The tmpfs is not in a snapshot.
    assert (
        rig.exec(later, ["sh", "-c", "cat /tmp/tmpfs.txt 2>/dev/null || echo none"], later_me)
        == b"none\n"
    )
    # Not deletable while a sandbox uses it; then deleted.
    code, details = failure(
        lambda: rig.stubs.sandbox.DeleteSnapshot(
            lc.DeleteSnapshotRequest(image=snap.image), timeout=T, metadata=rig.admin
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "is used by sandbox" in details
    rig.engine.api.remove_container(later, force=True)
    rig.stubs.sandbox.DeleteSnapshot(
        lc.DeleteSnapshotRequest(image=snap.image), timeout=T, metadata=rig.admin
    )
    code, _ = failure(
        lambda: rig.stubs.sandbox.DeleteSnapshot(
            lc.DeleteSnapshotRequest(image=snap.image), timeout=T, metadata=rig.admin
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_a_snapshot_of_another_deployment_is_refused(rig: Rig) -> None:
    admin = rig.admin
    code, details = failure(
        lambda: rig.stubs.sandbox.AcquireSandbox(
            pb.AcquireSandboxRequest(
                task_id="t-foreign",
                profile="coder",
                spec=sandbox_pb2.SandboxSpec(image="longshore-snapshot/elsewhere:abc"),
            ),
            timeout=T,
            metadata=admin,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "another deployment" in details
    # By image id: the labels tell whose snapshot it is.
    box = rig.acquire("t-foreign-src")
    # Not paused: the manager may be starting the sandbox's spare exec, and an
    # engine that freezes an exec's start wedges (see services/sandbox/freeze_guard.py).
    foreign = rig.engine.api.commit(
        box,
        pause=False,
        conf={"Labels": {labels.MANAGED: "1", labels.DEPLOYMENT: "elsewhere", SNAPSHOT_OF: box}},
    )["Id"]
    try:
        code, details = failure(
            lambda: rig.stubs.sandbox.AcquireSandbox(
                pb.AcquireSandboxRequest(
                    task_id="t-foreign",
                    profile="coder",
                    spec=sandbox_pb2.SandboxSpec(image=foreign),
                ),
                timeout=T,
                metadata=admin,
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and "another deployment" in details
        # Nor is it this deployment's to list or delete.
        code, _ = failure(
            lambda: rig.stubs.sandbox.DeleteSnapshot(
                lc.DeleteSnapshotRequest(image=foreign), timeout=T, metadata=admin
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
    finally:
        rig.engine.api.remove_image(foreign, force=True)


def test_lease_expiry_pauses_then_removes_and_rows_show_the_lease(rig: Rig) -> None:
    box = rig.acquire("t-lease")
    me = rig.worker("t-lease")
    # Long first, so the row can be read before it ends; then replaced by a short one.
    long = rig.stubs.sandbox.SetSandboxLease(
        lc.SetSandboxLeaseRequest(sandbox_id=box, ttl=ttl(3600)), timeout=T, metadata=me
    ).sandbox
    assert long.lease_expiry == sandbox_pb2.LEASE_EXPIRY_PAUSE  # the manager's default
    rows = rig.stubs.sandbox.ListSandboxes(
        pb.ListSandboxesRequest(task_id="t-lease"), timeout=T, metadata=rig.admin
    ).sandboxes
    assert [r.lease_expire_time for r in rows] == [long.lease_expire_time]
    since = time.time() - 1
    rig.stubs.sandbox.SetSandboxLease(
        lc.SetSandboxLeaseRequest(
            sandbox_id=box, ttl=ttl(1), on_expiry=sandbox_pb2.LEASE_EXPIRY_PAUSE
        ),
        timeout=T,
        metadata=me,
    )
    assert wait_for_event(rig.engine, box, "pause", since)
    row = rig.get(box)
    assert row.state == sandbox_pb2.SANDBOX_STATE_PAUSED and not row.HasField("lease_expire_time")
    # Expiry by removal.
    since = time.time() - 1
    rig.stubs.sandbox.SetSandboxLease(
        lc.SetSandboxLeaseRequest(
            sandbox_id=box, ttl=ttl(1), on_expiry=sandbox_pb2.LEASE_EXPIRY_REMOVE
        ),
        timeout=T,
        metadata=me,
    )
    assert wait_for_event(rig.engine, box, "destroy", since)
    code, _ = failure(lambda: rig.get(box))
    assert code == grpc.StatusCode.NOT_FOUND


def test_a_lease_comes_with_the_acquire_and_a_plain_acquire_keeps_it(rig: Rig) -> None:
    task = "t-acqlease"
    me = rig.worker(task)

    def acquire(lease: sandbox_pb2.LeaseTerms | None) -> sandbox_pb2.Sandbox:
        request = pb.AcquireSandboxRequest(task_id=task, profile="coder", spec=WORKER_SPEC)
        if lease is not None:
            request.lease.CopyFrom(lease)
        return rig.stubs.sandbox.AcquireSandbox(request, timeout=T, metadata=me).sandbox

    before = time.time()
    first = acquire(
        sandbox_pb2.LeaseTerms(ttl=ttl(3600), on_expiry=sandbox_pb2.LEASE_EXPIRY_REMOVE)
    )
    ends = first.lease_expire_time.ToNanoseconds() / 1e9
    assert before + 3590 < ends < time.time() + 3610, ends
    assert first.lease_expiry == sandbox_pb2.LEASE_EXPIRY_REMOVE
    assert rig.get(first.sandbox_id).lease_expire_time == first.lease_expire_time
    # Reused by key without terms: the lease it has stays, and the reply shows it.
    again = acquire(None)
    assert again.sandbox_id == first.sandbox_id
    assert again.lease_expire_time == first.lease_expire_time
    # Terms replace it (the manager's default action when unspecified: pause).
    since = time.time() - 1
    short = acquire(sandbox_pb2.LeaseTerms(ttl=ttl(1)))
    assert short.sandbox_id == first.sandbox_id
    assert short.lease_expiry == sandbox_pb2.LEASE_EXPIRY_PAUSE
    assert wait_for_event(rig.engine, first.sandbox_id, "pause", since)


def test_bad_acquire_leases_are_refused_before_any_container(rig: Rig) -> None:
    task = "t-badacqlease"
    me = rig.worker(task)
    for terms, code, words in (
        (sandbox_pb2.LeaseTerms(), grpc.StatusCode.INVALID_ARGUMENT, "lease.ttl: required"),
        (
            sandbox_pb2.LeaseTerms(ttl=ttl(10**9)),
            grpc.StatusCode.OUT_OF_RANGE,
            "lease.ttl: at most",
        ),
        (
            sandbox_pb2.LeaseTerms(ttl=ttl(60), on_expiry=7),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "lease.on_expiry",
        ),
    ):
        request = pb.AcquireSandboxRequest(
            task_id=task, profile="coder", spec=WORKER_SPEC, lease=terms
        )
        got, details = failure(
            lambda request=request: rig.stubs.sandbox.AcquireSandbox(
                request, timeout=T, metadata=me
            )
        )
        assert got == code and words in details, (got, details)
    # Another run's token: refused as any acquire is, whatever the lease asks.
    request = pb.AcquireSandboxRequest(
        task_id=task, profile="coder", spec=WORKER_SPEC, lease=sandbox_pb2.LeaseTerms(ttl=ttl(60))
    )
    got, _ = failure(
        lambda: rig.stubs.sandbox.AcquireSandbox(
            request, timeout=T, metadata=rig.worker("t-someone-else")
        )
    )
    assert got == grpc.StatusCode.PERMISSION_DENIED
    rows = rig.stubs.sandbox.ListSandboxes(
        pb.ListSandboxesRequest(task_id=task), timeout=T, metadata=rig.admin
    ).sandboxes
    assert not rows, rows


def test_bad_leases_are_refused_precisely(rig: Rig) -> None:
    box = rig.acquire("t-badlease")
    me = rig.worker("t-badlease")
    for request, code, words in (
        (lc.SetSandboxLeaseRequest(sandbox_id=box), grpc.StatusCode.INVALID_ARGUMENT, "required"),
        (
            lc.SetSandboxLeaseRequest(sandbox_id=box, ttl=ttl(0.5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "at least 1 s",
        ),
        (
            lc.SetSandboxLeaseRequest(sandbox_id=box, ttl=ttl(10**9)),
            grpc.StatusCode.OUT_OF_RANGE,
            "sandbox.max_lease_seconds",
        ),
        (
            lc.SetSandboxLeaseRequest(sandbox_id=box, ttl=ttl(60), on_expiry=7),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "on_expiry",
        ),
        (
            lc.SetSandboxLeaseRequest(sandbox_id="", ttl=ttl(60)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sandbox_id",
        ),
    ):
        got, details = failure(
            lambda request=request: rig.stubs.sandbox.SetSandboxLease(
                request, timeout=T, metadata=me
            )
        )
        assert got == code and words in details, (got, details)


def test_refusals_at_the_gateway_and_at_the_manager(rig: Rig) -> None:
    box = rig.acquire("t-own")
    reader = auth(rig.stack.keys.reader)
    other = rig.worker("t-other")
    per_sandbox: list[tuple[str, Callable[[Metadata], object]]] = [
        (
            "PauseSandbox",
            lambda md: rig.stubs.sandbox.PauseSandbox(
                lc.PauseSandboxRequest(sandbox_id=box), timeout=T, metadata=md
            ),
        ),
        (
            "ResumeSandbox",
            lambda md: rig.stubs.sandbox.ResumeSandbox(
                lc.ResumeSandboxRequest(sandbox_id=box), timeout=T, metadata=md
            ),
        ),
        (
            "SnapshotSandbox",
            lambda md: rig.stubs.sandbox.SnapshotSandbox(
                lc.SnapshotSandboxRequest(sandbox_id=box), timeout=T, metadata=md
            ),
        ),
        (
            "SetSandboxLease",
            lambda md: rig.stubs.sandbox.SetSandboxLease(
                lc.SetSandboxLeaseRequest(sandbox_id=box, ttl=ttl(60)), timeout=T, metadata=md
            ),
        ),
    ]
    for name, call in per_sandbox:
        # A key without the sandbox-use scope: refused by the gateway.
        code, details = failure(lambda call=call: call(reader))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "needs scope" in details, name
        # Another run's token: refused by the manager, naming the sandbox's task.
        code, details = failure(lambda call=call: call(other))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "belongs to task 't-own'" in details
        # No token at all.
        code, _ = failure(lambda call=call: call(auth(rig.stack.keys.worker)))
        assert code == grpc.StatusCode.PERMISSION_DENIED, name
    assert rig.get(box).state == sandbox_pb2.SANDBOX_STATE_RUNNING  # nothing happened
    # ListSnapshots is a read: the worker key (no `read`) is refused by the gateway.
    code, details = failure(
        lambda: rig.stubs.sandbox.ListSnapshots(
            lc.ListSnapshotsRequest(), timeout=T, metadata=auth(rig.stack.keys.worker)
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs scope" in details
    # DeleteSnapshot is for operators: refused by the gateway for a run's holder...
    code, details = failure(
        lambda: rig.stubs.sandbox.DeleteSnapshot(
            lc.DeleteSnapshotRequest(image="x"), timeout=T, metadata=rig.worker("t-own")
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs scope" in details
    # ...and by the manager for a non-operator principal (as the gateway would forward one).
    with grpc.insecure_channel(rig.stack.sandbox_addr) as channel:
        direct = SandboxServiceStub(channel)
        forwarded = (
            (INTERNAL_TOKEN_KEY, rig.stack.token),
            *caller_metadata("bot", {"worker", "read"}),
        )
        code, details = failure(
            lambda: direct.DeleteSnapshot(
                lc.DeleteSnapshotRequest(image="x"), timeout=T, metadata=forwarded
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and "operators only" in details
        code, _ = failure(
            lambda: direct.ListSnapshots(
                lc.ListSnapshotsRequest(profile="p" * 129), timeout=T, metadata=forwarded
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_kanban_task_whose_profile_allows_the_snapshot_starts_from_it(rig: Rig) -> None:
    box = rig.acquire("t-seed")
    rig.exec(box, ["sh", "-c", "echo seeded > /seed.txt"], rig.worker("t-seed"))
    snap = rig.stubs.sandbox.SnapshotSandbox(
        lc.SnapshotSandboxRequest(sandbox_id=box), timeout=T, metadata=rig.admin
    ).snapshot
    # The operator names the snapshot in the profile's allowed images...
    rig.stubs.kanban.CreateProfile(
        kanban_service_pb2.CreateProfileRequest(
            profile=profile_pb2.Profile(
                name="snapper", executor=profile_pb2.EXECUTOR_EXTERNAL, allowed_images=[snap.image]
            )
        ),
        timeout=T,
        metadata=rig.admin,
    )
    # ...so a task of that profile may name it, and its run's sandbox starts from it.
    rig.stubs.kanban.CreateTask(
        kanban_service_pb2.CreateTaskRequest(
            task=task_pb2.Task(title="from a snapshot", assignee="snapper", image=snap.image)
        ),
        timeout=T,
        metadata=rig.admin,
    )
    worker = auth(rig.stack.keys.worker)
    claim = rig.stubs.worker.ClaimTask(
        worker_service_pb2.ClaimTaskRequest(profile="snapper", worker_id="host-1"),
        timeout=T,
        metadata=worker,
    )
    assert claim.run_id and claim.sandbox_spec.image == snap.image
    token = (*worker, (SANDBOX_TOKEN_KEY, claim.sandbox_token))
    run_box = rig.stubs.sandbox.AcquireSandbox(
        pb.AcquireSandboxRequest(
            task_id=claim.task.task_id, profile="snapper", spec=claim.sandbox_spec
        ),
        timeout=T,
        metadata=token,
    ).sandbox.sandbox_id
    assert rig.exec(run_box, ["cat", "/seed.txt"], token) == b"seeded\n"
    # A task naming a snapshot its profile does not allow is refused by kanban.
    code, _ = failure(
        lambda: rig.stubs.kanban.CreateTask(
            kanban_service_pb2.CreateTaskRequest(
                task=task_pb2.Task(
                    title="not allowed", assignee="snapper", image=snap.image + "-other"
                )
            ),
            timeout=T,
            metadata=rig.admin,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
