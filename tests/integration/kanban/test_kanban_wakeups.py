"""Who a commit wakes: idle ClaimTask polls write nothing and cost one read per lane.

A real in-process kanban server (SQLite and PostgreSQL); the statements the
server sends are counted on its engine. Fifty polls wait on one profile:
a commit for another profile reads nothing for them, and a task for theirs
costs a few claimability reads for the whole lane (one per wake-up), not one
per poll; exactly one poll gets the task and the others stay held.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.duration_pb2 import Duration
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import profile_pb2
from longshore.kanban.v1 import worker_service_pb2 as wpb
from sqlalchemy import event

from tests.integration.kanban.conftest import Kanban

POLLS = 50
COMMIT = "<commit>"


@contextmanager
def statements(kanban: Kanban) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the server sends while the ``with`` runs: (SQL, parameters)."""
    seen: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, *_rest: Any) -> None:
        with lock:
            seen.append((sql, params))

    def committed(_conn: Any) -> None:
        # Reads roll back; only a write transaction commits (both databases).
        with lock:
            seen.append((COMMIT, None))

    engine = kanban.app.db.engine
    event.listen(engine, "before_cursor_execute", record)
    event.listen(engine, "commit", committed)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
        event.remove(engine, "commit", committed)


def is_claimability_read(sql: str) -> bool:
    """The lane's (and an attempt's) read: task ids only, under the claim conditions."""
    return sql.startswith("SELECT tasks.task_id") and "failure_count" in sql


def is_write(sql: str) -> bool:
    """A committed write transaction (PostgreSQL has no lock that marks one any more)."""
    return sql == COMMIT


def mentions(params: Any, value: str) -> bool:
    values = params.values() if isinstance(params, dict) else params or ()
    return value in values


def wait_until(check: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Setup only (polls reaching their lane): no assertion is timed."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {limit:.0f}s: {what}")
        time.sleep(0.05)


def test_idle_polls_write_nothing_and_wake_once_per_lane(kanban: Kanban) -> None:
    kanban.profile("ext")
    kanban.profile("other")
    lanes = kanban.app.worker._lanes
    # Only the reads that commits cause are counted: no periodic re-read.
    lanes.recheck_seconds = 3600.0
    claim = wpb.ClaimTaskRequest(profile="ext", worker_id="w", wait=Duration(seconds=60))
    with statements(kanban) as seen:
        polls = [kanban.worker.ClaimTask.future(claim, timeout=90) for _ in range(POLLS)]
        try:
            wait_until(lambda: lanes.waiting() == POLLS, f"{POLLS} polls waiting in their lane")
            # Each poll's first attempt was a read that found nothing: no
            # write transaction was opened by any of them.
            assert [s for s, _ in seen if is_write(s)] == []
            seen.clear()

            # A task for another profile: its own poll is woken (which proves
            # the ring was delivered), the fifty read nothing for it.
            other = kanban.worker.ClaimTask.future(
                wpb.ClaimTaskRequest(profile="other", worker_id="o", wait=Duration(seconds=60)),
                timeout=90,
            )
            wait_until(lambda: lanes.waiting() == POLLS + 1, "the other poll waiting")
            kanban.task("for other", assignee="other")
            assert other.result(timeout=30).task.title == "for other"
            ext_reads = [s for s, p in seen if is_claimability_read(s) and mentions(p, "ext")]
            assert ext_reads == []
            assert not any(p.done() for p in polls)
            seen.clear()

            # A task for theirs: one poll claims it; the lane read a handful
            # of times in all (its wake-up, the claimer's attempt, the wake-up
            # of the claim's own commit), not once per poll.
            task = kanban.task("for ext", assignee="ext")
            wait_until(lambda: any(p.done() for p in polls), "one poll answered")
            winners = [p for p in polls if p.done()]
            assert len(winners) == 1
            assert winners[0].result().task.task_id == task.task_id
            wait_until(lambda: lanes.waiting() == POLLS - 1, "the others back in their lane")
            reads = [s for s, p in seen if is_claimability_read(s) and mentions(p, "ext")]
            assert 1 <= len(reads) <= 4, len(reads)
            writes = [s for s, _ in seen if is_write(s)]
            # CreateTask, the claim: nothing else wrote.
            assert len(writes) == 2, writes
        finally:
            for poll in polls:
                poll.cancel()
    for poll in polls:
        if poll is not winners[0]:
            with pytest.raises(grpc.FutureCancelledError):
                poll.result(timeout=10)
    # Gone clients leave their lane promptly (cancellation reaches the coroutine).
    wait_until(lambda: lanes.waiting() == 0, "cancelled polls gone from the lane")


def test_a_poll_wakes_when_its_tasks_backoff_ends(kanban: Kanban) -> None:
    """No commit makes a backed-off task claimable: the lane reads when the backoff ends."""
    kanban.profile("ext", retry_policy=profile_pb2.RetryPolicy(initial_backoff=Duration(seconds=1)))
    task = kanban.task("retry me", assignee="ext")
    first = kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=10)
    kanban.worker.FailTask(
        wpb.FailTaskRequest(run_id=first.run_id, error="boom", retryable=True), timeout=10
    )
    # Held across the backoff: answered once it ends (no commit in between).
    again = kanban.worker.ClaimTask(
        wpb.ClaimTaskRequest(profile="ext", worker_id="w", wait=Duration(seconds=30)), timeout=40
    )
    assert again.task.task_id == task.task_id
    assert again.run_id != first.run_id
    readiness = kanban.stub.ExplainTask(pb.ExplainTaskRequest(task_id=task.task_id), timeout=10)
    assert readiness.task_id == task.task_id


def test_raising_a_cap_wakes_the_polls_it_frees(kanban: Kanban) -> None:
    """A profile change appends no event, yet its held polls are rung (and re-read)."""
    kanban.profile("ext", cap=1)
    kanban.task("one", assignee="ext")
    two = kanban.task("two", assignee="ext")
    kanban.worker.ClaimTask(wpb.ClaimTaskRequest(profile="ext", worker_id="w"), timeout=10)
    lanes = kanban.app.worker._lanes
    lanes.recheck_seconds = 3600.0  # only the ring can answer the poll
    poll = kanban.worker.ClaimTask.future(
        wpb.ClaimTaskRequest(profile="ext", worker_id="w2", wait=Duration(seconds=60)), timeout=90
    )
    wait_until(lambda: lanes.waiting() == 1, "the poll waiting at the cap")
    kanban.stub.UpdateProfile(
        pb.UpdateProfileRequest(
            profile=profile_pb2.Profile(name="ext", max_in_progress=2),
            update_mask=field_mask_pb2.FieldMask(paths=["max_in_progress"]),
        ),
        timeout=10,
    )
    assert poll.result(timeout=30).task.task_id == two.task_id


def test_polls_joining_a_lane_that_knows_it_has_nothing_read_nothing(kanban: Kanban) -> None:
    """A lane whose last read found less work than polls lets a new poll wait at once.

    Ten more polls join without a read of their own; a task still wakes
    exactly one of them; and a poll whose ``wait`` runs out while its lane
    still knows there is nothing answers empty without a read.
    """
    kanban.profile("ext")
    lanes = kanban.app.worker._lanes
    lanes.recheck_seconds = 3600.0
    claim = wpb.ClaimTaskRequest(profile="ext", worker_id="w", wait=Duration(seconds=60))
    first = kanban.worker.ClaimTask.future(claim, timeout=90)
    polls = [first]
    try:
        wait_until(
            lambda: lanes.waiting() == 1 and lanes.joinable("ext", "") is not None,
            "the first poll's lane read once and found nothing",
        )
        with statements(kanban) as seen:
            polls += [kanban.worker.ClaimTask.future(claim, timeout=90) for _ in range(10)]
            wait_until(lambda: lanes.waiting() == 11, "ten more polls in the lane")
            assert [s for s, _ in seen if is_claimability_read(s)] == []

            task = kanban.task("for ext", assignee="ext")
            wait_until(lambda: any(p.done() for p in polls), "one poll answered")
            winners = [p for p in polls if p.done()]
            assert len(winners) == 1
            assert winners[0].result().task.task_id == task.task_id
            wait_until(lambda: lanes.waiting() == 10, "the others back in their lane")

        wait_until(lambda: lanes.joinable("ext", "") is not None, "the lane knows again")
        with statements(kanban) as seen:
            short = wpb.ClaimTaskRequest(profile="ext", worker_id="s", wait=Duration(seconds=1))
            reply = kanban.worker.ClaimTask(short, timeout=10)
            assert not reply.HasField("task")
            assert [s for s, _ in seen if is_claimability_read(s)] == []
    finally:
        for poll in polls:
            poll.cancel()
    wait_until(lambda: lanes.waiting() == 0, "cancelled polls gone from the lane")


def test_a_poll_for_one_task_or_without_wait_always_attempts(kanban: Kanban) -> None:
    """Joining is only for long polls of any task: these read even when the lane knows."""
    kanban.profile("ext")
    kanban.profile("other")
    elsewhere = kanban.task("not ext's", assignee="other")
    lanes = kanban.app.worker._lanes
    lanes.recheck_seconds = 3600.0
    held = kanban.worker.ClaimTask.future(
        wpb.ClaimTaskRequest(profile="ext", worker_id="w", wait=Duration(seconds=60)), timeout=90
    )
    try:
        wait_until(lambda: lanes.joinable("ext", "") is not None, "the lane read and knows")
        named = wpb.ClaimTaskRequest(
            profile="ext", worker_id="n", task_id=elsewhere.task_id, wait=Duration(seconds=1)
        )
        unheld = wpb.ClaimTaskRequest(profile="ext", worker_id="z")
        for request in (named, unheld):
            with statements(kanban) as seen:
                reply = kanban.worker.ClaimTask(request, timeout=10)
                assert not reply.HasField("task")
                assert [s for s, _ in seen if is_claimability_read(s)], request
            assert lanes.joinable("ext", "") is not None
    finally:
        held.cancel()
