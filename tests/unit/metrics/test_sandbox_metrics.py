"""SandboxMetrics on a real SDK meter provider read in memory."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.runtime.metrics import configure_metrics
from services.sandbox.metrics import SandboxMetrics
from tests.unit.metrics.readings import points


def test_acquires_exec_durations_and_reaper_actions() -> None:
    reader = InMemoryMetricReader()
    provider = configure_metrics("sandbox", readers=[reader], set_global=False)
    metrics = SandboxMetrics(provider.get_meter("sandbox"))
    metrics.acquire("created")
    metrics.acquire("reused_running")
    metrics.acquire("reused_running")
    metrics.exec(timed_out=False, duration_seconds=0.25)
    metrics.exec(timed_out=True, duration_seconds=2.0)
    metrics.reaped(2, failed=1)
    metrics.reaper_action("stop")

    acquires = points(reader, "longshore.sandbox.acquires")
    assert {dict(k)["outcome"]: p.value for k, p in acquires.items()} == {
        "created": 1,
        "reused_running": 2,
    }
    durations = points(reader, "longshore.sandbox.exec.duration")
    assert {dict(k)["timed_out"]: (p.count, p.sum) for k, p in durations.items()} == {
        "false": (1, 250),
        "true": (1, 2000),
    }
    actions = points(reader, "longshore.sandbox.reaper.actions")
    assert {dict(k)["kind"]: p.value for k, p in actions.items()} == {
        "reap": 2,
        "reap_failed": 1,
        "idle_stop": 1,
    }
    assert metrics.snapshot()["reaped"] == 2
    provider.shutdown()
