"""CreateTask's group commit on SQLite and PostgreSQL: creates that arrive while
one is written share the next transaction, and each still gets its own answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import task_pb2 as S
from sqlalchemy.orm import Session

from services.kanban.db import Database, make_engine
from services.kanban.store import Effects, creates
from services.kanban.store.creates import NewTask
from tests.integration.kanban.conftest import Kanban


def _answer(
    kanban: Kanban, request: pb.CreateTaskRequest
) -> pb.CreateTaskResponse | grpc.StatusCode:
    try:
        return kanban.stub.CreateTask(request, timeout=20)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]


def _hold_first_write(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[int], threading.Event, threading.Event]:
    """Record every batch's size; hold the first batch's transaction open until released."""
    sizes: list[int] = []
    entered, release = threading.Event(), threading.Event()
    original = creates.create_many

    def recording(session: Session, items: Sequence[NewTask], **kw: Any) -> Any:
        sizes.append(len(items))
        if len(sizes) == 1:
            entered.set()
            assert release.wait(20), "the test never released the first write"
        return original(session, items, **kw)

    monkeypatch.setattr(creates, "create_many", recording)
    return sizes, entered, release


def _in_threads(calls: list[Callable[[], Any]]) -> tuple[list[threading.Thread], list[Any]]:
    """Start one thread per call; the answers fill in as they end."""
    answers: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        answers[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    return threads, answers


def test_creates_queued_behind_a_write_share_one_transaction_each_with_its_own_answer(
    kanban: Kanban, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes, entered, release = _hold_first_write(monkeypatch)
    parent = threading.Thread(target=lambda: kanban.task("first"))
    parent.start()
    assert entered.wait(10)
    requests = [
        *(
            pb.CreateTaskRequest(task=S.Task(title=f"good{i}"), request_id=f"g{i}")
            for i in range(8)
        ),
        pb.CreateTaskRequest(task=S.Task(title="")),  # INVALID_ARGUMENT
        pb.CreateTaskRequest(task=S.Task(title="x", board_id="nope")),  # NOT_FOUND
        pb.CreateTaskRequest(task=S.Task(title="x"), parent_ids=["t-missing"]),  # NOT_FOUND
        pb.CreateTaskRequest(task=S.Task(title="x", status=S.TASK_STATUS_RUNNING)),
        # One request sent three times: one task, the others deduplicated.
        *(pb.CreateTaskRequest(task=S.Task(title="same"), request_id="same") for _ in range(3)),
    ]
    threads, answers = _in_threads([lambda r=r: _answer(kanban, r) for r in requests])
    deadline = time.monotonic() + 10
    while kanban.app.kanban.creates.queued < len(requests):
        assert time.monotonic() < deadline, "the creates never queued behind the held write"
        time.sleep(0.01)
    release.set()
    parent.join(20)
    for t in threads:
        t.join(20)

    assert sizes == [1, len(requests)], "the queued creates must share the second transaction"
    good = answers[:8]
    assert all(isinstance(a, pb.CreateTaskResponse) and not a.deduplicated for a in good)
    assert [a.task.title for a in good] == [f"good{i}" for i in range(8)]
    assert answers[8:12] == [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    same = answers[12:]
    assert len({a.task.task_id for a in same}) == 1
    assert sorted(a.deduplicated for a in same) == [False, True, True]
    created = [e for e in kanban.events() if e.kind == "created"]
    made = {a.task.task_id for a in [*good, *same]}
    assert len(created) == len(made) + 1  # and "first"
    assert made <= {e.task_id for e in created}


def test_a_request_id_committed_meanwhile_fails_no_neighbour(
    kanban: Kanban, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer commits a batch's request_id between its read and its insert
    (two replicas given the same retry): that create finds the other task, and the
    rest of the batch is still written."""
    if not kanban.url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: nothing commits between a batch's read and insert")
    other = Database(make_engine(kanban.url, instrument=False))
    original, create_many = creates._precheck, creates.create_many
    raced: list[str] = []

    def precheck_then_race(session: Session, boards: set[str], rids: set[str]) -> Any:
        found = original(session, boards, rids)
        if raced or "race" not in rids:
            return found
        raced.append("")  # once (the other writer reads through here too)
        with other.write() as s:
            (made,) = create_many(
                s, [NewTask(values={"title": "other replica"}, request_id="race")],
                source="test", effects=Effects(),
            )  # fmt: skip
        raced[0] = made.task.task_id  # type: ignore[union-attr]
        return found

    monkeypatch.setattr(creates, "_precheck", precheck_then_race)
    sizes, entered, release = _hold_first_write(monkeypatch)
    first = threading.Thread(target=lambda: kanban.task("first"))
    first.start()
    assert entered.wait(10)
    requests = [
        pb.CreateTaskRequest(task=S.Task(title="a"), request_id="a"),
        pb.CreateTaskRequest(task=S.Task(title="mine"), request_id="race"),
        pb.CreateTaskRequest(task=S.Task(title="b")),
    ]
    threads, answers = _in_threads([lambda r=r: _answer(kanban, r) for r in requests])
    deadline = time.monotonic() + 10
    while kanban.app.kanban.creates.queued < len(requests):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    release.set()
    first.join(20)
    for t in threads:
        t.join(20)
    other.dispose()

    assert sizes[:2] == [1, 3] and sizes[2:] == [1, 1, 1], (sizes, answers)  # then one at a time
    a, race, b = answers
    assert isinstance(a, pb.CreateTaskResponse) and a.task.title == "a"
    assert isinstance(b, pb.CreateTaskResponse) and b.task.title == "b"
    assert isinstance(race, pb.CreateTaskResponse)
    assert race.deduplicated and race.task.task_id == raced[0]
    assert race.task.title == "other replica"


def test_a_create_answers_its_task_as_a_read_does(kanban: Kanban) -> None:
    """Parents listed out of order, twice: the answer's parents are as GetTask's."""
    a, b = kanban.task("a"), kanban.task("b")
    made = kanban.stub.CreateTask(
        pb.CreateTaskRequest(
            task=S.Task(title="child"), parent_ids=[b.task_id, a.task_id, b.task_id]
        ),
        timeout=10,
    )
    assert list(made.task.parent_ids) == sorted([a.task_id, b.task_id])
    read = kanban.get(made.task.task_id)
    read.ClearField("readiness")  # reads explain readiness; a create's answer does not
    assert made.task == read
    assert made.task.status == S.TASK_STATUS_TODO  # its parents are open
