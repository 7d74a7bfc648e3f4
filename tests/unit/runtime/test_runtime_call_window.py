"""The one-minute call window behind the gateway's headline figures, on an injected clock."""

from __future__ import annotations

import grpc
import pytest

from services.runtime.rpc_metrics import CallWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finish(
    window: CallWindow, duration_ms: float, code: grpc.StatusCode = grpc.StatusCode.OK
) -> None:
    window.begin(False)
    window.end(False, duration_ms, code)


def test_rate_and_quantiles_over_the_window() -> None:
    clock = Clock()
    window = CallWindow(60, clock)
    clock.now += 60
    for second in range(60):
        clock.now = 1060.0 + second
        for _ in range(10):
            finish(window, 1.0)
    clock.now = 1060.0 + 59.5
    # 1% of the calls are slow: p99 is still the fast bucket, p99 of 2% is not.
    for _ in range(6):
        finish(window, 800.0)
    figures = window.figures()
    assert figures.window_seconds == 60
    assert figures.calls == 606
    assert figures.calls_per_second == pytest.approx(10.1)
    assert 1.0 <= figures.p50_ms <= 1.25
    assert 1.0 <= figures.p99_ms <= 1.25
    for _ in range(6):
        finish(window, 800.0)
    assert 800 <= window.figures().p99_ms <= 1000


def test_old_seconds_leave_the_window() -> None:
    clock = Clock()
    window = CallWindow(60, clock)
    finish(window, 2.0, grpc.StatusCode.INTERNAL)
    finish(window, 2.0, grpc.StatusCode.CANCELLED)  # a client that went away: not an error
    clock.now += 30
    finish(window, 2.0, grpc.StatusCode.NOT_FOUND)
    figures = window.figures()
    assert (figures.calls, figures.errors) == (3, 2)
    assert dict(figures.errors_by_code) == {"INTERNAL": 1, "NOT_FOUND": 1}
    assert figures.window_seconds == 30
    clock.now += 45
    figures = window.figures()
    assert (figures.calls, figures.errors) == (1, 1)
    clock.now += 3600
    figures = window.figures()
    assert (figures.calls, figures.p99_ms, figures.calls_per_second) == (0, 0.0, 0.0)


def test_in_flight_and_held_streams() -> None:
    window = CallWindow(60, Clock())
    window.begin(True)
    window.begin(False)
    figures = window.figures()
    assert (figures.in_flight, figures.held_streams, figures.calls) == (2, 1, 0)
    window.end(True, 5000.0, grpc.StatusCode.OK)
    figures = window.figures()
    assert (figures.in_flight, figures.held_streams, figures.calls) == (1, 0, 1)
