"""1,000 idle ``ClaimTask`` long polls held through the gateway leave unary calls unaffected.

Real processes: sandbox manager, kanban and the gateway, both on ``grpc.aio``
with their default settings (kanban's pool of 32 threads included). 1,000
polls (the suite's budget; issue 12 targets 10,000 in ``bench/scale.py``) go
through one gateway to kanban; meanwhile ``GetStatus`` and ``GetTask``
through the same gateway must all answer within their normal deadline (a
failure, e.g. DEADLINE_EXCEEDED, fails the test; latencies are printed, not
asserted). Neither process's thread count may grow with the polls: a held
poll costs each a coroutine. Then one task for the polls' profile is taken
by exactly one of them, which proves they were held at kanban, not queued.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from longshore.gateway.v1 import gateway_service_pb2
from longshore.kanban.v1 import (
    board_pb2,
    kanban_service_pb2,
    profile_pb2,
    task_pb2,
    worker_service_pb2,
)

from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack

POLLS = 1000
Metadata = tuple[tuple[str, str], ...]
UNARY_CALLS = 100
# The deadline a client gives a plain unary call; every call must beat it.
NORMAL_DEADLINE = 10.0
# Slack for threads the gateway may start for its own reasons (gRPC core pollers).
THREAD_SLACK = 40


def proc_status(pid: int) -> dict[str, int]:
    """``Threads`` and ``VmRSS`` (KiB) of a process, from /proc."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def wait_until(check: Callable[[], bool], limit: float, what: str) -> None:
    """Polls ``check`` until true; fails naming ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {limit:.0f}s: {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str
) -> Iterator[RealStack]:
    home = tmp_path_factory.mktemp("gw-scale")
    with real_stack(
        home,
        deployment=f"t{run_id}-gws",
        image=sandbox_image,
    ) as s:
        yield s


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_a_thousand_held_long_polls_leave_unary_calls_unaffected(stack: RealStack) -> None:
    admin = auth(stack.keys.admin)
    worker = auth(stack.keys.worker)
    gateway_pid = stack.processes["gateway"].pid
    kanban_pid = stack.processes["kanban"].pid
    with stack.channel() as channel, stack.channel() as unary_channel:
        stubs, unary = Stubs(channel), Stubs(unary_channel)
        unary.kanban.CreateBoard(
            kanban_service_pb2.CreateBoardRequest(board=board_pb2.Board(board_id="scale")),
            timeout=NORMAL_DEADLINE,
            metadata=admin,
        )
        unary.kanban.CreateProfile(
            kanban_service_pb2.CreateProfileRequest(
                profile=profile_pb2.Profile(name="idle", executor=profile_pb2.EXECUTOR_EXTERNAL)
            ),
            timeout=NORMAL_DEADLINE,
            metadata=admin,
        )
        task = unary.kanban.CreateTask(
            kanban_service_pb2.CreateTaskRequest(
                task=task_pb2.Task(board_id="scale", title="read while polls are held")
            ),
            timeout=NORMAL_DEADLINE,
            metadata=admin,
        ).task
        # Warm both paths so the baseline includes the channels' own costs.
        unary.gateway.GetStatus(
            gateway_service_pb2.GetStatusRequest(), timeout=NORMAL_DEADLINE, metadata=admin
        )
        idle = measure(unary, task.task_id, admin)
        before = proc_status(gateway_pid)
        kanban_before = proc_status(kanban_pid)["Threads"]

        claim = worker_service_pb2.ClaimTaskRequest(
            profile="idle", worker_id="w", wait=Duration(seconds=60)
        )
        # Futures, not threads: the test process holds 1,000 calls cheaply too.
        polls = [
            stubs.worker.ClaimTask.future(claim, timeout=90, metadata=worker) for _ in range(POLLS)
        ]
        winners: list[grpc.Future] = []
        try:
            # A call issued after the polls on the same connection: the
            # gateway's one loop has taken (and forwarded) the polls before it.
            barrier = unary_after(stubs, task.task_id, admin)
            assert barrier.task.task_id == task.task_id
            held = proc_status(gateway_pid)
            kanban_held = proc_status(kanban_pid)["Threads"]
            latencies = measure(unary, task.task_id, admin)
            # Still held: none answered, none failed, while the unary calls ran.
            finished = [p for p in polls if p.done()]
            assert finished == [], [p.exception() for p in finished[:3]]
            # One task for their profile: exactly one held poll takes it.
            wanted = unary.kanban.CreateTask(
                kanban_service_pb2.CreateTaskRequest(
                    task=task_pb2.Task(board_id="scale", title="for one poll", assignee="idle")
                ),
                timeout=NORMAL_DEADLINE,
                metadata=admin,
            ).task
            wait_until(lambda: any(p.done() for p in polls), 60, "a poll to take the task")
            winners = [p for p in polls if p.done()]
            assert len(winners) == 1
            assert winners[0].result().task.task_id == wanted.task_id
        finally:
            for poll in polls:
                poll.cancel()
        for poll in polls:
            if poll not in winners:
                with pytest.raises(grpc.FutureCancelledError):
                    poll.result(timeout=NORMAL_DEADLINE)
        after = proc_status(gateway_pid)

    assert held["Threads"] <= before["Threads"] + THREAD_SLACK, (before, held)
    assert kanban_held <= kanban_before + THREAD_SLACK, (kanban_before, kanban_held)
    per_poll_kib = (held["VmRSS"] - before["VmRSS"]) / POLLS
    print(
        f"\ngateway: threads {before['Threads']} -> {held['Threads']} holding {POLLS} polls; "
        f"RSS {before['VmRSS']} -> {held['VmRSS']} KiB ({per_poll_kib:.1f} KiB per held poll), "
        f"{after['VmRSS']} KiB after cancelling; kanban threads {kanban_before} -> {kanban_held}"
    )
    for name, samples in latencies.items():
        ms = [s * 1000 for s in samples]
        base = [s * 1000 for s in idle[name]]
        print(
            f"{name} with {POLLS} polls held: p50 {statistics.median(ms):.2f} ms, "
            f"p99 {percentile(ms, 0.99):.2f} ms, max {max(ms):.2f} ms "
            f"(idle: p50 {statistics.median(base):.2f} ms, p99 {percentile(base, 0.99):.2f} ms)"
        )


def unary_after(
    stubs: Stubs, task_id: str, metadata: Metadata
) -> kanban_service_pb2.GetTaskResponse:
    """One GetTask on the polls' own channel (after them on the connection)."""
    response: kanban_service_pb2.GetTaskResponse = stubs.kanban.GetTask(
        kanban_service_pb2.GetTaskRequest(task_id=task_id),
        timeout=NORMAL_DEADLINE,
        metadata=metadata,
    )
    return response


def measure(unary: Stubs, task_id: str, metadata: Metadata) -> dict[str, list[float]]:
    """Times ``UNARY_CALLS`` of GetStatus and GetTask through the gateway (seconds each).

    Every call must answer within its normal deadline: a failure here is the
    call's own error (e.g. DEADLINE_EXCEEDED), not a timing assertion.
    """
    latencies: dict[str, list[float]] = {"GetStatus": [], "GetTask": []}
    for _ in range(UNARY_CALLS):
        started = time.perf_counter()
        unary.gateway.GetStatus(
            gateway_service_pb2.GetStatusRequest(), timeout=NORMAL_DEADLINE, metadata=metadata
        )
        latencies["GetStatus"].append(time.perf_counter() - started)
        started = time.perf_counter()
        got = unary.kanban.GetTask(
            kanban_service_pb2.GetTaskRequest(task_id=task_id),
            timeout=NORMAL_DEADLINE,
            metadata=metadata,
        )
        latencies["GetTask"].append(time.perf_counter() - started)
        assert got.task.task_id == task_id
    return latencies
