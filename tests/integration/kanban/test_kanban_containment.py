"""Containment on the kanban side, through the real server on SQLite and PostgreSQL:
runs belong to their holder, sandbox tokens, write-only env values, specs
checked by the real sandbox manager when written, task image allowlists.

Calls carry the caller metadata the gateway would add (``caller_metadata``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from google.protobuf.message import Message
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import kanban_service_pb2_grpc, profile_pb2
from longshore.kanban.v1 import task_pb2 as S
from longshore.kanban.v1 import worker_service_pb2 as W
from longshore.sandbox.v1 import sandbox_pb2

from services.kanban.executor import Executor
from services.kanban.sandbox_client import SandboxClient
from services.kanban.service import build_app
from services.kanban.settings import DatabaseSection, KanbanSection, KanbanSettings
from services.runtime.callers import caller_metadata
from services.runtime.sandbox_tokens import SandboxTokens, spec_digest
from services.runtime.testing import RunningServer, serve_in_process
from tests.integration.kanban.conftest import SANDBOX_TOKEN, Kanban

W1 = caller_metadata("w1", ["worker"])
W2 = caller_metadata("w2", ["worker"])
ADMIN = caller_metadata("ops", ["admin", "read", "write"])
SECRET = "hunter2-task-value"
PROFILE_SECRET = "correct-horse-profile-value"


def _fails(call: Callable[[], Any], status: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    assert exc.value.code() == status, exc.value.details()  # type: ignore[attr-defined]
    return str(exc.value.details())  # type: ignore[attr-defined]


def _claim(kanban: Kanban, metadata: Any = W1, profile: str = "ext") -> W.ClaimTaskResponse:
    resp: W.ClaimTaskResponse = kanban.worker.ClaimTask(
        W.ClaimTaskRequest(profile=profile, worker_id="host-1"), metadata=metadata, timeout=10
    )
    assert resp.run_id, "nothing was claimed"
    return resp


def _worker_calls(kanban: Kanban, run_id: str) -> dict[str, Callable[[Any], Any]]:
    w = kanban.worker
    return {
        "Heartbeat": lambda md: w.Heartbeat(W.HeartbeatRequest(run_id=run_id), metadata=md),
        "AppendOutput": lambda md: w.AppendOutput(
            W.AppendOutputRequest(run_id=run_id, data=b"x"), metadata=md
        ),
        "CompleteTask": lambda md: w.CompleteTask(
            W.CompleteTaskRequest(run_id=run_id, summary="s"), metadata=md
        ),
        "FailTask": lambda md: w.FailTask(
            W.FailTaskRequest(run_id=run_id, error="e", retryable=True), metadata=md
        ),
    }


def _profile(kanban: Kanban, name: str, executor: int, **kw: Any) -> profile_pb2.Profile:
    return kanban.stub.CreateProfile(
        pb.CreateProfileRequest(profile=profile_pb2.Profile(name=name, executor=executor, **kw)),
        metadata=ADMIN,
        timeout=10,
    ).profile


@pytest.fixture
def checked(kanban_factory: Callable[..., Kanban], sandbox_manager: RunningServer) -> Kanban:
    """A kanban whose spec checks reach the real sandbox manager, minting tokens."""
    return kanban_factory(
        sandbox_channel=sandbox_manager.channel(),
        internal_token=SANDBOX_TOKEN,
        deployment="dep-x",
    )


# -- runs belong to their holder ----------------------------------------------


def test_a_workers_run_answers_only_to_its_holder(kanban: Kanban) -> None:
    kanban.profile("ext")
    task = kanban.task("t", assignee="ext")
    run_id = _claim(kanban).run_id
    runs = kanban.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=task.task_id), timeout=10).runs
    assert runs[0].holder == "w1"
    for name, call in _worker_calls(kanban, run_id).items():
        message = _fails(lambda: call(W2), grpc.StatusCode.PERMISSION_DENIED)
        assert message == f"run {run_id!r} is held by key 'w1', not by key 'w2'", name
    # An admin key does not take over a worker's run either.
    _fails(
        lambda: _worker_calls(kanban, run_id)["CompleteTask"](ADMIN),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    got = kanban.get(task.task_id)
    assert (got.status, got.current_run_id) == (S.TASK_STATUS_RUNNING, run_id)
    run = kanban.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=task.task_id), timeout=10).runs[0]
    assert run.output_bytes == 0

    own = _worker_calls(kanban, run_id)
    own["Heartbeat"](W1)
    own["AppendOutput"](W1)
    own["CompleteTask"](W1)
    assert kanban.get(task.task_id).status == S.TASK_STATUS_DONE
    # Ownership is checked before staleness; an unknown run stays NOT_FOUND.
    _fails(lambda: own["Heartbeat"](W2), grpc.StatusCode.PERMISSION_DENIED)
    _fails(lambda: own["Heartbeat"](W1), grpc.StatusCode.FAILED_PRECONDITION)
    _fails(lambda: _worker_calls(kanban, "r_nope")["Heartbeat"](W1), grpc.StatusCode.NOT_FOUND)

    second = kanban.task("t2", assignee="ext")
    fail_run = _claim(kanban).run_id
    _worker_calls(kanban, fail_run)["FailTask"](W1)
    assert kanban.get(second.task_id).failure_count == 1


def test_the_dispatchers_runs_refuse_every_worker(kanban: Kanban) -> None:
    kanban.profile("sb", "sandbox")
    task = kanban.task("t", assignee="sb")
    result = kanban.stub.Dispatch(pb.DispatchRequest(), timeout=30).result
    run_id = result.spawned[0].run_id
    runs = kanban.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=task.task_id), timeout=10).runs
    assert runs[0].holder == "dispatcher"
    for name, call in _worker_calls(kanban, run_id).items():
        for md in (W1, ADMIN):
            message = _fails(lambda: call(md), grpc.StatusCode.PERMISSION_DENIED)
            assert message == (
                f"run {run_id!r} is executed by the dispatcher; WorkerService cannot change it"
            ), name
    got = kanban.get(task.task_id)
    assert (got.status, got.current_run_id) == (S.TASK_STATUS_RUNNING, run_id)


# -- sandbox tokens ----------------------------------------------------------------


def test_claim_returns_the_runs_spec_with_values_and_a_token_for_it(checked: Kanban) -> None:
    spec = sandbox_pb2.SandboxSpec(image="base:1", cpus=0.5, env={"PROFILE_SECRET": PROFILE_SECRET})
    _profile(
        checked, "ext", profile_pb2.EXECUTOR_EXTERNAL, sandbox_spec=spec, allowed_images=["alt:2"]
    )
    task = checked.task("t", assignee="ext", image="alt:2", env={"SECRET": SECRET})
    claim = _claim(checked)
    want = sandbox_pb2.SandboxSpec(
        image="alt:2", cpus=0.5, env={"PROFILE_SECRET": PROFILE_SECRET, "SECRET": SECRET}
    )
    assert claim.sandbox_spec == want
    # Only the spec carries values; the profile and task are redacted as everywhere.
    assert dict(claim.profile.sandbox_spec.env) == {"PROFILE_SECRET": "<redacted>"}
    assert dict(claim.task.env) == {"SECRET": "<redacted>"}

    tokens = SandboxTokens(SANDBOX_TOKEN)
    grant = tokens.verify(claim.sandbox_token, now=time.time())
    assert (grant.deployment, grant.task_id, grant.profile, grant.run_id, grant.holder) == (
        "dep-x",
        task.task_id,
        "ext",
        claim.run_id,
        "w1",
    )
    assert grant.spec_digest == spec_digest(want)
    assert claim.sandbox_token_expire_time == claim.lease_expire_time
    assert grant.expires == pytest.approx(claim.lease_expire_time.ToMicroseconds() / 1e6, abs=1e-3)
    with pytest.raises(Exception, match="bad signature"):
        SandboxTokens("another-deployments-token").verify(claim.sandbox_token, now=time.time())

    beat = checked.worker.Heartbeat(W.HeartbeatRequest(run_id=claim.run_id), metadata=W1)
    renewed = tokens.verify(beat.sandbox_token, now=time.time())
    assert renewed.expires == pytest.approx(beat.lease_expire_time.ToMicroseconds() / 1e6, abs=1e-3)
    assert renewed.expires >= grant.expires
    assert (renewed.run_id, renewed.spec_digest, renewed.holder) == (
        claim.run_id,
        grant.spec_digest,
        "w1",
    )
    assert beat.sandbox_token_expire_time == beat.lease_expire_time


def test_without_an_internal_credential_no_token_is_minted(kanban: Kanban) -> None:
    kanban.profile("ext")
    kanban.task("t", assignee="ext", env={"SECRET": SECRET})
    claim = _claim(kanban)
    assert claim.sandbox_token == "" and not claim.HasField("sandbox_token_expire_time")
    assert dict(claim.sandbox_spec.env) == {"SECRET": SECRET}
    beat = kanban.worker.Heartbeat(W.HeartbeatRequest(run_id=claim.run_id), metadata=W1)
    assert beat.sandbox_token == "" and beat.HasField("lease_expire_time")


# -- secrets stay secret -----------------------------------------------------------


def _leaks(*messages: Message) -> list[str]:
    """Names of messages whose bytes contain a secret value."""
    return [
        type(m).__name__
        for m in messages
        if SECRET.encode() in m.SerializeToString()
        or PROFILE_SECRET.encode() in m.SerializeToString()
    ]


def test_env_values_never_leave_kanban_in_profiles_tasks_or_events(checked: Kanban) -> None:
    stub = checked.stub
    spec = sandbox_pb2.SandboxSpec(image="base:1", env={"PROFILE_SECRET": PROFILE_SECRET})
    created_profile = stub.CreateProfile(
        pb.CreateProfileRequest(
            profile=profile_pb2.Profile(
                name="ext", executor=profile_pb2.EXECUTOR_EXTERNAL, sandbox_spec=spec
            )
        ),
        metadata=ADMIN,
    )
    assert dict(created_profile.profile.sandbox_spec.env) == {"PROFILE_SECRET": "<redacted>"}
    _profile(checked, "other", profile_pb2.EXECUTOR_NONE)
    responses: list[Message] = [
        created_profile,
        stub.GetProfile(pb.GetProfileRequest(name="ext"), metadata=ADMIN),
        stub.ListProfiles(pb.ListProfilesRequest(), metadata=ADMIN),
        stub.UpdateProfile(
            pb.UpdateProfileRequest(
                profile=profile_pb2.Profile(name="ext", description="d"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=ADMIN,
        ),
    ]
    created = stub.CreateTask(
        pb.CreateTaskRequest(task=S.Task(title="t", env={"SECRET": SECRET})), metadata=ADMIN
    )
    assert dict(created.task.env) == {"SECRET": "<redacted>"}
    tid = created.task.task_id
    responses += [
        created,
        stub.GetTask(pb.GetTaskRequest(task_id=tid), metadata=ADMIN),
        stub.ListTasks(pb.ListTasksRequest(include_readiness=True), metadata=ADMIN),
        stub.UpdateTask(
            pb.UpdateTaskRequest(
                task=S.Task(task_id=tid, title="t2"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            ),
            metadata=ADMIN,
        ),
        stub.AssignTask(pb.AssignTaskRequest(task_id=tid, assignee="other"), metadata=ADMIN),
        stub.BlockTask(pb.BlockTaskRequest(task_id=tid, reason="r"), metadata=ADMIN),
        stub.UnblockTask(pb.UnblockTaskRequest(task_id=tid, reason="r"), metadata=ADMIN),
        stub.MoveTask(pb.MoveTaskRequest(task_id=tid, status=S.TASK_STATUS_TODO), metadata=ADMIN),
        stub.MoveTask(pb.MoveTaskRequest(task_id=tid, status=S.TASK_STATUS_READY), metadata=ADMIN),
        stub.AssignTask(pb.AssignTaskRequest(task_id=tid, assignee="ext"), metadata=ADMIN),
    ]
    claim = _claim(checked)
    assert SECRET in claim.sandbox_spec.env.values()  # the holder's spec, and only it
    responses += [claim.task, claim.profile]
    responses.append(
        checked.worker.CompleteTask(W.CompleteTaskRequest(run_id=claim.run_id), metadata=W1)
    )
    responses.append(stub.ListTaskEvents(pb.ListTaskEventsRequest(page_size=1000)))
    watch = stub.WatchEvents(pb.WatchEventsRequest(), timeout=5)
    try:
        for item in watch:
            responses.append(item)
            if item.event.kind == "completed":
                break
    finally:
        watch.cancel()  # the traced channel hands back the real call
    assert _leaks(*responses) == []


def test_writing_redacted_back_keeps_stored_values(checked: Kanban) -> None:
    stub = checked.stub
    spec = sandbox_pb2.SandboxSpec(image="base:1", env={"PROFILE_SECRET": PROFILE_SECRET})
    _profile(checked, "ext", profile_pb2.EXECUTOR_EXTERNAL, sandbox_spec=spec)
    read = stub.GetProfile(pb.GetProfileRequest(name="ext"), metadata=ADMIN).profile
    read.sandbox_spec.env["ADDED"] = "plain"  # read-modify-write, as the CLI does
    stub.UpdateProfile(
        pb.UpdateProfileRequest(
            profile=read, update_mask=field_mask_pb2.FieldMask(paths=["sandbox_spec"])
        ),
        metadata=ADMIN,
    )
    task = checked.task("t", assignee="ext", env={"SECRET": SECRET, "GONE": "x"})
    got = checked.get(task.task_id)
    del got.env["GONE"]
    stub.UpdateTask(
        pb.UpdateTaskRequest(task=got, update_mask=field_mask_pb2.FieldMask(paths=["env"])),
        metadata=ADMIN,
    )
    claim = _claim(checked)
    assert dict(claim.sandbox_spec.env) == {
        "PROFILE_SECRET": PROFILE_SECRET,
        "ADDED": "plain",
        "SECRET": SECRET,
    }

    new_name = {"X": "<redacted>"}
    refusals: list[tuple[Callable[[], Any], str]] = [
        (
            lambda: _profile(
                checked,
                "p2",
                profile_pb2.EXECUTOR_EXTERNAL,
                sandbox_spec=sandbox_pb2.SandboxSpec(image="base:1", env=new_name),
            ),
            "sandbox_spec.env['X']: '<redacted>' is reserved",
        ),
        (
            lambda: stub.UpdateProfile(
                pb.UpdateProfileRequest(
                    profile=profile_pb2.Profile(
                        name="ext", sandbox_spec=sandbox_pb2.SandboxSpec(image="b", env=new_name)
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["sandbox_spec"]),
                ),
                metadata=ADMIN,
            ),
            "sandbox_spec.env['X']: '<redacted>' is reserved",
        ),
        (lambda: checked.task("t3", env=new_name), "task.env['X']: '<redacted>' is reserved"),
        (
            lambda: stub.UpdateTask(
                pb.UpdateTaskRequest(
                    task=S.Task(task_id=task.task_id, env=new_name),
                    update_mask=field_mask_pb2.FieldMask(paths=["env"]),
                ),
                metadata=ADMIN,
            ),
            "task.env['X']: '<redacted>' is reserved",
        ),
    ]
    for call, message in refusals:
        assert _fails(call, grpc.StatusCode.INVALID_ARGUMENT) == message
    _fails(lambda: stub.GetProfile(pb.GetProfileRequest(name="p2")), grpc.StatusCode.NOT_FOUND)


# -- specs validated when written ------------------------------------------------------


BAD_SPECS = [
    (
        sandbox_pb2.SandboxSpec(
            image="base:1",
            volumes=[sandbox_pb2.VolumeMount(host_path="/etc", container_path="/host-etc")],
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "sandbox_spec.volumes[0].host_path",
    ),
    (
        sandbox_pb2.SandboxSpec(image="base:1", cap_add=["SYS_ADMIN"]),
        grpc.StatusCode.PERMISSION_DENIED,
        "sandbox_spec.cap_add[0]",
    ),
    (
        sandbox_pb2.SandboxSpec(
            image="base:1",
            volumes=[
                sandbox_pb2.VolumeMount(host_path="/var/run/docker.sock", container_path="/s")
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sandbox_spec.volumes[0].host_path",
    ),
    (
        sandbox_pb2.SandboxSpec(image="base:1", cpus=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sandbox_spec.cpus",
    ),
    (
        sandbox_pb2.SandboxSpec(image="base:1", env={"A=B": "1"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sandbox_spec.env",
    ),
]


def test_the_sandbox_manager_refuses_bad_profile_specs_and_nothing_is_stored(
    checked: Kanban,
) -> None:
    stub = checked.stub
    good = sandbox_pb2.SandboxSpec(image="base:1", cpus=0.5)
    _profile(checked, "kept", profile_pb2.EXECUTOR_SANDBOX, sandbox_spec=good)
    for spec, status, field in BAD_SPECS:
        message = _fails(
            lambda: _profile(checked, "bad", profile_pb2.EXECUTOR_SANDBOX, sandbox_spec=spec),
            status,
        )
        assert message.startswith(field), message
        _fails(lambda: stub.GetProfile(pb.GetProfileRequest(name="bad")), grpc.StatusCode.NOT_FOUND)
        message = _fails(
            lambda: stub.UpdateProfile(
                pb.UpdateProfileRequest(
                    profile=profile_pb2.Profile(name="kept", sandbox_spec=spec),
                    update_mask=field_mask_pb2.FieldMask(paths=["sandbox_spec"]),
                ),
                metadata=ADMIN,
            ),
            status,
        )
        assert message.startswith(field), message
        kept = stub.GetProfile(pb.GetProfileRequest(name="kept")).profile
        assert kept.sandbox_spec == good


def test_spec_checks_need_the_sandbox_manager_but_tasks_do_not(kanban: Kanban) -> None:
    stub = kanban.stub
    spec = sandbox_pb2.SandboxSpec(image="base:1")
    message = _fails(
        lambda: _profile(kanban, "sb", profile_pb2.EXECUTOR_SANDBOX, sandbox_spec=spec),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert message == "sandbox manager unreachable: cannot validate sandbox_spec"
    _fails(lambda: stub.GetProfile(pb.GetProfileRequest(name="sb")), grpc.StatusCode.NOT_FOUND)
    _profile(kanban, "ext", profile_pb2.EXECUTOR_EXTERNAL, allowed_images=["img:1"])
    _fails(
        lambda: stub.UpdateProfile(
            pb.UpdateProfileRequest(
                profile=profile_pb2.Profile(name="ext", sandbox_spec=spec),
                update_mask=field_mask_pb2.FieldMask(paths=["sandbox_spec"]),
            )
        ),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert stub.GetProfile(pb.GetProfileRequest(name="ext")).profile.sandbox_spec == (
        sandbox_pb2.SandboxSpec()
    )
    task = kanban.task("t", assignee="ext", image="img:1", env={"K": "v"})
    assert task.image == "img:1"


def test_retry_policy_and_allowed_images_persist_and_are_bounded(kanban: Kanban) -> None:
    stub = kanban.stub
    policy = profile_pb2.RetryPolicy(
        max_attempts=5,
        initial_backoff=duration_pb2.Duration(seconds=2),
        max_backoff=duration_pb2.Duration(seconds=60),
    )
    created = _profile(
        kanban, "ext", profile_pb2.EXECUTOR_EXTERNAL, retry_policy=policy, allowed_images=["a:1"]
    )
    assert (created.retry_policy, list(created.allowed_images)) == (policy, ["a:1"])
    got = stub.GetProfile(pb.GetProfileRequest(name="ext")).profile
    assert (got.retry_policy, list(got.allowed_images)) == (policy, ["a:1"])
    updated = stub.UpdateProfile(
        pb.UpdateProfileRequest(
            profile=profile_pb2.Profile(
                name="ext", retry_policy=profile_pb2.RetryPolicy(max_attempts=1)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["retry_policy"]),
        )
    ).profile
    assert updated.retry_policy == profile_pb2.RetryPolicy(max_attempts=1)
    assert list(updated.allowed_images) == ["a:1"]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"retry_policy": profile_pb2.RetryPolicy(max_attempts=101)}, "max_attempts"),
        (
            {
                "retry_policy": profile_pb2.RetryPolicy(
                    max_backoff=duration_pb2.Duration(seconds=86401)
                )
            },
            "max_backoff",
        ),
        (
            {
                "retry_policy": profile_pb2.RetryPolicy(
                    initial_backoff=duration_pb2.Duration(seconds=10),
                    max_backoff=duration_pb2.Duration(seconds=5),
                )
            },
            "initial_backoff",
        ),
        ({"allowed_images": ["x"] * 33}, "allowed_images"),
        ({"allowed_images": ["has space"]}, "allowed_images[0]"),
    ]
    for fields, name in bad:
        message = _fails(
            lambda: _profile(kanban, "bad", profile_pb2.EXECUTOR_EXTERNAL, **fields),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert name in message and message.startswith("profile."), message
    _fails(lambda: stub.GetProfile(pb.GetProfileRequest(name="bad")), grpc.StatusCode.NOT_FOUND)


def test_task_images_are_limited_to_the_profiles_allowlist(kanban: Kanban) -> None:
    # The fixture has no sandbox manager: none of this needs one.
    stub = kanban.stub
    _profile(kanban, "ext", profile_pb2.EXECUTOR_EXTERNAL, allowed_images=["img:ok"])
    denied = "image: 'img:bad' is not allowed for profile 'ext'"
    assert (
        _fails(
            lambda: kanban.task("t", assignee="ext", image="img:bad"),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        == denied
    )
    allowed = kanban.task("ok", assignee="ext", image="img:ok")
    loose = kanban.task("unassigned", image="img:bad")
    assert (
        _fails(
            lambda: stub.AssignTask(pb.AssignTaskRequest(task_id=loose.task_id, assignee="ext")),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        == denied
    )
    assert kanban.get(loose.task_id).assignee == ""
    assert (
        _fails(
            lambda: stub.UpdateTask(
                pb.UpdateTaskRequest(
                    task=S.Task(task_id=allowed.task_id, image="img:bad"),
                    update_mask=field_mask_pb2.FieldMask(paths=["image"]),
                )
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        == denied
    )
    assert kanban.get(allowed.task_id).image == "img:ok"
    for env in ({"A-B": "1"}, {"A=B": "1"}):
        message = _fails(lambda: kanban.task("e", env=env), grpc.StatusCode.INVALID_ARGUMENT)
        assert message.startswith("task.env: invalid variable name")


# -- the sandbox executor still gets the values ---------------------------------------


@pytest.fixture
def real_kanban(
    database_url: str, tmp_path: Path, sandbox_manager: RunningServer
) -> Iterator[kanban_service_pb2_grpc.KanbanServiceStub]:
    """Kanban with the real executor → real sandbox manager → real engine."""
    settings = KanbanSettings(
        home=tmp_path,
        internal_token=SANDBOX_TOKEN,
        kanban=replace(KanbanSection(), dispatcher_enabled=False, claim_ttl_seconds=30),
        database=DatabaseSection(url=database_url),
    )
    sandboxes = SandboxClient(sandbox_manager.address, internal_token=SANDBOX_TOKEN)
    executor = Executor(sandboxes, heartbeat_interval=5, max_output_bytes=65536)
    app = build_app(
        settings, executor=executor, instrument=False, sandbox_channel=sandbox_manager.channel()
    )
    try:
        with serve_in_process(app.grpc_services()) as running:
            app.start()
            yield kanban_service_pb2_grpc.KanbanServiceStub(running.channel())
            app.bus.close()
    finally:
        executor.shutdown(wait=False)
        app.close()
        sandboxes.close()


def test_the_sandbox_executor_gets_real_values_while_reads_are_redacted(
    real_kanban: kanban_service_pb2_grpc.KanbanServiceStub, sandbox_image: str
) -> None:
    stub = real_kanban
    spec = sandbox_pb2.SandboxSpec(image=sandbox_image, env={"PROFILE_SECRET": PROFILE_SECRET})
    stub.CreateProfile(
        pb.CreateProfileRequest(
            profile=profile_pb2.Profile(
                name="sb", executor=profile_pb2.EXECUTOR_SANDBOX, sandbox_spec=spec
            )
        ),
        metadata=ADMIN,
        timeout=30,
    )
    task = stub.CreateTask(
        pb.CreateTaskRequest(
            task=S.Task(
                title="echo",
                assignee="sb",
                command=["sh", "-c", 'echo "got $SECRET and $PROFILE_SECRET"'],
                env={"SECRET": SECRET},
            )
        ),
        metadata=ADMIN,
        timeout=10,
    ).task
    assert stub.Dispatch(pb.DispatchRequest(), timeout=30).result.spawned
    deadline = time.monotonic() + 90
    got = task
    while got.status != S.TASK_STATUS_DONE:
        assert got.status in (S.TASK_STATUS_READY, S.TASK_STATUS_RUNNING), got
        assert time.monotonic() < deadline, f"task not done: {got}"
        time.sleep(0.2)  # the executor works on its own threads; poll with a deadline
        got = stub.GetTask(pb.GetTaskRequest(task_id=task.task_id), timeout=10).task
    out = stub.GetRunOutput(pb.GetRunOutputRequest(task_id=task.task_id), timeout=10)
    assert f"got {SECRET} and {PROFILE_SECRET}".encode() in out.data
    assert dict(got.env) == {"SECRET": "<redacted>"}
    listed = stub.ListTasks(pb.ListTasksRequest(), timeout=10).tasks
    assert [dict(t.env) for t in listed] == [{"SECRET": "<redacted>"}]
    profile = stub.GetProfile(pb.GetProfileRequest(name="sb"), timeout=10).profile
    assert dict(profile.sandbox_spec.env) == {"PROFILE_SECRET": "<redacted>"}
    assert _leaks(got, profile, *listed) == []


def test_images_are_checked_again_at_spawn_and_at_claim(kanban_factory: Any) -> None:
    # Written before the rule could see them: an unassigned task that takes the
    # default assignee, and a task whose profile's allowlist shrank later.
    kanban = kanban_factory(default_assignee="box")
    _profile(kanban, "box", profile_pb2.EXECUTOR_SANDBOX)
    loose = kanban.task("loose", image="img:bad", command=["true"])
    kanban.stub.Dispatch(pb.DispatchRequest(), metadata=ADMIN, timeout=10)
    got = kanban.get(loose.task_id)
    assert got.status == S.TASK_STATUS_BLOCKED, got
    assert "image: 'img:bad' is not allowed for profile 'box'" in got.blocked_reason
    assert not kanban.executor.jobs  # refused before any sandbox call
    _profile(kanban, "ext", profile_pb2.EXECUTOR_EXTERNAL, allowed_images=["img:ok"])
    task = kanban.task("ok", assignee="ext", image="img:ok")
    kanban.stub.UpdateProfile(
        pb.UpdateProfileRequest(
            profile=profile_pb2.Profile(name="ext"),
            update_mask=field_mask_pb2.FieldMask(paths=["allowed_images"]),
        ),
        metadata=ADMIN,
        timeout=10,
    )
    reply = kanban.worker.ClaimTask(
        W.ClaimTaskRequest(profile="ext", worker_id="host-1"), metadata=W1, timeout=10
    )
    assert not reply.run_id and not reply.sandbox_token
    got = kanban.get(task.task_id)
    assert got.status == S.TASK_STATUS_BLOCKED
    assert "image: 'img:ok' is not allowed for profile 'ext'" in got.blocked_reason
