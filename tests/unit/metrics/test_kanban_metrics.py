"""KanbanMetrics on a real SDK meter provider read in memory."""

from __future__ import annotations

from longshore.kanban.v1 import dispatch_pb2
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.kanban.metrics import BUCKETS, KanbanMetrics
from services.kanban.planner_types import Plan, TaskRef
from services.runtime.metrics import configure_metrics
from tests.unit.metrics.readings import points


def test_ticks_buckets_claims_and_queue_depth() -> None:
    reader = InMemoryMetricReader()
    provider = configure_metrics("kanban", readers=[reader], set_global=False)
    depth = {"coder": 3, "reviewer": 0}
    metrics = KanbanMetrics(provider.get_meter("kanban"), queue_depth=lambda: depth)
    result = Plan(spawned=[TaskRef("t1", "coder"), TaskRef("t2", "coder")], promoted=["t3"])
    metrics.tick(0.012, result)
    metrics.tick(0.004, Plan(promoted=["t4"]))
    metrics.claim("coder", claimed=True)
    metrics.claim("coder", claimed=False)
    metrics.claim("coder", claimed=True)

    (tick,) = points(reader, "longshore.kanban.tick.duration").values()
    assert tick.count == 2 and tick.sum == 16
    tasks = points(reader, "longshore.kanban.tick.tasks")
    assert {dict(k)["bucket"]: p.value for k, p in tasks.items()} == {"spawned": 2, "promoted": 2}
    claims = points(reader, "longshore.kanban.claims")
    assert {tuple(sorted(dict(k).values())): p.value for k, p in claims.items()} == {
        ("claimed", "coder"): 2,
        ("coder", "empty"): 1,
    }
    gauge = points(reader, "longshore.kanban.queue.depth")
    assert {dict(k)["profile"]: p.value for k, p in gauge.items()} == {"coder": 3, "reviewer": 0}
    provider.shutdown()


def test_a_failing_depth_query_leaves_the_other_metrics_alone() -> None:
    reader = InMemoryMetricReader()
    provider = configure_metrics("kanban", readers=[reader], set_global=False)

    def broken() -> dict[str, int]:
        raise ConnectionError("database unreachable")

    metrics = KanbanMetrics(provider.get_meter("kanban"), queue_depth=broken)
    metrics.claim("coder", claimed=True)
    assert points(reader, "longshore.kanban.queue.depth") == {}
    assert len(points(reader, "longshore.kanban.claims")) == 1
    provider.shutdown()


def test_every_bucket_is_a_dispatch_result_field_and_all_but_one_a_plan_field() -> None:
    # The loop counts a tick from its Plan (it builds no DispatchResult);
    # spawn_failed is filled only as a spawn fails, after the tick.
    fields = set(dispatch_pb2.DispatchResult.DESCRIPTOR.fields_by_name)
    assert set(BUCKETS) <= fields
    assert [b for b in BUCKETS if not hasattr(Plan(), b)] == ["spawn_failed"]
