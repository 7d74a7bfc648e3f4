"""Every bounded field refused past its maximum, on SQLite and PostgreSQL; pages bounded
in bytes; forged page tokens refused; a create retried after its deadline deduplicated.

Each case goes through the real in-process kanban server and the generated
stubs and asserts the status code and the message the client sees.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from longshore.kanban.v1 import board_pb2, profile_pb2, task_pb2
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import worker_service_pb2 as wpb
from sqlalchemy import select

from services.kanban import limits, models
from services.kanban.store.events import bounded
from tests.integration.kanban.conftest import Kanban

KIB = 1024
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class Case:
    """One over-the-limit request and what the client must see."""

    name: str
    call: Callable[[Kanban], Any]
    needle: str
    code: grpc.StatusCode = INVALID


def _task(**fields: Any) -> Callable[[Kanban], Any]:
    task = {"title": "t", **fields}  # one dict per case, never mutated: cases run per database
    return lambda k: k.stub.CreateTask(pb.CreateTaskRequest(task=task_pb2.Task(**task)), timeout=30)


def _on_task(method: str, **fields: Any) -> Callable[[Kanban], Any]:
    def call(k: Kanban) -> Any:
        task_id = k.task("target").task_id
        request = getattr(pb, f"{method}Request")(task_id=task_id, **fields)
        return getattr(k.stub, method)(request, timeout=30)

    return call


def _worker(method: str, **fields: Any) -> Callable[[Kanban], Any]:
    return lambda k: getattr(k.worker, method)(
        getattr(wpb, f"{method}Request")(**fields), timeout=30
    )


def _run(k: Kanban) -> str:
    """A claimed run of a new task on the `ext` profile."""
    k.task("claimed", assignee="ext")
    claim = k.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=30)
    return str(claim.run_id)


CASES = [
    Case(
        "board.display_name",
        lambda k: k.stub.CreateBoard(
            pb.CreateBoardRequest(board=board_pb2.Board(board_id="b1", display_name="d" * 201)),
            timeout=30,
        ),
        "board.display_name: at most 200 characters",
    ),
    Case(
        "board.description",
        lambda k: k.stub.CreateBoard(
            pb.CreateBoardRequest(
                board=board_pb2.Board(board_id="b1", description="d" * (64 * KIB + 1))
            ),
            timeout=30,
        ),
        "board.description: at most 65536 bytes",
    ),
    Case("task.title", _task(title="t" * 201), "task.title: at most 200 characters"),
    Case(
        "task.description",
        _task(description="é" * (32 * KIB + 1)),
        "task.description: at most 65536 bytes",
    ),
    Case("task.image", _task(image="i" * 256), "task.image: at most 255 characters"),
    Case("task.assignee", _task(assignee="a" * 64), "task.assignee: at most 63 characters"),
    Case("task.command count", _task(command=["x"] * 257), "task.command: at most 256 elements"),
    Case(
        "task.command element",
        _task(command=["x" * (32 * KIB + 1)]),
        "task.command[0]: at most 32768 bytes",
    ),
    Case(
        "task.command total",
        _task(command=["x" * (30 * KIB)] * 5),
        "task.command: at most 131072 bytes in all",
    ),
    Case(
        "task.env count",
        _task(env={f"K{i}": "v" for i in range(129)}),
        "task.env: at most 128 entries",
    ),
    Case(
        "task.env value",
        _task(env={"BIG": "v" * (32 * KIB + 1)}),
        "task.env['BIG']: at most 32768 bytes",
    ),
    Case("task.env key", _task(env={"K" * 257: "v"}), "key"),
    Case(
        "task.env total",
        _task(env={f"K{i}": "v" * (30 * KIB) for i in range(9)}),
        "task.env: at most 262144 bytes in all",
    ),
    Case(
        "task.labels count",
        _task(labels={f"l{i}": "v" for i in range(65)}),
        "task.labels: at most 64 entries",
    ),
    Case("task.labels key", _task(labels={"k" * 64: "v"}), "at most 63 characters"),
    Case(
        "task.labels value",
        _task(labels={"k": "v" * 257}),
        "task.labels['k']: at most 256 characters",
    ),
    Case(
        "task.max_runtime",
        _task(max_runtime=Duration(seconds=2**62)),
        "task.max_runtime: at most 31622400 seconds",
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    Case("task.title NUL", _task(title="a\x00b"), "task.title: must not contain NUL characters"),
    Case(
        "request_id",
        lambda k: k.stub.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="t"), request_id="r" * 129), timeout=30
        ),
        "request_id: at most 128 characters",
    ),
    Case(
        "parent_ids",
        lambda k: k.stub.CreateTask(
            pb.CreateTaskRequest(task=task_pb2.Task(title="t"), parent_ids=["p"] * 101),
            timeout=30,
        ),
        "parent_ids: at most 100 elements",
    ),
    Case(
        "profile.name",
        lambda k: k.stub.CreateProfile(
            pb.CreateProfileRequest(
                profile=profile_pb2.Profile(name="p" * 64, executor=profile_pb2.EXECUTOR_NONE)
            ),
            timeout=30,
        ),
        "profile.name: at most 63 characters",
    ),
    Case(
        "profile.description",
        lambda k: k.stub.CreateProfile(
            pb.CreateProfileRequest(
                profile=profile_pb2.Profile(
                    name="p", executor=profile_pb2.EXECUTOR_NONE, description="d" * (64 * KIB + 1)
                )
            ),
            timeout=30,
        ),
        "profile.description: at most 65536 bytes",
    ),
    Case(
        "UpdateTask task.title",
        lambda k: k.stub.UpdateTask(
            pb.UpdateTaskRequest(
                task=task_pb2.Task(task_id=k.task("u").task_id, title="t" * 201),
                update_mask=FieldMask(paths=["title"]),
            ),
            timeout=30,
        ),
        "task.title: at most 200 characters",
    ),
    Case(
        "comment author",
        _on_task("AddComment", author="a" * 201, body="b"),
        "author: at most 200 characters",
    ),
    Case(
        "comment body",
        _on_task("AddComment", author="a", body="b" * (64 * KIB + 1)),
        "body: at most 65536 bytes",
    ),
    Case(
        "move reason",
        _on_task("MoveTask", status=task_pb2.TASK_STATUS_TODO, reason="r" * (4 * KIB + 1)),
        "reason: at most 4096 bytes",
    ),
    Case(
        "blocked reason",
        _on_task("BlockTask", reason="r" * (4 * KIB + 1)),
        "reason: at most 4096 bytes",
    ),
    Case(
        "task_id of 1 MB",
        lambda k: k.stub.GetTask(pb.GetTaskRequest(task_id="i" * 1_000_000), timeout=30),
        "task_id: at most 64 characters",
    ),
    Case(
        "page_token",
        lambda k: k.stub.ListTasks(pb.ListTasksRequest(page_token="p" * 1025), timeout=30),
        "page_token: at most 1024 characters",
    ),
    Case(
        "output offset",
        lambda k: k.stub.GetRunOutput(
            pb.GetRunOutputRequest(run_id=_run(k), offset=2**63 - 1, limit=2**63 - 1), timeout=30
        ),
        "offset: at most 9007199254740992",
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    Case(
        "worker_id",
        _worker("ClaimTask", profile="ext", worker_id="w" * 201),
        "worker_id: at most 200 characters",
    ),
    Case(
        "claim wait",
        _worker("ClaimTask", profile="ext", worker_id="w", wait=Duration(seconds=2**62)),
        "wait: at most 31622400 seconds",
        grpc.StatusCode.OUT_OF_RANGE,
    ),
    Case(
        "summary",
        _worker("CompleteTask", run_id="r", summary="s" * (16 * KIB + 1)),
        "summary: at most 16384 bytes",
    ),
    Case(
        "error",
        _worker("FailTask", run_id="r", error="e" * (16 * KIB + 1)),
        "error: at most 16384 bytes",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_field_is_refused_past_its_maximum(
    kanban_factory: Callable[..., Kanban], case: Case
) -> None:
    k = kanban_factory()
    k.profile("ext")
    with pytest.raises(grpc.RpcError) as info:
        case.call(k)
    error: Any = info.value
    assert error.code() == case.code, error.details()
    assert case.needle in error.details()
    assert len(error.details()) < 400  # never an echo of the oversized value


def test_a_huge_output_limit_reads_at_most_one_mib(kanban_factory: Callable[..., Kanban]) -> None:
    k = kanban_factory()
    k.profile("ext")
    run_id = _run(k)
    for _ in range(3):
        k.worker.AppendOutput(
            wpb.AppendOutputRequest(run_id=run_id, data=b"o" * (512 * KIB)), timeout=30
        )
    reply = k.stub.GetRunOutput(
        pb.GetRunOutputRequest(run_id=run_id, offset=10, limit=2**63 - 1), timeout=30
    )
    assert len(reply.data) <= limits.OUTPUT_READ_BYTES
    assert reply.next_offset == 10 + len(reply.data)


def test_values_at_their_maximum_are_stored_and_read_back(
    kanban_factory: Callable[..., Kanban],
) -> None:
    k = kanban_factory()
    k.profile("p" * 63, allowed_images=["i" * 255])
    created = k.task(
        "t" * 200,
        description="é" * (32 * KIB),
        image="i" * 255,
        assignee="p" * 63,
        command=["c" * (32 * KIB)] * 4,
        labels={f"{i:02d}" + "k" * 61: "v" * 256 for i in range(64)},
        env={f"K{i}": "v" * KIB for i in range(127)} | {"BIG": "v" * (32 * KIB)},
        max_runtime=Duration(seconds=limits.MAX_DURATION_SECONDS),
    )
    got = k.get(created.task_id)
    assert got.title == "t" * 200
    assert got.description == "é" * (32 * KIB)
    assert len(got.labels) == 64
    assert len(got.env) == 128  # values read back redacted (write-only)
    assert got.max_runtime.seconds == limits.MAX_DURATION_SECONDS
    k.stub.AddComment(
        pb.AddCommentRequest(task_id=created.task_id, author="a" * 200, body="b" * (64 * KIB)),
        timeout=30,
    )


def _forged(key: object, fingerprint: str = "0" * 12) -> str:
    body = json.dumps({"f": fingerprint, "k": key}).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


FORGED = [
    "%%%not-base64%%%",
    base64.urlsafe_b64encode(b"\xff\xfe not json").decode(),
    _forged([1, 2, 3]),
    base64.urlsafe_b64encode(json.dumps([1, 2]).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps({"f": None}).encode()).decode(),
]


def _list_calls(k: Kanban, task_id: str) -> dict[str, Callable[[str], Any]]:
    s = k.stub
    return {
        "ListBoards": lambda t: s.ListBoards(pb.ListBoardsRequest(page_token=t), timeout=30),
        "ListProfiles": lambda t: s.ListProfiles(pb.ListProfilesRequest(page_token=t), timeout=30),
        "ListTasks": lambda t: s.ListTasks(pb.ListTasksRequest(page_token=t), timeout=30),
        "ListComments": lambda t: s.ListComments(
            pb.ListCommentsRequest(task_id=task_id, page_token=t), timeout=30
        ),
        "ListTaskEvents": lambda t: s.ListTaskEvents(
            pb.ListTaskEventsRequest(page_token=t), timeout=30
        ),
        "ListTaskRuns": lambda t: s.ListTaskRuns(
            pb.ListTaskRunsRequest(task_id=task_id, page_token=t), timeout=30
        ),
    }


def _matching_fingerprint_forgeries(k: Kanban, task_id: str) -> dict[str, list[str]]:
    """Tokens with each List call's real fingerprint but a key of the wrong shape."""
    from services.kanban import pagination

    scopes = {
        "ListBoards": ("boards", None),
        "ListProfiles": ("profiles", None),
        "ListTasks": ("tasks", ["", [], ""]),
        "ListComments": ("comments", task_id),
        "ListTaskEvents": ("events", ["", "", 0]),
        "ListTaskRuns": ("runs", task_id),
    }
    keys: list[object] = [
        [],
        ["x", "y", "z", "w"],
        [2**80, "2024-01-01T00:00:00+00:00", "t"],
        ["not-a-time", "t"],
        [{"deep": [[[]]]}],
        ["nul\x00", "2024-01-01T00:00:00", "t"],
        [None, None, None],
    ]
    return {
        name: [_forged(key, pagination._fingerprint(scope, filters)) for key in keys]
        for name, (scope, filters) in scopes.items()
    }


def test_forged_page_tokens_are_invalid_argument_on_every_list_call(
    kanban_factory: Callable[..., Kanban],
) -> None:
    k = kanban_factory()
    task_id = k.task("with comments").task_id
    calls = _list_calls(k, task_id)
    shaped = _matching_fingerprint_forgeries(k, task_id)
    for name, call in calls.items():
        for token in [*FORGED, *shaped[name]]:
            with pytest.raises(grpc.RpcError) as info:
                call(token)
            error: Any = info.value
            assert error.code() == INVALID, (name, token, error.details())
            assert error.details().startswith("page_token"), (name, error.details())


def test_a_50_mb_board_lists_page_by_page_with_every_task_once(
    kanban_factory: Callable[..., Kanban],
) -> None:
    k = kanban_factory()
    k.stub.CreateBoard(pb.CreateBoardRequest(board=board_pb2.Board(board_id="big")), timeout=30)
    description = "d" * (64 * KIB)
    count = 800  # 800 x 64 KiB = 52 MB of descriptions

    def create(i: int) -> str:
        return str(k.task(f"big {i}", board_id="big", description=description).task_id)

    with ThreadPoolExecutor(max_workers=4) as pool:
        created = set(pool.map(create, range(count)))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = k.stub.ListTasks(
            pb.ListTasksRequest(board_id="big", page_size=1000, page_token=token), timeout=60
        )
        assert response.ByteSize() <= limits.PAGE_BYTES
        assert response.tasks, "a page must make progress"
        seen += [t.task_id for t in response.tasks]
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == count
    assert set(seen) == created
    assert pages >= 50  # ~15 tasks of 64 KiB per 1 MiB page


def test_event_pages_stay_within_the_byte_budget(kanban_factory: Callable[..., Kanban]) -> None:
    k = kanban_factory()
    task_id = k.task("chatty").task_id
    reason = "r" * (4 * KIB)
    for _ in range(10):
        k.stub.BlockTask(pb.BlockTaskRequest(task_id=task_id, reason=reason), timeout=30)
        k.stub.UnblockTask(pb.UnblockTaskRequest(task_id=task_id, reason=reason), timeout=30)
    k.app.kanban.page_bytes = 16 * KIB  # a tiny budget: many pages, none over it
    ids: list[int] = []
    token = ""
    while True:
        response = k.stub.ListTaskEvents(
            pb.ListTaskEventsRequest(task_id=task_id, page_size=1000, page_token=token), timeout=30
        )
        assert response.ByteSize() <= 16 * KIB + 8 * KIB  # one event may be alone on a page
        ids += [e.event_id for e in response.events]
        token = response.next_page_token
        if not token:
            break
    assert ids == sorted(set(ids))
    assert len(ids) == 21  # created + 10 blocked + 10 unblocked


def test_event_payloads_are_bounded() -> None:
    payload = {"reason": "r" * 1_000_000, "other": ["x" * 100_000] * 4}
    small = bounded(payload)
    assert len(json.dumps(small).encode()) <= limits.EVENT_PAYLOAD_BYTES
    assert small["truncated"] is True
    assert bounded({"ok": "fine"}) == {"ok": "fine"}


def test_a_create_retried_after_its_deadline_returns_the_task_it_made(
    kanban_factory: Callable[..., Kanban],
) -> None:
    k = kanban_factory()
    request = pb.CreateTaskRequest(task=task_pb2.Task(title="once"), request_id="retry-1")
    release = threading.Event()
    holding = threading.Event()

    def hold_the_board() -> None:
        # The first call queues behind this write transaction, so it commits
        # only after its client has given up: on SQLite every write waits for
        # it; on PostgreSQL the new task's foreign-key check waits for the
        # board row it locks.
        with k.app.db.write() as s:
            s.execute(
                select(models.Board).where(models.Board.board_id == "default").with_for_update()
            )
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_board)
    holder.start()
    assert holding.wait(30)
    with pytest.raises(grpc.RpcError) as info:
        k.stub.CreateTask(request, timeout=0.5)
    error: Any = info.value
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    release.set()
    holder.join(30)

    def made() -> list[task_pb2.Task]:
        listed = k.stub.ListTasks(pb.ListTasksRequest(page_size=1000), timeout=30).tasks
        return [t for t in listed if t.title == "once"]

    first = _eventually(made)
    retried = k.stub.CreateTask(request, timeout=30)
    assert retried.deduplicated
    assert retried.task.task_id == first[0].task_id
    assert len(made()) == 1


def _eventually(probe: Callable[[], list[Any]], limit: float = 30.0) -> list[Any]:
    """Poll ``probe`` until it returns something, within a generous bound."""
    done = threading.Event()
    found: list[Any] = []
    deadline = threading.Timer(limit, done.set)
    deadline.start()
    try:
        while not done.is_set():
            found = probe()
            if found:
                return found
            done.wait(0.05)
    finally:
        deadline.cancel()
    raise AssertionError(f"nothing after {limit} s")
