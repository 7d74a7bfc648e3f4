"""The kanban service as a real process, scraped on its /metrics.

Through generated stubs (directly, as the gateway would): a profile for
external workers, three ready tasks, one claimed by ClaimTask and one idle
poll on an empty profile, plus a dry-run and a real Dispatch. The Prometheus
text must count the RPCs by method and code, the claims by profile and
outcome, the real tick (not the dry run) with its buckets, and the queue
depth per profile as the ready tasks left.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from longshore.kanban.v1 import (
    board_pb2,
    dispatch_pb2,
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    profile_pb2,
    task_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

from tests.support.net import free_port
from tests.support.processes import ServiceProcess
from tests.support.prometheus import Samples, scrape


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


@pytest.fixture
def kanban(tmp_path: Path, run_id: str) -> Iterator[tuple[str, str, str]]:
    token = secrets.token_urlsafe(24)
    listen, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = ServiceProcess(
        ["python", "-m", "services.kanban"],
        env={
            "LONGSHORE_HOME": str(tmp_path),
            "LONGSHORE_DEPLOYMENT": f"t{run_id}-kmetrics",
            "LONGSHORE_INTERNAL_TOKEN": token,
            "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
            "LONGSHORE_KANBAN_LISTEN": listen,
            # Ticks only when asked (Dispatch), so the counts are exact.
            "LONGSHORE_KANBAN_DISPATCHER_ENABLED": "false",
            "LONGSHORE_SANDBOX_ADDR": f"127.0.0.1:{free_port()}",
            "LONGSHORE_METRICS_LISTEN": metrics,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        },
        health_addr=listen,
        name="kanban",
        log_dir=tmp_path / "logs",
    )
    process.start(60)
    try:
        yield listen, metrics, token
    finally:
        process.stop()


def test_kanban_counts_rpcs_claims_ticks_and_queue_depth(kanban: tuple[str, str, str]) -> None:
    listen, metrics, token = kanban
    meta = (("longshore-internal-token", token),)
    with grpc.insecure_channel(listen) as channel:
        board = kanban_service_pb2_grpc.KanbanServiceStub(channel)
        worker = worker_service_pb2_grpc.WorkerServiceStub(channel)
        board.CreateBoard(
            kanban_service_pb2.CreateBoardRequest(
                board=board_pb2.Board(board_id="m", display_name="m")
            ),
            metadata=meta,
            timeout=10,
        )
        for name in ("ext", "idle"):
            board.CreateProfile(
                kanban_service_pb2.CreateProfileRequest(
                    profile=profile_pb2.Profile(name=name, executor=profile_pb2.EXECUTOR_EXTERNAL)
                ),
                metadata=meta,
                timeout=10,
            )
        for i in range(3):
            board.CreateTask(
                kanban_service_pb2.CreateTaskRequest(
                    task=task_pb2.Task(board_id="m", title=f"t{i}", assignee="ext")
                ),
                metadata=meta,
                timeout=10,
            )
        claimed = worker.ClaimTask(
            worker_service_pb2.ClaimTaskRequest(profile="ext", worker_id="w1"),
            metadata=meta,
            timeout=10,
        )
        assert claimed.run_id
        empty = worker.ClaimTask(
            worker_service_pb2.ClaimTaskRequest(
                profile="idle", worker_id="w2", wait=duration_pb2.Duration(nanos=200_000_000)
            ),
            metadata=meta,
            timeout=10,
        )
        assert not empty.run_id
        with pytest.raises(grpc.RpcError) as info:
            board.GetTask(kanban_service_pb2.GetTaskRequest(task_id="nope"), metadata=meta)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        board.Dispatch(kanban_service_pb2.DispatchRequest(dry_run=True), metadata=meta, timeout=30)
        result: dispatch_pb2.DispatchResult = board.Dispatch(
            kanban_service_pb2.DispatchRequest(), metadata=meta, timeout=30
        ).result
        # External profiles are never spawned: the two ready tasks await a worker.
        assert len(result.awaiting_worker) == 2
    samples = scrape(metrics)
    rpc = named(samples, "rpc_server_duration_milliseconds_count")

    def count(method: str, code: str) -> float:
        wanted = {("rpc_method", method), ("rpc_grpc_status_code", code)}
        return sum(v for labels, v in rpc.items() if wanted <= labels)

    assert count("CreateTask", "0") == 3
    assert count("ClaimTask", "0") == 2
    assert count("GetTask", "5") == 1
    assert count("Dispatch", "0") == 2
    claims = {
        (dict(labels)["profile"], dict(labels)["outcome"]): v
        for labels, v in named(samples, "longshore_kanban_claims_total").items()
    }
    assert claims == {("ext", "claimed"): 1, ("idle", "empty"): 1}
    ticks = named(samples, "longshore_kanban_tick_duration_milliseconds_count")
    assert sum(ticks.values()) == 1, "the dry run is not a tick"
    buckets = {
        dict(labels)["bucket"]: v
        for labels, v in named(samples, "longshore_kanban_tick_tasks_total").items()
    }
    assert buckets.get("awaiting_worker") == 2
    depth = {
        dict(labels)["profile"]: v
        for labels, v in named(samples, "longshore_kanban_queue_depth").items()
    }
    assert depth == {"ext": 2}
