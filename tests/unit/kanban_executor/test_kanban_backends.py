"""The dispatcher's backend breaker: opens on a platform failure or a failed probe,
probes with a doubling delay, closes (and wakes the dispatcher) by itself."""

from __future__ import annotations

import datetime as dt
import threading

from services.kanban.backends import BackendBreaker

T0 = dt.datetime(2026, 1, 1, 12, 0, 3, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Probe:
    def __init__(self) -> None:
        self.answers: list[str | None] = []
        self.calls = 0

    def __call__(self) -> str | None:
        self.calls += 1
        return self.answers.pop(0) if self.answers else None


def test_a_platform_failure_opens_it_and_a_probe_closes_it() -> None:
    clock, probe, woken = Clock(), Probe(), []
    breaker = BackendBreaker(
        probe,
        probe_interval=2,
        max_probe_interval=8,
        clock=clock,
        on_available=lambda: woken.append(1),
    )
    assert breaker.view() is None and breaker.available
    breaker.trip("acquire: docker engine unreachable:\n connection refused")
    view = breaker.view()
    assert view is not None and not breaker.available
    assert view.message(T0) == (
        "sandbox backend unavailable since 12:00:03Z "
        "(acquire: docker engine unreachable: connection refused), next probe in 2s"
    )
    breaker.trip("another error")  # still open: the first outage's start and reason stay
    assert breaker.view() == view
    probe.answers = ["docker engine unreachable: connection refused", None]
    clock.advance(2)
    assert breaker.probe_once() is False
    down = breaker.view()
    assert down is not None and down.since == T0
    assert down.next_probe == clock.now + dt.timedelta(seconds=2)
    assert woken == []
    clock.advance(2)
    assert breaker.probe_once() is True
    assert breaker.view() is None and woken == [1]


def test_probes_back_off_up_to_the_maximum_while_down() -> None:
    clock, probe = Clock(), Probe()
    breaker = BackendBreaker(probe, probe_interval=1, max_probe_interval=5, clock=clock)
    probe.answers = ["down"] * 6
    delays = []
    for _ in range(6):
        breaker.probe_once()
        view = breaker.view()
        assert view is not None
        delays.append((view.next_probe - clock.now).total_seconds())
    assert delays == [1, 2, 4, 5, 5, 5]


def test_a_health_probe_that_fails_opens_it_without_any_call_failing() -> None:
    clock, probe = Clock(), Probe()
    breaker = BackendBreaker(probe, clock=clock)
    probe.answers = ["docker engine unreachable: timed out"]
    assert breaker.probe_once() is False
    view = breaker.view()
    assert view is not None and view.reason == "docker engine unreachable: timed out"
    # A run that succeeded may have run before the outage: no proof it is back.
    breaker.succeeded()
    view = breaker.view()
    assert view is not None and view.next_probe == clock.now  # probed at once instead
    probe.answers = ["docker engine unreachable: refused"]
    assert breaker.probe_once() is False
    assert breaker.view() is not None
    probe.answers = [None]
    assert breaker.probe_once() is True
    assert breaker.view() is None


def test_a_success_reported_after_the_trip_leaves_it_open_until_a_probe_answers() -> None:
    # The CI failure this guards: a command exited just before the engine was
    # cut, its exit reached the dispatcher just after another run tripped the
    # breaker, and closing on that success spawned a task into the outage.
    clock, probe = Clock(), Probe()
    breaker = BackendBreaker(probe, probe_interval=2, clock=clock)
    breaker.trip("exec: docker engine unreachable: connection refused")
    breaker.succeeded()
    assert breaker.view() is not None
    breaker.succeeded()  # idempotent: the probe is already due
    assert breaker.view() is not None


def test_a_raising_probe_counts_as_down_and_long_reasons_are_cut() -> None:
    def boom() -> str | None:
        raise RuntimeError("x" * 500)

    breaker = BackendBreaker(boom, clock=Clock())
    assert breaker.probe_once() is False
    view = breaker.view()
    assert view is not None and len(view.reason) <= 160 and view.reason.startswith("probe failed")


def test_the_thread_probes_and_resumes_by_itself() -> None:
    answers = ["down", "down"]
    resumed = threading.Event()

    def probe() -> str | None:
        return answers.pop(0) if answers else None

    breaker = BackendBreaker(
        probe, probe_interval=0.05, max_probe_interval=0.1, on_available=resumed.set
    )
    breaker.trip("acquire: unavailable")
    breaker.start()
    try:
        assert resumed.wait(10), "the breaker never closed"
        assert breaker.view() is None
    finally:
        breaker.stop()
