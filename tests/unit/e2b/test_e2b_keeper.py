"""The keeper on a fake gateway and a hand-moved clock: it beats, renews the token, completes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from longshore.kanban.v1 import worker_service_pb2 as wpb

import services.e2b.keeper as keeper_module
from services.e2b.keeper import Keeper
from services.runtime.errors import ResourceExhausted


class FakeWorker:
    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.beats: list[tuple[str, Any]] = []
        self.completed: list[str] = []

    async def Heartbeat(self, request: wpb.HeartbeatRequest, metadata: Any) -> Any:
        self.beats.append((request.run_id, dict(metadata)))
        lease = timestamp_pb2.Timestamp(seconds=int(self.clock[0]) + 60)
        return wpb.HeartbeatResponse(lease_expire_time=lease, sandbox_token=f"tok{len(self.beats)}")

    async def CompleteTask(self, request: wpb.CompleteTaskRequest, metadata: Any) -> Any:
        self.completed.append(request.run_id)
        return wpb.CompleteTaskResponse()


class FakeGateway:
    def __init__(self, clock: list[float]) -> None:
        self.worker = FakeWorker(clock)


def test_keeper_beats_with_the_creators_key_then_completes_at_the_end() -> None:
    clock = [1000.0]
    gateway = FakeGateway(clock)
    keeper = Keeper(gateway, clock=lambda: clock[0])  # type: ignore[arg-type]

    async def scenario() -> None:
        keeper.keep("r1", api_key="alice", token="tok0", lease_expire=1060.0, end=1100.0)
        await keeper.close()  # the loop is driven by hand below
        assert keeper.token_for("r1", "alice") == "tok0"
        assert keeper.token_for("r1", "bob") == ""  # another key never gets the token
        await keeper.tick()
        assert gateway.worker.beats == []  # not due: a third of the lease is 20 s
        clock[0] = 1021.0
        await keeper.tick()
        assert [r for r, _ in gateway.worker.beats] == ["r1"]
        assert gateway.worker.beats[0][1]["authorization"] == "Bearer alice"
        assert keeper.token_for("r1", "alice") == "tok1"
        keeper.extend("r1", 1200.0)
        clock[0] = 1101.0
        await keeper.tick()
        assert gateway.worker.completed == []  # extended past 1100
        clock[0] = 1200.0
        await keeper.tick()
        assert gateway.worker.completed == ["r1"] and len(keeper) == 0

    asyncio.run(scenario())


def test_a_full_keeper_refuses_before_the_create_writes_and_never_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keeper_module, "MAX_KEPT", 2)
    keeper = Keeper(FakeGateway([0.0]), clock=lambda: 0.0)  # type: ignore[arg-type]

    async def scenario() -> None:
        for run in ("r1", "r2"):
            keeper.check_room()
            keeper.keep(run, api_key="k", token="t", lease_expire=60.0, end=100.0)
        with pytest.raises(ResourceExhausted, match="keeps 2 sandboxes"):
            keeper.check_room()
        # A create that passed the check before the table filled is kept anyway:
        # its run and sandbox exist already.
        keeper.keep("r3", api_key="k", token="t", lease_expire=60.0, end=100.0)
        assert len(keeper) == 3
        keeper.drop("r1")
        keeper.drop("r2")
        keeper.check_room()
        await keeper.close()

    asyncio.run(scenario())
