"""Cleanup worker threads: bounded drain, failures counted, pending tracking."""

from __future__ import annotations

import threading

from services.sandbox.cleanup import CleanupPool


def test_drain_waits_for_every_job() -> None:
    pool = CleanupPool(2)
    release = threading.Event()
    done: list[str] = []

    def job(name: str) -> None:
        release.wait(5)
        done.append(name)

    for name in "abcde":
        pool.submit(name, lambda n=name: job(n))
    assert pool.is_pending("a") and pool.outstanding == 5
    assert not pool.drain(0.05)  # bounded: gives up while jobs are blocked
    release.set()
    assert pool.close(5)
    assert sorted(done) == list("abcde") and pool.outstanding == 0


def test_a_failing_job_is_reported_and_the_worker_survives() -> None:
    failures: list[str] = []
    pool = CleanupPool(1, on_failure=lambda key, exc: failures.append(f"{key}:{exc}"))
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("engine said no")

    pool.submit("x", boom)
    pool.submit("y", lambda: ran.append("y"))
    assert pool.close(5)
    assert failures == ["x:engine said no"] and ran == ["y"]
