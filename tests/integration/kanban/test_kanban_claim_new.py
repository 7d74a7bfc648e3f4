"""ClaimTask with ``create``: a task made and claimed in one write, through the
real server on SQLite and PostgreSQL (what the E2B front door's create uses).

Calls carry the caller metadata the gateway would add (``caller_metadata``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import profile_pb2
from longshore.kanban.v1 import task_pb2 as S
from longshore.kanban.v1 import worker_service_pb2 as W
from longshore.sandbox.v1 import sandbox_pb2

from services.runtime.callers import caller_metadata
from services.runtime.sandbox_tokens import SandboxTokens, spec_digest
from services.runtime.testing import RunningServer
from tests.integration.kanban.conftest import SANDBOX_TOKEN, Kanban

#: What an E2B user's key holds: write and worker.
DOOR = caller_metadata("alice", ["read", "worker", "write"])
#: A worker key without ``write``: it may claim, never create.
WORKER_ONLY = caller_metadata("w1", ["worker"])
OTHER = caller_metadata("bob", ["read", "worker", "write"])


def _fails(call: Callable[[], Any], status: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    assert exc.value.code() == status, exc.value.details()  # type: ignore[attr-defined]
    return str(exc.value.details())  # type: ignore[attr-defined]


def _claim_new(
    kanban: Kanban, metadata: Any = DOOR, profile: str = "ext", **fields: Any
) -> W.ClaimTaskResponse:
    create = fields.pop("create", None) or S.Task(title="sbx", labels={"e2b": "sandbox"})
    resp: W.ClaimTaskResponse = kanban.worker.ClaimTask(
        W.ClaimTaskRequest(profile=profile, worker_id="door", create=create, **fields),
        metadata=metadata,
        timeout=10,
    )
    return resp


def _task_count(kanban: Kanban) -> int:
    return len(kanban.stub.ListTasks(pb.ListTasksRequest(page_size=500), timeout=10).tasks)


def test_the_task_is_made_running_for_its_caller_with_a_token_for_its_spec(
    kanban_factory: Callable[..., Kanban], sandbox_manager: RunningServer
) -> None:
    # The profile's spec is checked by the real sandbox manager; tokens are minted.
    kanban = kanban_factory(
        sandbox_channel=sandbox_manager.channel(), internal_token=SANDBOX_TOKEN, deployment="dep-x"
    )
    kanban.stub.CreateProfile(
        pb.CreateProfileRequest(
            profile=profile_pb2.Profile(
                name="ext",
                executor=profile_pb2.EXECUTOR_EXTERNAL,
                sandbox_spec=sandbox_pb2.SandboxSpec(image="base:1", env={"P": "pv"}),
            )
        ),
        timeout=10,
    )
    claim = _claim_new(
        kanban, create=S.Task(title="sbx", env={"K": "secret-v"}, labels={"e2b": "sandbox"})
    )
    task = kanban.get(claim.task.task_id)
    assert (task.status, task.current_run_id, task.assignee) == (
        S.TASK_STATUS_RUNNING,
        claim.run_id,
        "ext",
    )
    assert (task.board_id, dict(task.labels)) == ("default", {"e2b": "sandbox"})
    assert dict(claim.task.env) == {"K": "<redacted>"}
    want = sandbox_pb2.SandboxSpec(image="base:1", env={"P": "pv", "K": "secret-v"})
    assert claim.sandbox_spec == want
    grant = SandboxTokens(SANDBOX_TOKEN).verify(claim.sandbox_token, now=time.time())
    assert (grant.task_id, grant.run_id, grant.holder, grant.spec_digest) == (
        task.task_id,
        claim.run_id,
        "alice",
        spec_digest(want),
    )
    kinds = [e.kind for e in kanban.events(task.task_id)]
    assert kinds == ["created", "claimed"]
    runs = kanban.stub.ListTaskRuns(pb.ListTaskRunsRequest(task_id=task.task_id), timeout=10).runs
    assert [(r.holder, r.worker_id) for r in runs] == [("alice", "door")]


def test_a_key_without_write_is_refused_and_nothing_is_made(kanban: Kanban) -> None:
    kanban.profile("ext")
    message = _fails(
        lambda: _claim_new(kanban, metadata=WORKER_ONLY), grpc.StatusCode.PERMISSION_DENIED
    )
    assert message == "create: key 'w1' lacks the 'write' scope creating a task needs"
    assert _task_count(kanban) == 0


def test_the_run_answers_only_to_the_key_that_made_it(kanban: Kanban) -> None:
    kanban.profile("ext")
    claim = _claim_new(kanban)
    message = _fails(
        lambda: kanban.worker.Heartbeat(W.HeartbeatRequest(run_id=claim.run_id), metadata=OTHER),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert message == f"run {claim.run_id!r} is held by key 'alice', not by key 'bob'"
    kanban.worker.CompleteTask(W.CompleteTaskRequest(run_id=claim.run_id), metadata=DOOR)
    assert kanban.get(claim.task.task_id).status == S.TASK_STATUS_DONE


def test_at_the_cap_nothing_is_made_and_the_cap_is_named(kanban_factory: Any) -> None:
    kanban = kanban_factory(max_in_progress="2")
    kanban.profile("ext", cap=1)
    kanban.profile("other")
    first = _claim_new(kanban)
    message = _fails(lambda: _claim_new(kanban), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert message == "profile 'ext' is at its concurrency cap (1 running)"
    _claim_new(kanban, profile="other")
    message = _fails(
        lambda: _claim_new(kanban, profile="other"), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert message == "the deployment is at its concurrency cap (2 running)"
    assert _task_count(kanban) == 2
    # The slot freed: the next create is claimed again.
    kanban.worker.CompleteTask(W.CompleteTaskRequest(run_id=first.run_id), metadata=DOOR)
    assert _claim_new(kanban).run_id


def test_a_waiting_worker_of_the_profile_never_gets_it(kanban: Kanban) -> None:
    kanban.profile("ext")
    got: list[W.ClaimTaskResponse] = []
    poll = threading.Thread(
        target=lambda: got.append(
            kanban.worker.ClaimTask(
                W.ClaimTaskRequest(
                    profile="ext", worker_id="poller", wait=duration_pb2.Duration(seconds=2)
                ),
                metadata=OTHER,
                timeout=10,
            )
        )
    )
    poll.start()
    time.sleep(0.3)  # the poll is waiting in its lane
    claim = _claim_new(kanban)
    poll.join(10)
    assert got and not got[0].HasField("task")
    assert kanban.get(claim.task.task_id).current_run_id == claim.run_id


def test_bad_creates_are_refused_by_field_and_nothing_is_made(kanban: Kanban) -> None:
    kanban.profile("ext", allowed_images=["ok:1"])
    kanban.profile("human", "none")
    task = S.Task(title="sbx")
    cases: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
        ({"wait": duration_pb2.Duration(seconds=1)}, grpc.StatusCode.INVALID_ARGUMENT, "wait"),
        ({"task_id": "t-1"}, grpc.StatusCode.INVALID_ARGUMENT, "task_id"),
        (
            {"create": S.Task(title="sbx", assignee="human")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "create.assignee",
        ),
        (
            {"create": S.Task(title="sbx", status=S.TASK_STATUS_TODO)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "create.status",
        ),
        (
            {"board_id": "default", "create": S.Task(title="sbx", board_id="b2")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "create.board_id",
        ),
        ({"create": S.Task(title=" ")}, grpc.StatusCode.INVALID_ARGUMENT, "task.title"),
        ({"create": S.Task(title="x" * 201)}, grpc.StatusCode.INVALID_ARGUMENT, "title"),
        (
            {"create": S.Task(title="sbx", env={"1bad": "v"})},
            grpc.StatusCode.INVALID_ARGUMENT,
            "task.env",
        ),
        (
            {"create": S.Task(title="sbx", board_id="nope")},
            grpc.StatusCode.NOT_FOUND,
            "board 'nope'",
        ),
        (
            {"create": S.Task(title="sbx", image="evil:1")},
            grpc.StatusCode.PERMISSION_DENIED,
            "evil:1",
        ),
        ({"profile": "human", "create": task}, grpc.StatusCode.FAILED_PRECONDITION, "human"),
        ({"profile": "ghost", "create": task}, grpc.StatusCode.NOT_FOUND, "ghost"),
    ]
    for fields, status, named in cases:
        message = _fails(lambda f=fields: _claim_new(kanban, **f), status)  # type: ignore[misc]
        assert named in message, (fields, message)
    assert _task_count(kanban) == 0
