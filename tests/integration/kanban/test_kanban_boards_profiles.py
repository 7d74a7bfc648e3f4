"""Boards, profiles and migrations through the real server, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import field_mask_pb2
from longshore.kanban.v1 import board_pb2, profile_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.sandbox.v1 import sandbox_pb2

from services.kanban.migrations import alembic_config, current, upgrade
from services.runtime.testing import RunningServer
from tests.integration.kanban.conftest import Kanban


def code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined,no-any-return]


def test_migrations_are_idempotent_and_match_the_models(database_url: str) -> None:
    from alembic import command

    upgrade(database_url)
    upgrade(database_url)
    assert current(database_url) == "0003"
    command.check(alembic_config(database_url))  # raises if models drifted from migrations


def test_default_board_exists_and_boards_crud(kanban: Kanban) -> None:
    board = kanban.stub.GetBoard(pb.GetBoardRequest(board_id="default"), timeout=5).board
    assert board.board_id == "default"
    created = kanban.stub.CreateBoard(
        pb.CreateBoardRequest(board=board_pb2.Board(board_id="ops", display_name="Ops")), timeout=5
    ).board
    assert created.display_name == "Ops"
    with pytest.raises(grpc.RpcError) as exc:
        kanban.stub.CreateBoard(
            pb.CreateBoardRequest(board=board_pb2.Board(board_id="ops")), timeout=5
        )
    assert code(exc) == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as exc:
        kanban.stub.CreateBoard(
            pb.CreateBoardRequest(board=board_pb2.Board(board_id="Bad!")), timeout=5
        )
    assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        kanban.stub.GetBoard(pb.GetBoardRequest(board_id="nope"), timeout=5)
    assert code(exc) == grpc.StatusCode.NOT_FOUND

    kanban.task("x", board_id="ops")
    board = kanban.stub.GetBoard(pb.GetBoardRequest(board_id="ops"), timeout=5).board
    assert dict(board.task_counts) == {"ready": 1}
    with pytest.raises(grpc.RpcError) as exc:
        kanban.stub.DeleteBoard(pb.DeleteBoardRequest(board_id="ops"), timeout=5)
    assert code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as exc:
        kanban.stub.DeleteBoard(pb.DeleteBoardRequest(board_id="default", force=True), timeout=5)
    assert code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    kanban.stub.DeleteBoard(pb.DeleteBoardRequest(board_id="ops", force=True), timeout=5)
    with pytest.raises(grpc.RpcError) as exc:
        kanban.stub.DeleteBoard(pb.DeleteBoardRequest(board_id="ops"), timeout=5)
    assert code(exc) == grpc.StatusCode.NOT_FOUND


def test_list_boards_pages_with_opaque_tokens(kanban: Kanban) -> None:
    for i in range(5):
        kanban.stub.CreateBoard(
            pb.CreateBoardRequest(board=board_pb2.Board(board_id=f"b{i}")), timeout=5
        )
    seen: list[str] = []
    token = ""
    while True:
        resp = kanban.stub.ListBoards(
            pb.ListBoardsRequest(page_size=2, page_token=token), timeout=5
        )
        seen += [b.board_id for b in resp.boards]
        token = resp.next_page_token
        if not token:
            break
    assert seen == ["b0", "b1", "b2", "b3", "b4", "default"]
    for bad in (pb.ListBoardsRequest(page_size=-1), pb.ListBoardsRequest(page_token="garbage!")):
        with pytest.raises(grpc.RpcError) as exc:
            kanban.stub.ListBoards(bad, timeout=5)
        assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT


def test_profiles_crud_update_mask_and_running_counts(
    kanban_factory: Callable[..., Kanban], sandbox_manager: RunningServer
) -> None:
    kanban = kanban_factory(sandbox_channel=sandbox_manager.channel())
    spec = sandbox_pb2.SandboxSpec(image="busybox:latest", cpus=0.5, env={"A": "1"})
    # Env values are write-only: reads name the variable, never its value.
    shown = sandbox_pb2.SandboxSpec(image="busybox:latest", cpus=0.5, env={"A": "<redacted>"})
    kanban.stub.CreateProfile(
        pb.CreateProfileRequest(
            profile=profile_pb2.Profile(
                name="builder", executor=profile_pb2.EXECUTOR_SANDBOX, sandbox_spec=spec
            )
        ),
        timeout=5,
    )
    got = kanban.stub.GetProfile(pb.GetProfileRequest(name="builder"), timeout=5).profile
    assert got.sandbox_spec == shown
    assert got.executor == profile_pb2.EXECUTOR_SANDBOX
    for bad, status in [
        (profile_pb2.Profile(name="x"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            profile_pb2.Profile(name="b d", executor=profile_pb2.EXECUTOR_NONE),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            profile_pb2.Profile(name="neg", executor=profile_pb2.EXECUTOR_NONE, max_in_progress=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            profile_pb2.Profile(name="builder", executor=profile_pb2.EXECUTOR_NONE),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
    ]:
        with pytest.raises(grpc.RpcError) as exc:
            kanban.stub.CreateProfile(pb.CreateProfileRequest(profile=bad), timeout=5)
        assert code(exc) == status
    updated = kanban.stub.UpdateProfile(
        pb.UpdateProfileRequest(
            profile=profile_pb2.Profile(name="builder", max_in_progress=3, description="ignored"),
            update_mask=field_mask_pb2.FieldMask(paths=["max_in_progress"]),
        ),
        timeout=5,
    ).profile
    assert updated.max_in_progress == 3
    assert updated.description == ""
    assert updated.sandbox_spec == shown
    with pytest.raises(grpc.RpcError) as exc:
        kanban.stub.UpdateProfile(
            pb.UpdateProfileRequest(
                profile=profile_pb2.Profile(name="builder"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            timeout=5,
        )
    assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        kanban.stub.UpdateProfile(
            pb.UpdateProfileRequest(
                profile=profile_pb2.Profile(name="ghost"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            timeout=5,
        )
    assert code(exc) == grpc.StatusCode.NOT_FOUND

    kanban.profile("ext", "external")
    task = kanban.task("work", assignee="ext")
    claim = kanban.worker.ClaimTask(
        __import__("longshore.kanban.v1.worker_service_pb2", fromlist=["x"]).ClaimTaskRequest(
            profile="ext", worker_id="w1"
        ),
        timeout=5,
    )
    assert claim.task.task_id == task.task_id
    listed = kanban.stub.ListProfiles(pb.ListProfilesRequest(), timeout=5)
    assert [p.name for p in listed.profiles] == ["builder", "ext"]
    assert listed.running["ext"] == 1
    with pytest.raises(grpc.RpcError) as exc:
        kanban.stub.DeleteProfile(pb.DeleteProfileRequest(name="ext"), timeout=5)
    assert code(exc) == grpc.StatusCode.FAILED_PRECONDITION
    kanban.stub.DeleteProfile(pb.DeleteProfileRequest(name="builder"), timeout=5)
    with pytest.raises(grpc.RpcError) as exc:
        kanban.stub.GetProfile(pb.GetProfileRequest(name="builder"), timeout=5)
    assert code(exc) == grpc.StatusCode.NOT_FOUND
