"""Two kanban processes on one PostgreSQL wake each other with LISTEN/NOTIFY.

A WatchEvents stream on replica B sees an event committed on replica A, and a
ClaimTask long poll on B is woken by a task created on A. With LISTEN/NOTIFY
an idle stream or lane re-reads only every 30 s as a safety net, so answers
within the calls' 20 s deadline come from the notification (no assertion is
timed: the deadline is the call's own). After the listening connections are
killed (as a database restart would), B reconnects and rings everything once,
so an event committed while it was away still reaches the stream.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from longshore.kanban.v1 import kanban_service_pb2 as pb
from longshore.kanban.v1 import kanban_service_pb2_grpc, profile_pb2, worker_service_pb2_grpc
from longshore.kanban.v1 import task_pb2 as S
from longshore.kanban.v1 import worker_service_pb2 as wpb
from sqlalchemy import create_engine, text

from services.kanban.notifications import APPLICATION_NAME
from services.runtime.channels import open_channel
from tests.support.net import free_port
from tests.support.processes import ServiceProcess

#: Well under the 30 s safety-net re-read: an answer within it was notified.
DEADLINE = 20.0


def _replica(url: str, home: Path, name: str) -> ServiceProcess:
    addr = f"127.0.0.1:{free_port()}"
    return ServiceProcess(
        ["python", "-m", "services.kanban"],
        env={
            "LONGSHORE_HOME": str(home),
            "LONGSHORE_DATABASE_URL": url,
            "LONGSHORE_KANBAN_LISTEN": addr,
            "LONGSHORE_KANBAN_DISPATCHER_ENABLED": "false",
            "LONGSHORE_SANDBOX_ADDR": "127.0.0.1:9",
            "LONGSHORE_INTERNAL_TOKEN": "",
        },
        health_addr=addr,
        name=name,
    )


def listeners(url: str) -> int:
    """Listening connections of kanban replicas on the test's database."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = :name AND datname = current_database()"
                    ),
                    {"name": APPLICATION_NAME},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def kill_listeners(url: str) -> None:
    """Terminate the replicas' listening connections, as a database restart would."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": APPLICATION_NAME},
            )
            conn.commit()
    finally:
        engine.dispose()


def wait_for_listeners(url: str, count: int, limit: float = 30.0) -> None:
    """Setup only: both replicas have their LISTEN connection."""
    deadline = time.monotonic() + limit
    while listeners(url) != count:
        if time.monotonic() > deadline:
            pytest.fail(f"not within {limit:.0f}s: {count} listening connections")
        time.sleep(0.1)


@pytest.fixture
def replicas(fresh_postgres_db: str, tmp_path: Path) -> Iterator[tuple[ServiceProcess, ...]]:
    a = _replica(fresh_postgres_db, tmp_path, "kanban-a")
    b = _replica(fresh_postgres_db, tmp_path, "kanban-b")
    with a, b:
        a.start(60)
        b.start(60)
        wait_for_listeners(fresh_postgres_db, 2)
        yield a, b


def test_a_commit_on_one_replica_wakes_streams_and_polls_on_the_other(
    replicas: tuple[ServiceProcess, ...], fresh_postgres_db: str
) -> None:
    a, b = replicas
    with open_channel(a.health_addr) as ca, open_channel(b.health_addr) as cb:
        stub_a = kanban_service_pb2_grpc.KanbanServiceStub(ca)
        stub_b = kanban_service_pb2_grpc.KanbanServiceStub(cb)
        worker_b = worker_service_pb2_grpc.WorkerServiceStub(cb)
        stub_a.CreateProfile(
            pb.CreateProfileRequest(
                profile=profile_pb2.Profile(name="ext", executor=profile_pb2.EXECUTOR_EXTERNAL)
            ),
            timeout=10,
        )
        stream = stub_b.WatchEvents(pb.WatchEventsRequest(), timeout=120)
        # An event committed on B itself: once the stream delivered it, the
        # stream has read the log and is waiting.
        local = stub_b.CreateTask(pb.CreateTaskRequest(task=S.Task(title="on b")), timeout=10).task
        assert next(stream).event.task_id == local.task_id

        remote = stub_a.CreateTask(pb.CreateTaskRequest(task=S.Task(title="on a")), timeout=10)
        assert _next_within(stream).event.task_id == remote.task.task_id

        # A poll held on B, woken by a task for its profile created on A.
        poll = worker_b.ClaimTask.future(
            wpb.ClaimTaskRequest(profile="ext", worker_id="w", wait=Duration(seconds=60)),
            timeout=90,
        )
        # A round trip through both replicas and the notification: the poll
        # is in its lane by then (its first attempt is one read).
        other = stub_a.CreateTask(pb.CreateTaskRequest(task=S.Task(title="noise")), timeout=10)
        assert _next_within(stream).event.task_id == other.task.task_id
        assert not poll.done()
        wanted = stub_a.CreateTask(
            pb.CreateTaskRequest(task=S.Task(title="for ext", assignee="ext")), timeout=10
        ).task
        claimed = poll.result(timeout=DEADLINE)
        assert claimed.task.task_id == wanted.task_id
        assert _next_within(stream).event.task_id == wanted.task_id  # created
        assert _next_within(stream).event.kind == "claimed"

        # The listening connections die (a database restart): an event
        # committed meanwhile is not lost, since B rings everything once it
        # listens again.
        kill_listeners(fresh_postgres_db)
        missed = stub_a.CreateTask(pb.CreateTaskRequest(task=S.Task(title="missed")), timeout=10)
        assert _next_within(stream).event.task_id == missed.task.task_id
        wait_for_listeners(fresh_postgres_db, 2)
        after = stub_a.CreateTask(pb.CreateTaskRequest(task=S.Task(title="after")), timeout=10)
        assert _next_within(stream).event.task_id == after.task.task_id
    assert "listening again after a reconnect" in b.log_text()


def _next_within(stream: Iterator[pb.WatchEventsResponse]) -> pb.WatchEventsResponse:
    """The stream's next message; a stream that goes quiet fails the test at DEADLINE."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(next, stream).result(timeout=DEADLINE)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"no event within {DEADLINE:.0f}s (the 30 s re-read did not come yet)")
    finally:
        # Not waiting: a quiet stream ends when its channel closes.
        pool.shutdown(wait=False)
