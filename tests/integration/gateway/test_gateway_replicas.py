"""One gateway in front of two kanban replicas on one PostgreSQL: calls reach both.

Real processes: two kanban replicas sharing a throwaway PostgreSQL and a
gateway given both addresses (``LONGSHORE_KANBAN_ADDR=ip:a,ip:b``). Idle
``ClaimTask`` long polls make the balancing visible: each replica's own
``/metrics`` counts the calls it holds (``rpc_server_active_calls``), so both
must hold some of them. With gRPC's default pick-first every poll would land
on one replica.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from longshore.kanban.v1 import kanban_service_pb2, profile_pb2, task_pb2, worker_service_pb2

from services.gateway.auth import key_entry, new_key
from services.gateway.forwarding import channel_target
from tests.integration.gateway.stack import Stubs, auth
from tests.support.net import free_port
from tests.support.processes import ServiceProcess
from tests.support.prometheus import scrape

POLLS = 40


def held_claims(metrics: str) -> float:
    """ClaimTask calls a replica holds now, from its Prometheus text."""
    return sum(
        value
        for (name, labels), value in scrape(metrics).items()
        if name == "rpc_server_active_calls" and ("rpc_method", "ClaimTask") in labels
    )


def wait_until(check: Callable[[], bool], limit: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {limit:.0f}s: {what()}")
        time.sleep(0.2)


def test_channel_targets_balance_over_every_address() -> None:
    assert channel_target("kanban:50052") == "dns:///kanban:50052"
    assert channel_target("10.0.0.1:1, 10.0.0.2:2") == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert channel_target("dns:///kanban:50052") == "dns:///kanban:50052"


def test_calls_through_one_gateway_reach_both_kanban_replicas(
    fresh_postgres_db: str, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(16)
    key = new_key()
    kanban_addrs = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    metrics_addrs = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    gateway_addr = f"127.0.0.1:{free_port()}"
    common = {
        "LONGSHORE_HOME": str(tmp_path),
        "LONGSHORE_INTERNAL_TOKEN": token,
        "LONGSHORE_SHUTDOWN_DELAY_SECONDS": "0",
        "LONGSHORE_SANDBOX_ADDR": f"127.0.0.1:{free_port()}",
    }
    replicas = [
        ServiceProcess(
            ["python", "-m", "services.kanban"],
            env={
                **common,
                "LONGSHORE_DATABASE_URL": fresh_postgres_db,
                "LONGSHORE_KANBAN_LISTEN": addr,
                "LONGSHORE_METRICS_LISTEN": metrics_addrs[i],
            },
            health_addr=addr,
            name=f"kanban-{i}",
            log_dir=tmp_path / "logs",
        )
        for i, addr in enumerate(kanban_addrs)
    ]
    gateway = ServiceProcess(
        ["python", "-m", "services.gateway"],
        env={
            **common,
            "LONGSHORE_GATEWAY_LISTEN": gateway_addr,
            "LONGSHORE_KANBAN_ADDR": ",".join(kanban_addrs),
            "LONGSHORE_GATEWAY_API_KEYS": key_entry(
                "ops", ["read", "write", "worker", "admin"], key
            ),
        },
        health_addr=gateway_addr,
        name="gateway",
        log_dir=tmp_path / "logs",
    )
    with replicas[0], replicas[1], gateway:
        replicas[0].spawn()
        replicas[0].wait_serving(60)  # the first migrates the database
        replicas[1].start(60)
        gateway.start(60)
        metadata = auth(key)
        with grpc.insecure_channel(gateway_addr) as channel:
            stubs = Stubs(channel)
            stubs.kanban.CreateProfile(
                kanban_service_pb2.CreateProfileRequest(
                    profile=profile_pb2.Profile(name="ext", executor=profile_pb2.EXECUTOR_EXTERNAL)
                ),
                timeout=10,
                metadata=metadata,
            )
            # Any replica answers any call: they share the database.
            task = stubs.kanban.CreateTask(
                kanban_service_pb2.CreateTaskRequest(task=task_pb2.Task(title="shared")),
                timeout=10,
                metadata=metadata,
            ).task
            for _ in range(10):
                got = stubs.kanban.GetTask(
                    kanban_service_pb2.GetTaskRequest(task_id=task.task_id),
                    timeout=10,
                    metadata=metadata,
                )
                assert got.task.title == "shared"
            claim = worker_service_pb2.ClaimTaskRequest(
                profile="ext", worker_id="w", wait=Duration(seconds=60)
            )
            polls = [
                stubs.worker.ClaimTask.future(claim, timeout=90, metadata=metadata)
                for _ in range(POLLS)
            ]
            try:
                # Round robin: each replica holds about half of the polls.
                wait_until(
                    lambda: all(held_claims(m) >= POLLS // 4 for m in metrics_addrs),
                    120,
                    lambda: (
                        f"polls on both replicas: held {[held_claims(m) for m in metrics_addrs]}"
                        f"\n{gateway.log_tail(20)}"
                    ),
                )
            finally:
                for poll in polls:
                    poll.cancel()
